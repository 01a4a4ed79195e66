"""Accuracy of the fused token-statistics kernels: confident tokens, and max error against float64.

Two tables (the figures docs/kernel.md quotes; committed in
``benchmarks/results/bench_token_stats_accuracy_cpu.md``):

* **confident tokens** — one logit ``c`` at the label and ``V − 1`` zeros (V = 151,936): ``g`` from
  kernel (a) in float32 against its closed form in float64, beside the textbook float32 formula
  ``sqrt(1 − 2 p_y + Σp²)`` (veRL's formulas, as ``bench_token_stats.eager_stats_from_logits``);
* **max absolute error against float64** — kernels (a) and (b) in fp32 and bf16, and the torch
  reference, against veRL's formulas in float64 on the same dtype-rounded inputs, temperature 0.8.

    TRITON_INTERPRET=1 python benchmarks/bench_token_stats_accuracy.py --out benchmarks/results/bench_token_stats_accuracy_cpu.md

On a CPU the Triton kernels run in the interpreter (``TRITON_INTERPRET=1``; without it the torch
reference stands in and the report says so); on a CUDA device, compiled. One thread by default.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_token_stats  # noqa: E402
from harness import machine_line  # noqa: E402
from verl_repro.kernels import token_stats_from_hidden, token_stats_from_logits  # noqa: E402

VOCAB = 151_936
CONFIDENT_LOGITS = (12.0, 20.0, 30.0)
TEMPERATURE = 0.8


def confident_grad_norm(c: float, vocab: int) -> float:
    """Closed form of g for logits (c at the label, 0 elsewhere), in float64:
    p_y = e^c / (e^c + V − 1), the others 1 / (e^c + V − 1); g² = (1 − p_y)² + (V − 1) p_other²."""
    denominator = math.exp(c) + vocab - 1
    return math.sqrt(((vocab - 1) / denominator) ** 2 + (vocab - 1) / denominator**2)


def confident_table(device: torch.device, backend: str) -> str:
    lines = ["### Confident tokens: g where p_y → 1", "",
             f"One logit c at the label and {VOCAB - 1:,} zeros, float32 logits, kernel backend `{backend}`.", "",
             "| c | exact g | ours | relative error | textbook fp32 `sqrt(1 − 2p_y + Σp²)` |", "|---|---:|---:|---:|---:|"]
    for c in CONFIDENT_LOGITS:
        logits = torch.zeros(1, VOCAB, device=device)
        logits[0, 0] = c
        labels = torch.zeros(1, dtype=torch.long, device=device)
        ours = float(token_stats_from_logits(logits, labels, backend=backend).grad_norm[0])
        textbook = float(bench_token_stats.eager_stats_from_logits(logits, labels)[3][0])
        exact = confident_grad_norm(c, VOCAB)
        lines.append(f"| {c:g} | {exact:.6e} | {ours:.6e} | {abs(ours - exact) / exact:.1e} | {textbook:.6e} |")
    return "\n".join(lines)


def error_table(device: torch.device, backend: str) -> str:
    generator = torch.Generator(device=device).manual_seed(0)
    lines = ["### Max absolute error against float64", "",
             f"veRL's formulas in float64 on the same dtype-rounded inputs; temperature {TEMPERATURE}; logits ~ N(0, 4²).", "",
             "| method | input | log p_y | H | Σp² | g |", "|---|---|---:|---:|---:|---:|"]
    logits = torch.randn(128, 8192, device=device, generator=generator) * 4
    labels_a = torch.randint(0, 8192, (128,), device=device, generator=generator)
    hidden = torch.randn(128, 256, device=device, generator=generator)
    weight = torch.randn(4096, 256, device=device, generator=generator) / 16 * 4
    labels_b = torch.randint(0, 4096, (128,), device=device, generator=generator)

    def row(name: str, dtype_label: str, got, logits64, labels):
        want = bench_token_stats.eager_stats_from_logits(logits64, labels, TEMPERATURE)
        errors = [float((g.double() - w).abs().max()) for g, w in zip(got, want)]
        lines.append(f"| {name} | {dtype_label} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")

    for dtype in (torch.float32, torch.bfloat16):
        rounded = logits.to(dtype)
        got = token_stats_from_logits(rounded, labels_a, temperature=TEMPERATURE, backend=backend)
        row(f"(a) N=128, V=8192 [{backend}]", bench_token_stats.dtype_name(dtype), got, rounded.double(), labels_a)
    for dtype in (torch.float32, torch.bfloat16):
        h, w = hidden.to(dtype), weight.to(dtype)
        got = token_stats_from_hidden(h, w, labels_b, temperature=TEMPERATURE, backend=backend)
        row(f"(b) N=128, H=256, V=4096 [{backend}]", bench_token_stats.dtype_name(dtype), got, h.double() @ w.double().t(), labels_b)
    got = token_stats_from_logits(logits, labels_a, temperature=TEMPERATURE, backend="torch")
    row("torch reference, (a)'s case", "fp32", got, logits.double(), labels_a)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = bench_token_stats.resolve_bench_backend("auto", device)
    interpreted = device.type != "cuda" and backend == "triton"
    header = "\n".join([
        "# token statistics accuracy", "", machine_line(device), "",
        f"kernels: `{backend}`" + (" (Triton interpreter)" if interpreted else "")
        + ("" if backend == "triton" else " — the torch reference stands in for the Triton kernels"),
    ])
    parts = [header, confident_table(device, backend), error_table(device, backend)]
    text = "\n\n".join(parts) + "\n"
    print(text, end="")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
