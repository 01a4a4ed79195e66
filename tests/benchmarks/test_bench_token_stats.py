"""``benchmarks/bench_token_stats.py`` runs end to end at its --smoke size on a CPU, writes its report, and
checks what it times: a kernel with a wrong statistic or a wrong gradient makes it fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from verl_repro.kernels import TokenStats, token_stats_from_hidden, token_stats_from_logits

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_token_stats.py"
SMOKE = ["--smoke", "--repeats", "3", "--backend", "torch", "--device", "cpu"]


def load_bench():
    import bench_token_stats  # benchmarks/ is on pytest's pythonpath

    return bench_token_stats


def test_bench_kernel_smoke_writes_report(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "report.md"
    assert bench.main([*SMOKE, "--out", str(out)]) == 0
    report = out.read_text()
    for title in ("from logits, forward: N=32, V=500", "from logits, forward+backward", "from hidden, forward: N=32, H=32",
                  "from hidden, forward+backward"):
        assert title in report, title
    assert "ours (a) [torch]" in report and "ours (b) [torch]" in report
    assert "machine: CPU only" in report and "torch threads 1" in report and "median of 3" in report
    assert "all outputs match the float64 reference" in report
    # Every row was measured (no error text in the time column), and ours was checked.
    for line in report.splitlines():
        if line.startswith("| eager") or line.startswith("| ours"):
            assert line.split("|")[2].strip().replace(".", "", 1).isdigit(), line
        if line.startswith("| ours"):
            assert "| ok: max abs error" in line, line
    assert "machine: CPU only" in capsys.readouterr().out


def _wrong_entropy(logits, labels, **kwargs):
    stats = token_stats_from_logits(logits, labels, **kwargs)
    return stats._replace(entropy=stats.entropy * 1.001)


def _wrong_grad_norm(hidden, weight, labels, **kwargs):
    stats = token_stats_from_hidden(hidden, weight, labels, **kwargs)
    return stats._replace(grad_norm=stats.grad_norm + 1e-3)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, a 1 % wrong backward: what a kernel with a slightly wrong backward gives."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


def _wrong_logits_backward(logits, labels, **kwargs):
    return token_stats_from_logits(_ScaleGradient.apply(logits), labels, **kwargs)


def _wrong_weight_backward(hidden, weight, labels, **kwargs):
    return token_stats_from_hidden(hidden, _ScaleGradient.apply(weight), labels, **kwargs)


@pytest.mark.parametrize(
    "target, wrong, expected",
    [
        ("token_stats_from_logits", _wrong_entropy, "from logits, forward: N=32, V=500, fp32 / ours (a) [torch]: H:"),
        ("token_stats_from_hidden", _wrong_grad_norm, "from hidden, forward: N=32, H=32, V=500, fp32 / ours (b) [torch]: g:"),
        ("token_stats_from_logits", _wrong_logits_backward, "ours (a) [torch]: dlogits:"),
        ("token_stats_from_hidden", _wrong_weight_backward, "ours (b) [torch]: dweight:"),
    ],
)
def test_bench_kernel_smoke_fails_on_a_wrong_kernel(tmp_path, capsys, monkeypatch, target, wrong, expected):
    bench = load_bench()
    monkeypatch.setattr(bench, target, wrong)
    out = tmp_path / "report.md"
    assert bench.main([*SMOKE, "--out", str(out)]) == 1
    report = out.read_text()
    assert "CHECK FAILED" in report and expected in report, report[-1500:]
    assert "CHECK FAILED" in capsys.readouterr().out


def test_eager_baseline_is_the_same_maths():
    bench = load_bench()
    logits = torch.randn(8, 50, dtype=torch.float64)
    labels = torch.randint(0, 50, (8,))
    eager = bench.eager_stats_from_logits(logits, labels)
    ours = token_stats_from_logits(logits, labels, backend="torch")
    assert isinstance(ours, TokenStats)
    for got, want in zip(eager, ours):
        torch.testing.assert_close(got, want.to(got.dtype), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize(
    "name, bandwidth",
    [("NVIDIA H200", 4800.0), ("NVIDIA GH200 480GB", 4000.0), ("NVIDIA H100 80GB HBM3", 3350.0), ("NVIDIA H100 PCIe", 2000.0),
     ("NVIDIA A100-SXM4-80GB", 2039.0), ("NVIDIA A100-PCIE-40GB", 1555.0), ("Some Future GPU", None)],
)
def test_hbm_bandwidth_by_device_name(name, bandwidth):
    assert load_bench().hbm_bandwidth_gbs(name) == bandwidth


def test_accuracy_benchmark_closed_form_of_g_for_a_confident_token():
    import bench_token_stats_accuracy as accuracy
    for c, vocab in ((12.0, 151_936), (3.0, 50)):
        logits = torch.zeros(vocab, dtype=torch.float64)
        logits[0] = c
        p = torch.softmax(logits, 0)
        direct = float((p - torch.nn.functional.one_hot(torch.tensor(0), vocab)).norm())
        assert abs(accuracy.confident_grad_norm(c, vocab) - direct) <= 1e-12 * direct


def test_a_raising_baseline_is_annotated_and_a_raising_kernel_fails():
    bench = load_bench()

    def broken():
        raise RuntimeError("no kernel for this device")

    baseline = bench.guarded_check("veRL linear_cross_entropy", False, broken)
    assert baseline.ok and "not checked (raised RuntimeError: no kernel for this device)" == baseline.summary()
    ours = bench.guarded_check("ours (b)", True, broken)
    assert not ours.ok and "raised RuntimeError" in ours.summary()
