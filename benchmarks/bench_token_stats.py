"""Benchmark of the fused token-statistics kernels against the ways veRL and Liger get the same numbers.

Prints, for each shape, time and peak extra memory, forward and forward+backward (through log p_y
and H) separately, of:

* from logits [N, V] (kernel (a)): eager torch with veRL's formulas in bf16 (as veRL runs them) and
  in float32, ``torch.compile`` of the bf16 formulas, and ours; plus (a)'s fraction of the
  read-once roofline (bytes it must read / time, over the device's HBM bandwidth from
  :data:`HBM_BANDWIDTH_GBS` by name and over a device copy's bandwidth measured in the same run);
* from hidden states [N, H] and the lm_head weight [V, H] (kernel (b)): eager matmul + formulas
  (bf16 and float32), ``torch.compile`` of the bf16 one, veRL's ``linear_cross_entropy`` (log p_y and H only — less work, no Σp² / g),
  Liger's fused linear cross-entropy (NLL only), and ours.

**Every output is checked**, at every size: each method's outputs against veRL's formulas evaluated
in float64 on the same (dtype-rounded) inputs — ours on all four statistics and on the gradients
of log p_y and H (on a row subset), the baselines on what they compute, with a tolerance for their
dtype. A failed check is printed and the script exits with status 1; the report says what failed.

Ratios are against eager in the input dtype, all measured in the same run. Peak extra memory is the
CUDA allocator's peak during the call minus the memory held before it (inputs excluded).

    python benchmarks/bench_token_stats.py                    # the full grid, on a CUDA device
    python benchmarks/bench_token_stats.py --smoke            # tiny shapes; runs on a CPU too
    python benchmarks/bench_token_stats.py --out benchmarks/results/<device>.md

On a CPU the smoke run times the Triton kernels in the interpreter when ``TRITON_INTERPRET=1`` is set
(else the torch reference) on one thread: that proves the script runs and checks its outputs, not
how fast anything is.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from harness import PeakMemory, machine_line, time_calls
from verl_repro.kernels import BACKENDS, token_stats_from_hidden, token_stats_from_logits

TEMPERATURE = 1.0
STAT_NAMES = ("log p", "H", "Σp²", "g")

# HBM bandwidth (GB/s, vendor peak) by device name: the first entry whose every word is in the
# lower-cased name wins, so the specific names come first.
HBM_BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("gh200", 4000.0),
    ("h200", 4800.0),
    ("h100 pcie", 2000.0),
    ("h100 nvl", 3900.0),
    ("h100", 3350.0),
    ("h800 pcie", 2000.0),
    ("h800", 3350.0),
    ("b200", 8000.0),
    ("a100 pcie 40gb", 1555.0),
    ("a100 pcie", 1935.0),
    ("a100 40gb", 1555.0),
    ("a100", 2039.0),
    ("a800", 2039.0),
    ("l40s", 864.0),
    ("l4", 300.0),
    ("a10g", 600.0),
    ("a10", 600.0),
    ("rtx 4090", 1008.0),
    ("v100", 900.0),
)


def hbm_bandwidth_gbs(device_name: str) -> float | None:
    """Vendor peak HBM bandwidth of a device by its ``torch.cuda.get_device_name``, or None."""
    name = device_name.lower().replace("-", " ").replace("_", " ")
    for pattern, bandwidth in HBM_BANDWIDTH_GBS:
        if all(word in name for word in pattern.split()):
            return bandwidth
    return None




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
        from verl.utils.kernel import kernels  # noqa: F401  (imported lazily by the call: fail here instead)
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


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> Measurement:
    """Median wall time over ``repeats`` calls after ``warmup``, and the allocator's peak extra memory (GPU)."""
    try:
        time_calls(fn, device, warmup=warmup)
        gc.collect()
        peak = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            with PeakMemory(device) as memory:
                fn()
            peak = memory.mib
        return Measurement(time_calls(fn, device, repeats=repeats).median_s * 1e3, peak)
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


def forward_backward(fn, *inputs, labels):
    """A closure timing forward + backward of log p_y and H (the training forward's needs) of
    ``fn(*inputs, labels)`` into every floating input."""
    leaves = [tensor.detach().requires_grad_() for tensor in inputs]

    def run():
        for leaf in leaves:
            leaf.grad = None
        outputs = fn(*leaves, labels)
        training_loss(outputs[0], outputs[1]).backward()

    return run


