"""``verl-repro analyze`` on the tiny checkpoint: every number checked against a direct computation.

The oracle below recomputes a hand-made trajectory the plainest way — decode each token to find
step boundaries, one forward per cut for J̃, Python sorting for the top-k cuts, ``math.tanh`` for
the magnitude and scipy's Kendall tau-b for the stability — and the summary from those values.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.analysis import trajectories as tr
from verl_repro.analysis.backtracking import BacktrackingCounter, parse_phrases
from verl_repro.analysis.frontend import to_trajectory
from verl_repro.analysis.summary import summarize
from verl_repro.scoring import score_j
from verl_repro.cli import main

NUM_SEGMENTS = 2
PATTERNS = ("\n\n", ".\n", "?\n")
# Hand-made trajectories: correct, wrong answer, truncated (no </think>), no ground truth.
TRAJECTORIES = [
    {"prompt": "What is 2 plus 3?", "ground_truth": "5",
     "response": "First, we add 2 and 3 to get 5.\nWait, let me re-check the sum.\n\nSo the total is 5.\n</think>\n\nThe answer is \\boxed{5}."},
    {"prompt": "What is 4 plus 3?", "ground_truth": "7",
     "response": "First, we add 4 and 3 to get 8.\nAlternatively, subtract 3 from 8.\nIs 4 larger than 3?\nHmm, so the total is 8.\n</think>\n\n\\boxed{8}"},
    {"prompt": "What is 1 plus 1?", "ground_truth": "2", "response": "Let me think about 1 and 1.\nWe know that 1 + 1 = 2.\n"},
    {"prompt": "What is 6 plus 1?", "response": "Then we multiply by 1.\n</think>\n\\boxed{7}"},
]
BACKTRACKING = [{"wait": 1, "let me re-check": 1}, {"alternatively": 1, "hmm": 1}, {}, {}]
CORRECT = [True, False, False, None]  # the third has no </think>: the reward manager's rule makes it wrong


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _analyze(*args: str) -> int:
    return main(["analyze", "--no-progress", "--num-segments", str(NUM_SEGMENTS), *args])


@pytest.fixture(scope="module")
def hand_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = _write_jsonl(root / "hand.jsonl", TRAJECTORIES)
    out = root / "out"
    assert _analyze("--model", str(tiny_model_dir), "--trajectories", str(data), "--prompt-format", "chat",
                    "--scoring-mode", "naive", "--output-dir", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    return root, data, out, summary, records


# ----------------------------------------------------------------------------- the oracle


@pytest.fixture(scope="module")
def direct(tiny_model_dir):
    """Per-trajectory values computed directly, one plain forward per quantity."""
    from scipy.stats import kendalltau
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    results = []
    for row in TRAJECTORIES:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        end = response_ids.index(think_end) if think_end in response_ids else len(response_ids) - 1  # no_think_end=use_end
        # Cuts strictly before e (c = t + 1 < e), then e + 1.
        boundaries = [t + 1 for t in range(end - 1) if tokenizer.decode([response_ids[t]]).endswith(PATTERNS)]
        cuts = boundaries + [end + 1]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + response_ids])).logits[0, len(prompt_ids) - 1 : -1].double()
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        top = sorted(sorted(boundaries, key=lambda c: (-float(entropy[c]), c))[:NUM_SEGMENTS]) + [end + 1]
        result = {"tokens": len(response_ids), "has_think_end": think_end in response_ids, "boundaries": cuts, "topk": top}
        if "ground_truth" in row:
            answer = tokenizer("\\boxed{" + row["ground_truth"] + "}", add_special_tokens=False)["input_ids"]

            def j_at(cut):
                ids = prompt_ids + response_ids[:cut] + answer
                with torch.no_grad():
                    log_probs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
                start = len(ids) - len(answer)
                return float(np.mean([float(log_probs[start + i - 1, a]) for i, a in enumerate(answer)]))

            curve = [j_at(0)] + [j_at(c) for c in cuts]
            j_top = [curve[1 + cuts.index(c)] for c in top]
            tau = [kendalltau(range(j + 2), [curve[0]] + j_top[: j + 1]).statistic for j in range(len(top))]
            result.update(
                curve=curve,
                magnitude=[1 - math.tanh(v / curve[0]) for v in j_top],
                stability=[(0.0 if math.isnan(t) else t) / 2 + 0.5 for t in tau],
            )
        results.append(result)
    return results


def _interpolate(curve, x):
    """Linear interpolation of ``curve`` (placed at j/m) at ``x``, by hand."""
    m = len(curve) - 1
    left = min(int(math.floor(x * m)), m - 1)
    weight = x * m - left
    return (1 - weight) * curve[left] + weight * curve[left + 1]


# ----------------------------------------------------------------------------- tests


def test_records_equal_direct_computation(hand_run, direct):
    _, _, _, _, records = hand_run
    assert len(records) == len(TRAJECTORIES)
    for record, expected, backtracking, correct in zip(records, direct, BACKTRACKING, CORRECT):
        assert record["response_tokens"] == expected["tokens"]
        assert record["has_think_end"] == expected["has_think_end"]
        assert record["boundaries"] == expected["boundaries"]
        assert record["topk_cuts"] == expected["topk"]
        assert record["backtracking_by_phrase"] == backtracking
        assert record["backtracking"] == sum(backtracking.values())
        assert record["correct"] is correct
        if "curve" not in expected:
            assert record["fallback"] == "no_ground_truth" and record["j_curve"] is None and record["final_magnitude"] is None
            continue
        assert record["fallback"] is None
        np.testing.assert_allclose(record["j_curve"], expected["curve"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(record["magnitude"], expected["magnitude"], atol=2e-5)
        np.testing.assert_allclose(record["stability"], expected["stability"], atol=1e-9)
        w = 0.5
        np.testing.assert_allclose(record["score"], [(1 - w) * m + w * s for m, s in zip(expected["magnitude"], expected["stability"])], atol=2e-5)
    # The hand-made file must exercise what it claims to: several boundaries, and top-k < all.
    assert len(direct[0]["boundaries"]) > NUM_SEGMENTS + 1 or len(direct[1]["boundaries"]) > NUM_SEGMENTS + 1


def test_summary_equals_direct_computation(hand_run, direct):
    _, _, _, summary, _ = hand_run
    groups = {"all": [0, 1, 2, 3], "correct": [0], "incorrect": [1, 2]}
    assert summary["num_trajectories"] == 4 and summary["num_graded"] == 3
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["fallbacks"]["no_ground_truth"] == 1 and sum(summary["fallbacks"].values()) == 1
    assert summary["backtracking_by_phrase"] == {"wait": 1, "let me re-check": 1, "alternatively": 1, "hmm": 1}
    grid = [i / 10 for i in range(11)]
    assert summary["grid"] == pytest.approx(grid)
    for name, members in groups.items():
        group = summary["groups"][name]
        scored = [i for i in members if "curve" in direct[i]]
        tokens = [direct[i]["tokens"] for i in members]
        backtracking = [sum(BACKTRACKING[i].values()) for i in members]
        assert group["count"] == len(members)
        assert group["response_tokens_mean"] == pytest.approx(np.mean(tokens))
        assert group["backtracking_mean"] == pytest.approx(np.mean(backtracking))
        assert group["backtracking_per_1k_tokens"] == pytest.approx(1000 * sum(backtracking) / sum(tokens))
        assert group["think_end_rate"] == pytest.approx(np.mean([direct[i]["has_think_end"] for i in members]))
        assert group["j_base_mean"] == pytest.approx(np.mean([direct[i]["curve"][0] for i in scored]), abs=2e-5)
        assert group["j_end_mean"] == pytest.approx(np.mean([direct[i]["curve"][-1] for i in scored]), abs=2e-5)
        assert group["final_magnitude_mean"] == pytest.approx(np.mean([direct[i]["magnitude"][-1] for i in scored]), abs=2e-5)
        assert group["final_stability_mean"] == pytest.approx(np.mean([direct[i]["stability"][-1] for i in scored]), abs=1e-9)
        curves = np.array([[_interpolate(direct[i]["curve"], x) for x in grid] for i in scored])
        assert group["j_curve"]["count"] == len(scored)
        np.testing.assert_allclose(group["j_curve"]["mean"], curves.mean(0), atol=2e-5)
        np.testing.assert_allclose(group["j_curve"]["std"], curves.std(0), atol=2e-5)


def test_plots_are_written_and_open(hand_run):
    from PIL import Image

    _, _, out, _, _ = hand_run
    for name in ("j_curves.png", "scores.png", "backtracking.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 300
            # Something was drawn: a blank canvas has one colour.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 50


def test_compare_two_checkpoints(hand_run, tiny_model_dir, tmp_path):
    from PIL import Image

    from verl_repro.models.tiny import build_tiny_checkpoint

    _, data, first_out, first_summary, first_records = hand_run
    other = build_tiny_checkpoint(tmp_path / "tiny_seed1", seed=1)
    out = tmp_path / "compare"
    assert _analyze("--compare", str(tiny_model_dir), str(other), "--labels", "GRPO", "RePro", "--trajectories", str(data),
                    "--prompt-format", "chat", "--output-dir", str(out)) == 0
    table = json.loads((out / "compare.json").read_text())
    assert table["labels"] == ["GRPO", "RePro"]
    a, b = (json.loads((out / label / "summary.json").read_text()) for label in ("GRPO", "RePro"))
    rows = {row["metric"]: row for row in table["rows"]}
    assert rows["accuracy"]["values"] == [a["accuracy"], b["accuracy"]]
    assert rows["J_b"]["values"] == [a["groups"]["all"]["j_base_mean"], b["groups"]["all"]["j_base_mean"]]
    assert rows["J_b"]["delta"] == pytest.approx(b["groups"]["all"]["j_base_mean"] - a["groups"]["all"]["j_base_mean"])
    # Same trajectories: text statistics agree; the checkpoints' J̃ differ.
    assert a["groups"]["all"]["backtracking_mean"] == b["groups"]["all"]["backtracking_mean"]
    assert abs(rows["J_b"]["delta"]) > 1e-4
    # The first run is the hand run's checkpoint on the same data (auto scoring vs naive: same J̃).
    assert a["groups"]["all"]["j_base_mean"] == pytest.approx(first_summary["groups"]["all"]["j_base_mean"], abs=1e-5)
    markdown = (out / "compare.md").read_text()
    assert "| metric | GRPO | RePro | Δ |" in markdown and "| accuracy |" in markdown
    with Image.open(out / "compare.png") as image:
        assert image.format == "PNG" and image.width > 1000

    # Comparing two earlier output folders reads them instead of recomputing.
    again = tmp_path / "again"
    assert _analyze("--compare", str(out / "GRPO"), str(out / "RePro"), "--output-dir", str(again)) == 0
    assert json.loads((again / "compare.json").read_text())["rows"] == table["rows"]


def test_sampling_from_prompts(tiny_model_dir, tmp_path):
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"question": "What is 2 plus 3?", "answer": "5", "id": "p0"},
                                                         {"prompt": [{"role": "user", "content": "What is 1 plus 1?"}],
                                                          "reward_model": {"ground_truth": "2"}, "id": "p1"}])
    out = tmp_path / "sampled"
    assert _analyze("--model", str(tiny_model_dir), "--prompts", str(prompts), "--samples-per-prompt", "2",
                    "--max-new-tokens", "12", "--output-dir", str(out)) == 0
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["p0#0", "p0#1", "p1#0", "p1#1"]
    assert [r["ground_truth"] for r in records] == ["5", "5", "2", "2"]
    assert all(1 <= r["response_tokens"] <= 12 for r in records)
    # A random model rarely closes its thinking: those responses use their end as e (use_end).
    assert all(r["j_curve"] is not None and len(r["j_curve"]) == len(r["boundaries"]) + 1 for r in records)


def test_scoring_modes_agree(tiny_model_dir, tiny_tokenizer):
    """The one scoring switch: prefix-shared gives naive's J̃."""
    from transformers import AutoModelForCausalLM

    from verl_repro import algorithms as alg

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    batch = tr._tokenize_trajectories(tiny_tokenizer, [to_trajectory(str(i), row) for i, row in enumerate(TRAJECTORIES[:2])], "chat", None, "")
    response_ids, response_mask = alg.pad_token_lists(batch.response_ids, tiny_tokenizer.pad_token_id)
    cuts, cut_mask, _ = alg.select_cuts(response_ids, response_mask, torch.zeros(response_ids.shape), alg.step_boundaries(tiny_tokenizer),
                                        alg.think_end_token_id(tiny_tokenizer), 100)
    answers = [tiny_tokenizer("\\boxed{5}", add_special_tokens=False)["input_ids"]] * 2
    naive = score_j(model, batch.prompt_ids, response_ids, cuts, cut_mask, answers, mode="naive")
    shared = score_j(model, batch.prompt_ids, response_ids, cuts, cut_mask, answers, mode="prefix_shared")
    torch.testing.assert_close(shared[0], naive[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1], naive[1], atol=1e-5, rtol=0, equal_nan=True)
    assert naive[2]["mode"] == "naive" and shared[2]["mode"] == "prefix_shared"
    assert shared[2]["naive_tokens"] == naive[2]["scored_tokens"] > shared[2]["scored_tokens"]


