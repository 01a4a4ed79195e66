"""benchmarks/bench_kernel.py runs end to end at its --smoke size on a CPU and writes its report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernel.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernel", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernel"] = bench  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(bench)
    return bench


def test_bench_kernel_smoke_writes_report(tmp_path):
    bench = load_bench()
    out = tmp_path / "report.md"
    assert bench.main(["--smoke", "--backend", "torch", "--out", str(out)]) == 0
    report = out.read_text()
    assert "from logits: N=32, V=500" in report
    assert "ours (a) [torch]" in report and "ours (b) [torch]" in report
    assert "forward+backward" in report
    # Every row was measured (no error text in the time column).
    for line in report.splitlines():
        if line.startswith("| eager") or line.startswith("| ours"):
            assert line.split("|")[2].strip().replace(".", "", 1).isdigit(), line


def test_eager_baseline_is_the_same_maths():
    import torch

    bench = load_bench()
    from verl_repro.kernels import token_stats_from_logits

    logits = torch.randn(8, 50, dtype=torch.float64)
    labels = torch.randint(0, 50, (8,))
    eager = bench.eager_stats_from_logits(logits, labels)
    ours = token_stats_from_logits(logits, labels, backend="torch")
    for got, want in zip(eager, ours):
        torch.testing.assert_close(got, want.to(got.dtype), atol=1e-7, rtol=1e-7)