def training_loss(logprob: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """The scalar whose gradient the fwd+bwd rows time and the checks compare (a policy-gradient
    term and an entropy bonus, with distinct weights so each gradient is seen)."""
    return logprob.float().sum() + 0.01 * entropy.float().sum()


# ----------------------------------------------------------------------------------------------
# Checks: every method's outputs against veRL's formulas in float64
# ----------------------------------------------------------------------------------------------

# Max abs error allowed for outputs of float32 maths (ours: float32 statistics of any input dtype).
FLOAT32_ATOL = 2e-4
FLOAT32_RTOL = 2e-5


def _baseline_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for a baseline's log p / H computed in ``dtype`` (its own rounding, ~eps · |H|)."""
    if dtype == torch.float32:
        return FLOAT32_ATOL, 1e-4
    eps = torch.finfo(dtype).eps
    return 16 * eps, 8 * eps


@dataclass
class CheckResult:
    name: str
    max_errors: dict[str, float]
    failures: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.note and not self.max_errors and self.ok:
            return f"not checked ({self.note})"
        errors = ", ".join(f"{key} {value:.1e}" for key, value in self.max_errors.items())
        return f"{'ok' if self.ok else 'FAILED'}: max abs error {errors}" + (f" — {'; '.join(self.failures)}" if self.failures else "")


def _compare(name: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float, rtol: float) -> CheckResult:
    result = CheckResult(name, {})
    for key, value in got.items():
        expected = want[key].double()
        value = value.detach().double().to(expected.device)
        if value.shape != expected.shape:
            result.failures.append(f"{key}: shape {tuple(value.shape)} != {tuple(expected.shape)}")
            continue
        error = (value - expected).abs()
        bad = ~(error <= atol + rtol * expected.abs())  # NaN counts as bad
        result.max_errors[key] = float(error.nan_to_num(float("inf")).max()) if error.numel() else 0.0
        if bool(bad.any()):
            result.failures.append(f"{key}: {int(bad.sum())} of {bad.numel()} values off (max abs error {result.max_errors[key]:.3g})")
    return result


# Rows are independent: outputs are checked on the first CHECK_ROWS rows (all of a small case), so
# the float64 oracle never needs several [N, V] float64 tensors at N = 32k.
CHECK_ROWS = 1024
GRADIENT_CHECK_ROWS = 256


def oracle_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """veRL's formulas in float64 on the given (already dtype-rounded) logits."""
    return dict(zip(STAT_NAMES, eager_stats_from_logits(logits.double(), labels)))


def check_stats(name: str, outputs, oracle: dict[str, torch.Tensor], dtype: torch.dtype | None) -> CheckResult:
    """``outputs``: the method's (log p, H, ...) tuple, compared on the oracle's rows. ``dtype``: the
    dtype it computes in, or None for ours (float32 maths whatever the input: all four statistics,
    tight tolerance)."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    rows = len(next(iter(oracle.values())))
    got = {key: value[:rows] for key, value in zip(STAT_NAMES, outputs)}
    if dtype is None:
        return _compare(name, got, oracle, FLOAT32_ATOL, FLOAT32_RTOL)
    got = {key: got[key] for key in STAT_NAMES[:2] if key in got}
    return _compare(name, got, oracle, *_baseline_tolerance(dtype))


def check_gradients(name: str, fn: Callable, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor,
                    oracle_fn: Callable) -> CheckResult:
    """Gradients of :func:`training_loss` into every input, ``fn`` against ``oracle_fn`` in float64.
    Tolerance: the inputs' rounding of the gradient (``4 eps · max |grad|``) plus float32 noise, or
    twice the error of the oracle's own formulas run eagerly in float32 on the same inputs, whichever
    is larger: float32 maths cannot do better than that on a long reduction (a GPU's float32 matmul
    over V = 151,936 in the hidden kernel's backward), and a wrong backward is still far outside it."""
    def loss_gradients(function, dtype):
        leaves = [tensor.detach().to(dtype or tensor.dtype).requires_grad_() for tensor in inputs]
        outputs = function(*leaves, labels)
        return torch.autograd.grad(training_loss(outputs[0], outputs[1]), leaves)

    got = loss_gradients(fn, None)
    want = loss_gradients(oracle_fn, torch.float64)
    eager_float32 = loss_gradients(oracle_fn, torch.float32)
    names = [f"d{label}" for label in ("logits",)] if len(inputs) == 1 else ["dhidden", "dweight"]
    result = CheckResult(name, {})
    for key, value, expected, eager in zip(names, got, want, eager_float32):
        scale = float(expected.abs().max())
        eager_error = float((eager.double() - expected).abs().max())
        atol = max(4 * torch.finfo(inputs[0].dtype).eps * scale + 1e-6 * max(scale, 1.0), 2 * eager_error)
        part = _compare(name, {key: value}, {key: expected}, atol, 0.0)
        result.max_errors.update(part.max_errors)
        result.failures += part.failures
    return result


def guarded_check(name: str, ours: bool, check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; an exception fails it for ours, and only annotates a baseline (its timing row
    shows the same error): a broken baseline is reported, not taken for a wrong kernel."""
    try:
        return check()
    except Exception as error:  # noqa: BLE001
        message = f"raised {type(error).__name__}: {error}"[:160]
        result = CheckResult(name, {})
        if ours:
            result.failures.append(message)
        else:
            result.note = message
        return result


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


@dataclass
class Row:
    name: str
    measurement: Measurement
    note: str = ""
    check: CheckResult | None = None


@dataclass
class Section:
    title: str
    rows: list[Row]
    base: str
    summary: str = ""

    def row(self, name_prefix: str) -> Row | None:
        return next((row for row in self.rows if row.name.startswith(name_prefix)), None)

    @property
    def failures(self) -> list[str]:
        return [f"{self.title} / {row.name}: {failure}" for row in self.rows if row.check for failure in row.check.failures]

    def markdown(self) -> str:
        base = next(row.measurement for row in self.rows if row.name == self.base)
        lines = [
            f"### {self.title}", "",
            f"| method | ms | peak extra MiB | speed-up vs {self.base} | mem vs {self.base} | check vs float64 |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in self.rows:
            m = row.measurement
            ms = f"{m.ms:.3f}" if m.ms is not None else (m.note or "n/a")
            mem = f"{m.peak_extra_mib:.0f}" if m.peak_extra_mib is not None else "n/a"
            ratio = f"{base.ms / m.ms:.2f}x" if base.ms and m.ms else ""
            mem_ratio = f"{100 * m.peak_extra_mib / base.peak_extra_mib:.1f} %" if m.peak_extra_mib is not None and base.peak_extra_mib else ""
            check = row.check.summary() if row.check else ""
            lines.append(f"| {row.name}{row.note} | {ms} | {mem} | {ratio} | {mem_ratio} | {check} |")
        return "\n".join(lines) + (f"\n\n{self.summary}" if self.summary else "")


def logits_sections(n, vocab, device, dtype, repeats, use_compile, backend, bandwidths: dict[str, float]) -> list[Section]:
    """Kernel (a) and its baselines, forward and forward+backward, every output checked.
    ``bandwidths``: label -> GB/s for the roofline line (e.g. the vendor peak, a measured copy)."""
    generator = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, vocab, device=device, generator=generator) * 4).to(dtype)
    labels = torch.randint(0, vocab, (n,), device=device, generator=generator)
    oracle = oracle_stats(logits[:CHECK_ROWS], labels[:CHECK_ROWS])

    def ours(z, y):
        return token_stats_from_logits(z, y, backend=backend)

    eager = f"eager {dtype_name(dtype)}"
    methods: list[tuple[str, Callable, torch.dtype | None]] = [(eager, eager_stats_from_logits, dtype)]
    if dtype != torch.float32:
        methods.append(("eager fp32", lambda z, y: eager_stats_from_logits(z.float(), y), torch.float32))
    if use_compile:
        methods.append((f"torch.compile {dtype_name(dtype)}", torch.compile(eager_stats_from_logits, dynamic=False), dtype))
    methods.append((f"ours (a) [{backend}]", ours, None))

    forward, training = [], []
    for name, fn, compute_dtype in methods:
        with torch.no_grad():
            check = guarded_check(name, compute_dtype is None,
                                  lambda fn=fn, name=name, dt=compute_dtype: check_stats(name, fn(logits, labels), oracle, dt))
            forward.append(Row(name, measure(lambda fn=fn: fn(logits, labels), device, repeats), check=check))
        check = None
        if compute_dtype is None:
            rows = slice(0, GRADIENT_CHECK_ROWS)
            check = guarded_check(name, True, lambda fn=fn, name=name: check_gradients(
                name, fn, (logits[rows],), labels[rows], eager_stats_from_logits))
        training.append(Row(name, measure(forward_backward(fn, logits, labels=labels), device, repeats), check=check))
    del oracle
    shape = f"N={n}, V={vocab}, {dtype_name(dtype)}"
    sections = [Section(f"from logits, forward: {shape}", forward, eager),
                Section(f"from logits, forward+backward (log p, H): {shape}", training, eager)]
    ours_forward = forward[-1].measurement
    if ours_forward.ms is not None and device.type == "cuda":
        bytes_read = read_once_bytes(n, vocab, logits.element_size())
        achieved = bytes_read / (ours_forward.ms * 1e-3) / 1e9
        fractions = ", ".join(f"{achieved / value:.2f} of {label} ({value:.0f} GB/s)" for label, value in bandwidths.items())
        sections[0].summary = f"(a) forward reads {bytes_read / 1e9:.2f} GB: {achieved:.0f} GB/s = {fractions}"
    return sections


def read_once_bytes(n: int, vocab: int, element_size: int) -> int:
    """What kernel (a)'s forward must move: the logits once, labels and 1/T in, five [N] fp32 out."""
    return n * vocab * element_size + n * (8 + 4 + 5 * 4)


def hidden_sections(n, vocab, hidden_size, device, dtype, repeats, use_compile, backend) -> list[Section]:
    """Kernel (b) and its baselines, forward and forward+backward, every output checked."""
    generator = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(n, hidden_size, device=device, generator=generator).to(dtype)
    weight = (torch.randn(vocab, hidden_size, device=device, generator=generator) / math.sqrt(hidden_size) * 4).to(dtype)
    labels = torch.randint(0, vocab, (n,), device=device, generator=generator)
    oracle = oracle_stats(hidden[:CHECK_ROWS].double() @ weight.double().t(), labels[:CHECK_ROWS])

    def ours(h, w, y):
        return token_stats_from_hidden(h, w, y, backend=backend)

    eager = f"eager {dtype_name(dtype)}"
    methods: list[tuple[str, Callable | None, str, torch.dtype | None]] = [(eager, eager_stats_from_hidden, "", dtype)]
    if dtype != torch.float32:
        methods.append(("eager fp32", lambda h, w, y: eager_stats_from_hidden(h.float(), w.float(), y), "", torch.float32))
    if use_compile:
        methods.append((f"torch.compile {dtype_name(dtype)}", torch.compile(eager_stats_from_hidden, dynamic=False), "", dtype))
    if device.type == "cuda":
        verl_fn, why = verl_linear_cross_entropy()
        # veRL's kernel and Liger accumulate in fp32 from tiles of the input dtype: that dtype's tolerance
        methods.append(("veRL linear_cross_entropy", verl_fn, " (log p, H only)" if verl_fn else f" ({why})", dtype))
        liger_fn, why = liger_fused_linear_ce()
        methods.append(("Liger fused linear CE", liger_fn, " (NLL only)" if liger_fn else f" ({why})", dtype))
    methods.append((f"ours (b) [{backend}]", ours, "", None))

    forward, training = [], []
    for name, fn, note, compute_dtype in methods:
        if fn is None:
            forward.append(Row(name, Measurement(None, None, "n/a"), note))
            training.append(Row(name, Measurement(None, None, "n/a"), note))
            continue
        def forward_check(fn=fn, name=name, check_dtype=compute_dtype):
            with torch.no_grad():
                outputs = fn(hidden, weight, labels)
            if name.startswith("Liger"):
                nll = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
                outputs = (-nll,)  # per-token NLL
            return check_stats(name, outputs, oracle, check_dtype)

        check = guarded_check(name, compute_dtype is None, forward_check)
        with torch.no_grad():
            forward.append(Row(name, measure(lambda fn=fn: fn(hidden, weight, labels), device, repeats), note, check))
        if name.startswith("Liger"):
            # Liger's backward is fused into its forward for a scalar loss only; not comparable here.
            training.append(Row(name, Measurement(None, None, "n/a"), note))
            continue
        check = None
        if compute_dtype is None:
            rows = slice(0, GRADIENT_CHECK_ROWS)
            check = guarded_check(name, True, lambda fn=fn, name=name: check_gradients(
                name, fn, (hidden[rows], weight), labels[rows], eager_stats_from_hidden))
        training.append(Row(name, measure(forward_backward(fn, hidden, weight, labels=labels), device, repeats), note, check))
    shape = f"N={n}, H={hidden_size}, V={vocab}, {dtype_name(dtype)}"
    logits_mib = n * vocab * hidden.element_size() / 2**20
    summary = f"one [N, V] {dtype_name(dtype)} logits tensor: {logits_mib:.0f} MiB"
    return [Section(f"from hidden, forward: {shape}", forward, eager, summary),
            Section(f"from hidden, forward+backward (log p, H): {shape}", training, eager, summary)]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (one CPU thread, median of 5 by default)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU-friendly)")
    parser.add_argument("--n", default="4096,16384,32768", help="token counts N")
    parser.add_argument("--hidden", default="1536,2048,4096", help="hidden sizes H")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary size V")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    parser.add_argument(
        "--backend", default="auto", choices=BACKENDS,
        help="backend of 'ours' (auto: Triton on CUDA, and on CPU when TRITON_INTERPRET=1)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if args.smoke:
        token_counts, hidden_sizes, vocab = [32], [32], 500
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        if device.type != "cuda":
            print("the full grid needs a CUDA device; use --smoke on a CPU", file=sys.stderr)
            return 2
        token_counts = [int(x) for x in args.n.split(",")]
        hidden_sizes = [int(x) for x in args.hidden.split(",")]
        vocab, dtype = args.vocab, torch.bfloat16
    use_compile = not args.no_compile and device.type == "cuda"
    backend = resolve_bench_backend(args.backend, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = [
        f"# token statistics benchmark — {name}",
        "",
        machine_line(device),
        "",
        (f"triton {__import__('triton').__version__}" + (" (interpreter)" if device.type != "cuda" else "") + "; " if backend == "triton" else "")
        + f"median of {args.repeats}; temperature {TEMPERATURE}",
    ]
    bandwidth = copy_bandwidth_gbs(device, 2**30 if device.type == "cuda" else 2**24)
    bandwidths = {"the measured copy bandwidth": bandwidth}
    peak = hbm_bandwidth_gbs(name) if device.type == "cuda" else None
    if peak:
        bandwidths = {f"{name}'s HBM peak": peak, **bandwidths}
    header.append(f"device copy bandwidth (read + write): {bandwidth:.0f} GB/s" + (f"; HBM peak {peak:.0f} GB/s" if peak else ""))
    sections = ["\n".join(header)]
    failures: list[str] = []
    print(sections[0], flush=True)
    for n in token_counts:
        parts = logits_sections(n, vocab, device, dtype, args.repeats, use_compile, backend, bandwidths)
        for hidden_size in hidden_sizes:
            parts += hidden_sections(n, vocab, hidden_size, device, dtype, args.repeats, use_compile, backend)
        for part in parts:
            print("\n" + part.markdown(), flush=True)
            sections.append(part.markdown())
            failures += part.failures
    verdict = "all outputs match the float64 reference" if not failures else "CHECK FAILED:\n" + "\n".join(f"- {f}" for f in failures)
    print("\n" + verdict, flush=True)
    sections.append(verdict)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write("\n\n".join(sections) + "\n")
    return 1 if failures else 0


def resolve_bench_backend(backend: str, device: torch.device) -> str:
    """``auto``: the Triton kernels on CUDA, and on a CPU under the interpreter (TRITON_INTERPRET=1)."""
    if backend != "auto":
        return backend
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    return "torch"


if __name__ == "__main__":
    raise SystemExit(main())