# ----------------------------------------------------------------------------- backtracking and summary maths


def test_backtracking_hand_cases():
    counter = BacktrackingCounter(("wait", "actually", "but actually", "let me re-check"))
    text = "Wait, waiting is fine. But actually WAIT... Let me\n re-check. Actually no.</think> wait"
    assert counter.count(text) == {"wait": 2, "actually": 1, "but actually": 1, "let me re-check": 1}
    assert BacktrackingCounter(("wait",), scope="all").total(text) == 3
    assert counter.total("no think end: wait") == 1  # no </think>: the whole text is reasoning
    with pytest.raises(ValueError, match="--backtracking-scope"):
        BacktrackingCounter(scope="answer")
    with pytest.raises(ValueError, match="--backtracking-phrases"):
        BacktrackingCounter(("wait", " "))


def test_parse_phrases(tmp_path):
    (tmp_path / "phrases.txt").write_text("# mine\nwait\n\nhold on\n")
    assert parse_phrases(f"@{tmp_path / 'phrases.txt'}") == ("wait", "hold on")
    assert parse_phrases("wait, hmm ,") == ("wait", "hmm")
    assert "alternatively" in parse_phrases(None)


WORDS = ["wait", "Hmm", "alternatively", "waiting", "ok", "so", "hmmm", "await"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from([" ", ", ", "\n", ". ", "! "])), max_size=30))
def test_backtracking_matches_word_scan(pieces):
    """Single-word phrases: the count is the number of whole words equal to a phrase (any case)."""
    text = "".join(word + sep for word, sep in pieces)
    expected = sum(word.lower() in ("wait", "hmm", "alternatively") for word, _ in pieces)
    assert BacktrackingCounter(("wait", "hmm", "alternatively"), scope="all").total(text) == expected


