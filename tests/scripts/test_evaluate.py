"""Evaluation: unbiased pass@k against brute force, metrics on scripted responses, the CLI on the tiny model."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.evaluation import datasets as rd
from verl_repro.evaluation import evaluate as ev
from verl_repro.rewards import MathRewardConfig

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "evaluate.py"


def brute_force_pass_at_k(correct: list[bool], k: int) -> float:
    """Share of all k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_hand_computed():
    # n = 4 samples, c = 0, 1, 2, 4 correct
    np.testing.assert_allclose(ev.pass_at_k(4, [0, 1, 2, 4], 1), [0.0, 0.25, 0.5, 1.0])
    # k = 2: 1 - C(4-c, 2) / C(4, 2) = 1 - {6, 3, 1, 0} / 6
    np.testing.assert_allclose(ev.pass_at_k(4, [0, 1, 2, 4], 2), [0.0, 0.5, 5 / 6, 1.0])
    np.testing.assert_allclose(ev.pass_at_k(4, [0, 1, 2, 4], 4), [0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="k <= n"):
        ev.pass_at_k(4, 1, 5)
    assert ev.default_ks(16) == [1, 2, 4, 8, 16] and ev.default_ks(6) == [1, 2, 4, 6]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=10), st.data())
def test_pass_at_k_equals_brute_force(correct, data):
    k = data.draw(st.integers(1, len(correct)))
    expected = brute_force_pass_at_k(correct, k)
    assert ev.pass_at_k(len(correct), sum(correct), k)[0] == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_vectorized_over_problems_with_different_n():
    n, c = np.array([3, 10, 7]), np.array([1, 4, 0])
    got = ev.pass_at_k(n, c, 3)
    expected = [brute_force_pass_at_k([True] * ci + [False] * (ni - ci), 3) for ni, ci in zip(n, c)]
    np.testing.assert_allclose(got, expected)


def _benchmark(path: Path, problems: list[tuple[str, str]], name: str) -> Path:
    rows = rd.verl_rows([rd.Problem(p, a, str(i)) for i, (p, a) in enumerate(problems)], name, "test")
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_metrics_from_scripted_responses(tmp_path):
    bench_a = _benchmark(tmp_path / "a.parquet", [("What is 1+1?", "2"), ("What is 2+2?", "4")], "a")
    bench_b = _benchmark(tmp_path / "b.parquet", [("What is 3+3?", "6")], "b")
    ok = lambda v: ev.Completion(f"<think>\nadd\n</think>\n\n\\boxed{{{v}}}<|im_end|>", 10)  # noqa: E731
    scripted = {
        "What is 1+1?": [ok(2), ok(3), ok(2), ev.Completion("<think>\nstill thinking", 40)],  # 2 of 4
        "What is 2+2?": [ok(5)] * 4,  # 0 of 4
        "What is 3+3?": [ok(6), ok(6), ok(6), ev.Completion("<think>\n</think> six", 6)],  # 3 of 4, one without a box
    }

    def generate(prompts):
        return [scripted[messages[0]["content"].split("\n")[0]] for messages in prompts]

    results, samples = ev.evaluate({"a": bench_a, "b": bench_b}, generate, n=4,
                                   reward_config=MathRewardConfig(num_processes=1), strip_texts=("<|im_end|>",))
    a, b = results["a"], results["b"]
    assert a.per_problem_correct == [2, 0] and b.per_problem_correct == [3]
    assert a.avg_at_n == pytest.approx(100 * 2 / 8) and b.avg_at_n == pytest.approx(75.0)
    assert a.pass_at_k[1] == pytest.approx(100 * (0.5 + 0) / 2)
    assert a.pass_at_k[2] == pytest.approx(100 * (1 - 1 / 6) / 2)  # 1 - C(2,2)/C(4,2) for the first problem
    assert a.pass_at_k[4] == pytest.approx(50.0) and b.pass_at_k[4] == pytest.approx(100.0)
    assert a.mean_response_tokens == pytest.approx((10 * 7 + 40) / 8)
    assert a.think_end_share == pytest.approx(7 / 8) and b.answer_found_share == pytest.approx(3 / 4)
    assert len(samples) == 12 and {s["benchmark"] for s in samples} == {"a", "b"}

    paths = ev.write_results(tmp_path / "out", results, {"model": "scripted"}, samples)
    payload = json.loads(paths["json"].read_text())
    assert payload["benchmarks"]["b"]["avg_at_n"] == pytest.approx(75.0)
    table = paths["markdown"].read_text()
    assert "| a | 2 | 4 | 25.0 | 25.0 | 41.7 | 50.0 | 14 | 0.88 | 0.88 |" in table
    assert len(paths["samples"].read_text().splitlines()) == 12


