"""Benchmark of the fused token-statistics kernels against the ways veRL and Liger get the same numbers.

Prints, for each shape, time and peak extra memory of:

* from logits [N, V] (kernel (a)): eager torch with veRL's formulas in bf16 (as veRL runs them) and
  in float32, ``torch.compile`` of the bf16 formulas, and ours; plus (a)'s fraction of the
  memory-bandwidth roofline (bytes it must read / time, over a device copy's bandwidth measured in
  the same run);
* from hidden states [N, H] and the lm_head weight [V, H] (kernel (b)): eager matmul + formulas,
  ``torch.compile`` of it, veRL's ``linear_cross_entropy`` (log p_y and H only — less work, no Σp² / g),
  Liger's fused linear cross-entropy (NLL only), and ours; forward-only and forward+backward
  (through log p_y and H) separately.

Ratios are against eager bf16, all measured in the same run. Peak extra memory is the CUDA
allocator's peak during the call minus the memory held before it (inputs excluded).

    python benchmarks/bench_kernel.py                    # the issue's grid, on a CUDA device
    python benchmarks/bench_kernel.py --smoke            # tiny shapes; runs on a CPU too
    python benchmarks/bench_kernel.py --out benchmarks/results/<device>.md

On a CPU the smoke run times the torch reference (``--backend triton`` with TRITON_INTERPRET=1: the
Triton interpreter): that proves the script runs, not how fast anything is.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from verl_repro.kernels import token_stats_from_hidden, token_stats_from_logits

TEMPERATURE = 1.0


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def eager_stats_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE):
    """veRL's unfused formulas (verl/utils/torch_functional.py), in the logits' dtype:
    log_softmax + gather, H = logsumexp(z) - Σ softmax(z)·z, Σp² = exp(lse(2z) - 2 lse(z)),
    and g = sqrt(1 - 2 p_y + Σp²) from those."""
    z = logits if temperature == 1.0 else logits / temperature
    logprob = torch.log_softmax(z, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    lse = torch.logsumexp(z, dim=-1)
    entropy = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    sum_p_squared = torch.exp(torch.logsumexp(2 * z, dim=-1) - 2 * lse)
    grad_norm = torch.sqrt(torch.clamp(1 - 2 * logprob.exp() + sum_p_squared, min=0))
    return logprob, entropy, sum_p_squared, grad_norm


def eager_stats_from_hidden(hidden, weight, labels, temperature: float = TEMPERATURE):
    return eager_stats_from_logits(hidden @ weight.t(), labels, temperature)


def verl_linear_cross_entropy():
    """veRL's fused kernel (CUDA only), or the reason it is unavailable."""
    try:
        from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy
    except Exception as error:  # noqa: BLE001 - any import failure means "not measured"
        return None, f"{type(error).__name__}: {error}"[:80]
    return (lambda h, w, y: linear_cross_entropy(h, w, y, TEMPERATURE, "none")), None


