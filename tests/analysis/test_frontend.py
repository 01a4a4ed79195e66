"""The offline tools' front end: rows of every supported schema, prompts, ground truths."""

from __future__ import annotations

import json

import pytest

from verl_repro.analysis import frontend as fe


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_verl_rollout_dump_and_step_filter(tmp_path):
    """veRL 0.9.1's ``trainer.rollout_data_dir`` writes ``<step>.jsonl`` rows with input/output/gts/score/step."""
    dump = tmp_path / "rollouts"
    dump.mkdir()
    for step in (1, 10, 2):
        _write_jsonl(dump / f"{step}.jsonl", [{"input": f"user\nq{step}-{i}\nassistant\n", "output": f"r{step}-{i}", "gts": 7 + i,
                                               "score": 1.0, "step": step, "uid": f"u{step}_0_{i}"} for i in range(2)])
    everything = fe.load_trajectories(dump)
    assert [t.meta["step"] for t in everything] == [1, 1, 2, 2, 10, 10]  # numeric step order, not "10" < "2"
    last = fe.load_trajectories(dump, step="last")
    assert [(t.prompt, t.response, t.ground_truth, t.id) for t in last] == [
        ("user\nq10-0\nassistant\n", "r10-0", "7", "u10_0_0"), ("user\nq10-1\nassistant\n", "r10-1", "8", "u10_0_1")]
    assert [t.response for t in fe.load_trajectories(dump, step="2")] == ["r2-0", "r2-1"]
    with pytest.raises(ValueError, match="no rows of step 3"):
        fe.load_trajectories(dump, step="3")


def test_parquet_with_chat_messages_and_reward_model(tmp_path, tiny_tokenizer):
    import pandas as pd

    path = tmp_path / "data.parquet"
    pd.DataFrame([{"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "response": "5", "reward_model": {"ground_truth": "5"}},
                  {"prompt": [{"role": "user", "content": "?"}], "response": "x", "reward_model": {"ground_truth": "  "}}]).to_parquet(path)
    first, second = fe.load_trajectories(path)
    assert first.ground_truth == "5" and second.ground_truth is None  # blank: unusable, counted later
    assert fe.render_prompt(tiny_tokenizer, first.prompt, "raw") == (
        "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n<think>\n")


@pytest.mark.parametrize(
    "row, message",
    [({"response": "x"}, "no prompt"), ({"prompt": "q"}, "no response"), ([1, 2], "expected a JSON object")],
)
def test_bad_rows_name_the_row(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "response": "r"}, row])
    with pytest.raises(ValueError, match=f"bad.jsonl:2: {message}"):
        fe.load_trajectories(path)


@pytest.mark.parametrize("value, expected", [("  42 ", "42"), (3, "3"), (2.5, "2.5"), (float("nan"), None), ("", None),
                                             (None, None), (True, None), (["1/2", "0.5"], "1/2"), ([], None),
                                             ({"ground_truth": "x"}, None)])
def test_ground_truth_text(value, expected):
    assert fe.ground_truth_text(value) == expected