def test_verl_checkpoint_is_refused_with_the_merge_command(tmp_path):
    (tmp_path / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="verl.model_merger merge --backend fsdp"):
        ev.check_model_path(str(tmp_path))
    with pytest.raises(ValueError, match="no such folder"):
        ev.check_model_path(str(tmp_path / "missing"))


def test_a_k_past_n_and_a_non_positive_problem_limit_are_refused(tmp_path):
    correct = np.array([[True, False], [False, False]])
    zeros = np.zeros((2, 2))
    # ks 4 with n = 2 used to drop the pass@4 column without a word
    with pytest.raises(ValueError, match=r"pass@k needs 1 <= k <= n = 2 samples per problem, got ks=\[1, 4\]"):
        ev.summarize("a", correct, zeros, zeros, zeros, zeros, ks=[1, 4])
    assert set(ev.summarize("a", correct, zeros, zeros, zeros, zeros).pass_at_k) == {1, 2}
    path = _benchmark(tmp_path / "b.parquet", [("Q1", "1"), ("Q2", "2"), ("Q3", "3")], "b")
    assert len(ev.load_benchmark(path, 2)[0]) == 2
    for bad in (0, -1):  # -1 used to evaluate 2 of 3 problems and report them as the benchmark
        with pytest.raises(ValueError, match="max_problems must be >= 1"):
            ev.load_benchmark(path, bad)


def test_cli_on_the_tiny_model_with_hf_generate(tiny_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _benchmark(data_dir / "aime_2024.parquet", [("What is 7 plus 5?", "12"), ("What is 1 plus 1?", "2")], "aime_2024")
    _benchmark(data_dir / "math_500.parquet", [("What is 2 plus 3?", "5")], "math_500")
    out = tmp_path / "eval"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--backend", "hf",
         "--n", "4", "--max-new-tokens", "12", "--temperature", "1.0", "--out", str(out), "--save-samples"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((out / "results.json").read_text())
    assert payload["settings"]["backend"] == "hf"
    for name, problems in (("aime_2024", 2), ("math_500", 1)):
        bench = payload["benchmarks"][name]
        assert bench["num_problems"] == problems and bench["samples_per_problem"] == 4
        assert set(bench["pass_at_k"]) == {"1", "2", "4"}
        assert 0 <= bench["avg_at_n"] <= bench["pass_at_k"]["4"] <= 100
        assert 1 <= bench["mean_response_tokens"] <= 12
        assert 0 <= bench["think_end_share"] <= 1
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all(1 <= s["num_tokens"] <= 12 for s in samples)
    assert "| aime_2024 | 2 | 4 |" in result.stdout


def test_ground_truths_are_read_by_the_one_rule(tmp_path):
    """None is no answer (it used to become the text "None"), a list matches any entry, NaN is unusable."""
    rows = rd.verl_rows([rd.Problem("What is 6 times 7?", ("42", "forty-two"), "0"), rd.Problem("Q2", ("1",), "1"),
                         rd.Problem("Q3", ("2",), "2")], "b", "test")
    rows[1]["reward_model"]["ground_truth"] = None
    rows[2]["reward_model"]["ground_truth"] = ["nan"]
    path = tmp_path / "b.parquet"
    pd.DataFrame(rows).to_parquet(path)
    prompts, truths = ev.load_benchmark(path)
    assert truths[1] is None and list(truths[0]) == ["42", "forty-two"]
    boxed = lambda v: ev.Completion(f"<think>\n</think>\\boxed{{{v}}}", 3)  # noqa: E731
    scripted = {"What is 6 times 7?": [boxed("42")], "Q2": [boxed("None")], "Q3": [boxed("2")]}
    results, samples = ev.evaluate({"b": path}, lambda ps: [scripted[p[0]["content"].split("\n")[0]] for p in ps], n=1,
                                   reward_config=MathRewardConfig(num_processes=1))
    assert results["b"].per_problem_correct == [1, 0, 0]
    assert results["b"].no_ground_truth_problems == 1 and [s["no_ground_truth"] for s in samples] == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("columns", [["prompt", "reward_model"], ["question"]])
def test_empty_or_foreign_benchmark_is_one_line_before_any_model_loads(tmp_path, columns):
    path = tmp_path / "aime_2024.parquet"
    pd.DataFrame({column: pd.Series([], dtype=object) for column in columns}).to_parquet(path)
    with pytest.raises(ev.BenchmarkError, match="aime_2024.parquet: "):
        ev.load_benchmark(path)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tmp_path / "no-such-model"), "--data", f"aime_2024={path}",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=REPO, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"evaluate.py: error: {path}: ")