def liger_fused_linear_ce():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except Exception as error:  # noqa: BLE001
        return None, f"{type(error).__name__}: {error}"[:80]
    return (lambda h, w, y: liger_fused_linear_cross_entropy(h, w, y, reduction="none")), None


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    ms: float | None
    peak_extra_mib: float | None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> Measurement:
    """Median wall time over ``repeats`` calls after ``warmup``, and the allocator's peak extra memory."""
    try:
        for _ in range(warmup):
            fn()
        _sync(device)
        gc.collect()
        peak = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
            fn()
            _sync(device)
            peak = (torch.cuda.max_memory_allocated(device) - held) / 2**20
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        return Measurement(times[len(times) // 2], peak)
    except torch.OutOfMemoryError:
        return Measurement(None, None, "OOM")
    except Exception as error:  # noqa: BLE001 - a failing baseline is reported, not fatal
        return Measurement(None, None, f"{type(error).__name__}: {error}"[:80])
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def copy_bandwidth_gbs(device: torch.device, num_bytes: int) -> float:
    """Achievable bandwidth (read + write) of a device-to-device copy of ``num_bytes``."""
    source = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    result = measure(lambda: target.copy_(source), device, repeats=10)
    del source, target
    return 2 * num_bytes / (result.ms * 1e-3) / 1e9


def forward_backward(fn, hidden, weight, labels):
    """Time forward + backward of log p_y and H (the training forward's needs)."""
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()

    def run():
        hidden.grad = None
        weight.grad = None
        outputs = fn(hidden, weight, labels)
        logprob, entropy = outputs[0], outputs[1]
        (logprob.float().sum() + 0.01 * entropy.float().sum()).backward()

    return run


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def fmt_ms(m: Measurement) -> str:
    return f"{m.ms:9.3f}" if m.ms is not None else f"{m.note or 'n/a':>9}"


def fmt_mem(m: Measurement) -> str:
    return f"{m.peak_extra_mib:10.0f}" if m.peak_extra_mib is not None else f"{'n/a':>10}"


def fmt_ratio(base: Measurement, m: Measurement) -> str:
    if base.ms is None or m.ms is None:
        return f"{'':>7}"
    return f"{base.ms / m.ms:6.2f}x"


def table(title: str, rows: list[tuple[str, Measurement]], base_name: str, extra: dict[str, str] | None = None):
    base = dict(rows)[base_name]
    lines = [f"### {title}", "", "| method | ms | peak extra MiB | speed-up vs " + base_name + " | mem vs " + base_name + " |", "|---|---:|---:|---:|---:|"]
    for name, m in rows:
        mem_ratio = ""
        if m.peak_extra_mib is not None and base.peak_extra_mib:
            mem_ratio = f"{100 * m.peak_extra_mib / base.peak_extra_mib:.1f} %"
        note = (extra or {}).get(name, "")
        lines.append(f"| {name}{note} | {fmt_ms(m).strip()} | {fmt_mem(m).strip()} | {fmt_ratio(base, m).strip()} | {mem_ratio} |")
    return "\n".join(lines)


def run_logits_section(n, vocab, device, dtype, repeats, use_compile, bandwidth, backend):
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(n, vocab, device=device, dtype=dtype, generator=generator) * 4
    labels = torch.randint(0, vocab, (n,), device=device, generator=generator)
    eager = f"eager {dtype_name(dtype)}"
    rows = [(eager, measure(lambda: eager_stats_from_logits(logits, labels), device, repeats))]
    if dtype != torch.float32:
        rows.append(("eager fp32", measure(lambda: eager_stats_from_logits(logits.float(), labels), device, repeats)))
    if use_compile:
        compiled = torch.compile(eager_stats_from_logits, dynamic=False)
        rows.append((f"torch.compile {dtype_name(dtype)}", measure(lambda: compiled(logits, labels), device, repeats)))
    ours = measure(lambda: token_stats_from_logits(logits, labels, backend=backend), device, repeats)
    rows.append((f"ours (a) [{backend}]", ours))
    summary = ""
    if ours.ms is not None and device.type == "cuda":
        bytes_read = n * vocab * logits.element_size() + n * (8 + 4 + 4 * 4)
        achieved = bytes_read / (ours.ms * 1e-3) / 1e9
        summary = f"\n\n(a) reads {bytes_read / 1e9:.2f} GB: {achieved:.0f} GB/s = {achieved / bandwidth:.2f} of the measured copy bandwidth ({bandwidth:.0f} GB/s)"
    del logits
    return table(f"from logits: N={n}, V={vocab}, {dtype_name(dtype)}", rows, eager) + summary


def run_hidden_section(n, vocab, hidden_size, device, dtype, repeats, use_compile, backend):
    generator = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(n, hidden_size, device=device, dtype=dtype, generator=generator)
    weight = (torch.randn(vocab, hidden_size, device=device, generator=generator) / math.sqrt(hidden_size) * 4).to(dtype)
    labels = torch.randint(0, vocab, (n,), device=device, generator=generator)

    def ours(h, w, y):
        return token_stats_from_hidden(h, w, y, backend=backend)

    eager = f"eager {dtype_name(dtype)}"
    methods: list[tuple[str, Callable | None, str]] = [(eager, eager_stats_from_hidden, "")]
    if use_compile:
        methods.append((f"torch.compile {dtype_name(dtype)}", torch.compile(eager_stats_from_hidden, dynamic=False), ""))
    if device.type == "cuda":
        verl_fn, why = verl_linear_cross_entropy()
        methods.append(("veRL linear_cross_entropy", verl_fn, " (log p, H only)" if verl_fn else f" ({why})"))
        liger_fn, why = liger_fused_linear_ce()
        methods.append(("Liger fused linear CE", liger_fn, " (NLL only)" if liger_fn else f" ({why})"))
    methods.append((f"ours (b) [{backend}]", ours, ""))

    notes = {name: note for name, _, note in methods}
    forward_rows, training_rows = [], []
    for name, fn, _ in methods:
        if fn is None:
            forward_rows.append((name, Measurement(None, None, "n/a")))
            training_rows.append((name, Measurement(None, None, "n/a")))
            continue
        with torch.no_grad():
            forward_rows.append((name, measure(lambda fn=fn: fn(hidden, weight, labels), device, repeats)))
        if name.startswith("Liger"):
            # Liger's backward is fused into its forward for a scalar loss only; not comparable here.
            training_rows.append((name, Measurement(None, None, "n/a")))
            continue
        training_rows.append((name, measure(forward_backward(fn, hidden, weight, labels), device, repeats)))
    shape = f"N={n}, H={hidden_size}, V={vocab}, {dtype_name(dtype)}"
    return "\n\n".join(
        [
            table(f"from hidden, forward: {shape}", forward_rows, eager, notes),
            table(f"from hidden, forward+backward (log p, H): {shape}", training_rows, eager, notes),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU-friendly)")
    parser.add_argument("--n", default="4096,16384,32768", help="token counts N")
    parser.add_argument("--hidden", default="1536,2048,4096", help="hidden sizes H")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "triton", "torch"], help="backend of 'ours' (auto: Triton on CUDA)"
    )
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        token_counts, hidden_sizes, vocab, repeats = [32], [32], 500, 1
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        if device.type != "cuda":
            print("the full grid needs a CUDA device; use --smoke on a CPU", file=sys.stderr)
            return 2
        token_counts = [int(x) for x in args.n.split(",")]
        hidden_sizes = [int(x) for x in args.hidden.split(",")]
        vocab, repeats, dtype = args.vocab, args.repeats, torch.bfloat16
    use_compile = not args.no_compile and device.type == "cuda"
    backend = args.backend if args.backend != "auto" else ("triton" if device.type == "cuda" else "torch")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = [
        f"# token statistics benchmark — {name}",
        "",
        f"torch {torch.__version__}; "
        + (f"triton {__import__('triton').__version__}; " if backend == "triton" else "")
        + f"median of {repeats}; temperature {TEMPERATURE}",
    ]
    bandwidth = copy_bandwidth_gbs(device, 2**30 if device.type == "cuda" else 2**24)
    header.append(f"device copy bandwidth (read + write): {bandwidth:.0f} GB/s")
    sections = ["\n".join(header)]
    print(sections[0], flush=True)
    for n in token_counts:
        section = run_logits_section(n, vocab, device, dtype, repeats, use_compile, bandwidth, backend)
        print("\n" + section, flush=True)
        sections.append(section)
        for hidden_size in hidden_sizes:
            section = run_hidden_section(n, vocab, hidden_size, device, dtype, repeats, use_compile, backend)
            print("\n" + section, flush=True)
            sections.append(section)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write("\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