def test_sample_responses_cut_at_the_first_end_token():
    """Any of several end ids ends a response (kept, as vLLM returns it); what follows becomes padding."""
    from verl_repro.analysis.hf_scoring import sample_responses

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            assert kwargs["eos_token_id"] == [2, 7] and kwargs["top_k"] == 0
            new = torch.tensor([[5, 7, 6, 2], [5, 5, 5, 5], [2, 9, 9, 9]])[: input_ids.shape[0]]
            return torch.cat([input_ids, new], dim=1)

    ids, mask = sample_responses(Stub(), [[1, 1], [1], [1, 1, 1]], max_new_tokens=4, temperature=1.0,
                                 eos_token_id=[2, 7], pad_id=0, micro_batch_size=3)
    assert ids.tolist() == [[5, 7, 0, 0], [5, 5, 5, 5], [2, 0, 0, 0]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]


def test_boundary_patterns_flag_takes_escapes():
    import argparse

    parser = argparse.ArgumentParser()
    tr.add_arguments(parser)
    config, _ = tr._settings(parser.parse_args(["--boundary-patterns", "\\n", "; "]))
    assert config.boundary_patterns == ["\n", "; "]
    assert tr._settings(parser.parse_args([]))[0].boundary_patterns == ["\n\n", ".\n", "?\n"]


