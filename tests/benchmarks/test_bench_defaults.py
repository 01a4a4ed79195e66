"""Every benchmark's defaults are the settings of its committed results file (one CPU thread, best or
median of >= 3 runs), so running a benchmark without flags reproduces what the docs quote."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RESULTS = BENCHMARKS / "results"


def load(name: str):
    return importlib.import_module(name)  # benchmarks/ is on pytest's pythonpath


def test_bench_scoring_defaults_are_its_results_settings():
    defaults = load("bench_scoring").build_parser().parse_args([])
    assert defaults.threads == 1 and defaults.repeats >= 3
    table = (RESULTS / "bench_scoring_cpu.txt").read_text()
    assert f"threads={defaults.threads}" in table and f"best of {defaults.repeats}" in table
    assert f"device={defaults.device}" in table and f"dtype={defaults.dtype}" in table and f"model={defaults.model}" in table
    rows = {(int(T), int(m)) for T, m in re.findall(r"^\s+(\d+)\s+(\d+)\s+\d+", table, flags=re.M)}
    assert rows == {(T, m) for T in defaults.T for m in defaults.m}
    assert f"prompt {defaults.prompt_tokens} tokens, answer {defaults.answer_tokens} tokens" in table
    assert f"{defaults.responses} responses per case" in table
    long_case = (RESULTS / "bench_scoring_cpu_32k.txt").read_text()
    assert f"threads={defaults.threads}" in long_case and f"best of {defaults.repeats}" in long_case


def test_bench_advantages_defaults_are_its_results_settings():
    defaults = load("bench_advantages").build_parser().parse_args([])
    assert defaults.threads == 1 and defaults.repeats >= 3
    text = (RESULTS / "bench_advantages.txt").read_text()
    assert f"B={defaults.batch} T={defaults.length} k={defaults.k}" in text
    assert f", {defaults.threads} threads," in text and f"median of {defaults.repeats}" in text
    assert f"on {defaults.oracle_rows} rows" in text


def test_bench_kernel_defaults_are_one_thread_and_several_runs():
    # no committed results yet (no GPU has run it); its defaults follow the same rule
    defaults = load("bench_token_stats").build_parser().parse_args([])
    assert defaults.threads == 1 and defaults.repeats >= 3


def test_bench_boundaries_defaults_are_its_results_settings():
    defaults = load("bench_boundaries").build_parser().parse_args([])
    assert defaults.threads == 1
    text = (RESULTS / "bench_boundaries_smollm2.md").read_text()
    assert (f"{defaults.problems} bundled problems × {defaults.samples_per_problem} samples, temperature {defaults.temperature}, "
            f"top-p 1.0, ≤ {defaults.max_new_tokens} new tokens, seed {defaults.seed}") in text
    assert f", {defaults.threads} thread(s);" in text and f"a {defaults.speed_batch} × {defaults.speed_length} batch (median of 5)" in text
    assert "self-check: step ends equal the prefix-decoding oracle on every response" in text


def test_bench_answer_bos_defaults_are_its_results_settings():
    defaults = load("bench_answer_bos").build_parser().parse_args([])
    text = (RESULTS / "bench_answer_bos_smollm2.md").read_text()
    assert (f"{defaults.problems} bundled problems × {defaults.samples_per_problem} samples, temperature {defaults.temperature}, "
            f"top-p 1.0, ≤ {defaults.max_new_tokens} new tokens, seed {defaults.seed}") in text
    assert f", {defaults.threads} thread(s);" in text
    assert "self-check: J of the first response equals a direct forward in both tokenizations" in text
