"""``benchmarks/bench_gradients.py``: it runs, checks fast against exact, and its defaults are the
settings of its committed results file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_checks_itself(tmp_path):
    output = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gradients.py"), "--tiny", "--lengths", "48",
         "--exact-tokens", "6", "--repeats", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = output.read_text()
    assert "| 48 |" in table and "fast vs exact" in table and "machine:" in table


def test_defaults_are_the_committed_results_settings():
    import bench_gradients

    defaults = bench_gradients.build_parser().parse_args([])
    assert defaults.threads == 1 and defaults.repeats >= 3 and not defaults.tiny
    text = (ROOT / "benchmarks" / "results" / "bench_gradients_cpu.md").read_text()
    assert f"{defaults.threads} thread(s), best of {defaults.repeats}" in text and "SmolLM2-135M-Instruct" in text
    for length in defaults.lengths.split(","):
        assert f"| {length} |" in text