def test_documented_flags_exist():
    """Every ``--flag`` on the Analyze docs page is an option of the command its section is about:
    ``verl-repro analyze``, or the ``verl-repro <command>`` its heading names."""
    import re
    from pathlib import Path

    from verl_repro.cli import build_parser

    page = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    unknown, checked = [], 0
    for section in re.split(r"\n(?=## )", page):
        named = re.match(r"## [^\n]*`verl-repro ([a-z-]+)", section)
        known = set(commands[named.group(1) if named else "analyze"]._option_string_actions)
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", section))
        checked += len(flags)
        unknown += sorted(flags - known)
    assert checked and not unknown, unknown


def test_fallbacks_are_counted_not_dropped(tiny_model_dir, tiny_tokenizer):
    """``no_think_end=skip`` (training's default): the truncated response keeps its record, without a curve."""
    from transformers import AutoModelForCausalLM

    from verl_repro.analysis.backtracking import BacktrackingCounter
    from verl_repro.config import ReproConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = TRAJECTORIES[:3] + [{"prompt": "q", "response": "", "ground_truth": "1"}]
    batch = tr._tokenize_trajectories(tiny_tokenizer, [to_trajectory(str(i), row) for i, row in enumerate(rows)], "chat", None, "")
    config = ReproConfig(num_segments=NUM_SEGMENTS, no_think_end="skip").validate()
    records, _ = tr.analyze_batch(model, tiny_tokenizer, batch, [True, False, False, False], config=config,
                                  backtracking=BacktrackingCounter())
    assert [r["fallback"] for r in records] == [None, None, "no_think_end", "empty_response"]
    assert records[2]["j_curve"] is None and records[2]["boundaries"] == [] and records[2]["backtracking"] == 0
    summary = summarize(records)
    assert summary["num_trajectories"] == 4
    assert summary["fallbacks"] == {"empty_response": 1, "no_ground_truth": 0, "no_think_end": 1, "nonfinite_j": 0, "j_base_near_zero": 0}
    assert summary["groups"]["incorrect"]["j_curve"]["count"] == 1  # only the scored one enters the curve
