"""One command for a GPU machine: kernel correctness, kernel speed and memory, prefix-shared scoring
and the CorR-PO gradient signal, reported against the project's targets in one Markdown file.

    python benchmarks/gpu_check.py                    # CUDA: <= 8 min, writes benchmarks/results/<device>.md
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.md   # any CPU: tiny sizes, seconds

It needs only torch, Triton and transformers plus this repository (no veRL, Ray or vLLM; the
repository root is put on ``sys.path``, nothing is installed). Optional baselines come from
pure-Python wheels unpacked into ``.carry/`` at the repository root (or ``--extra-path``), e.g.::

    pip download --no-deps -d /tmp/wheels liger-kernel==0.8.5 verl==0.9.1
    unzip -q /tmp/wheels/liger_kernel-*.whl -d .carry
    unzip -q /tmp/wheels/verl-*.whl 'verl/utils/kernel/*' -d .carry   # veRL's fused kernel only

veRL's package ``__init__`` imports Ray and tensordict, so its kernel files are loaded on their own,
with a four-function stand-in for ``verl.utils.device``; when neither is there the report says so.

Sections (each written to the file as soon as it is done, so a run cut short still reports):

1. **environment** — device, versions, which optional baselines import, HBM bandwidth (vendor peak
   by device name, and a measured device-to-device copy).
2. **kernel correctness** — kernels (a) and (b) in bf16 / fp16 / fp32 at the real vocabulary
   (V = 151,936), temperature 0.7, ignored rows, against veRL's formulas in float64 on the same
   rounded inputs: log p, entropy, Σp², g, and the gradients of log p and H.
3. **prefix-shared vs naive J scoring** in bf16 on a Qwen2.5-1.5B-shaped random model at T = 8k,
   m = 10 (``benchmarks/bench_scoring.py``'s case): tokens, time, agreement.
4. **the CorR-PO signal** (``verl_repro.gradients.logit_gradient_norms``): ``fast`` against ``exact``
   on a tiny random Qwen2 in float32, and the cost of ``fast`` beside a forward.
5. **kernel speed and peak memory** at N = 16k, V = 151,936, H = 1536, forward and forward+backward,
   against eager torch with veRL's formulas (bf16, fp32), ``torch.compile`` of them, veRL's
   ``linear_cross_entropy`` and Liger's fused linear cross-entropy (``benchmarks/bench_token_stats.py``,
   every output checked there too).
6. **targets** — the table a reader looks at first.

Exit status 1 when a correctness check fails (kernels, scoring agreement, fast vs exact), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

import bench_token_stats  # noqa: E402
from harness import machine_line, time_calls  # noqa: E402
from verl_repro.kernels import IGNORE_INDEX, token_stats_from_hidden, token_stats_from_logits  # noqa: E402

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
CORRECTNESS_TEMPERATURE = 0.7
# The targets, in one place.
ROOFLINE_TARGET = 0.85
EAGER_SPEEDUP_TARGET = 3.0
VERL_SPEEDUP_TARGET = 1.0
TOKEN_RATIO_TARGET = 5.0
# Seconds of budget a speed part needs to include its torch.compile rows.
COMPILE_SECONDS = 150


@dataclass
class Sizes:
    """Problem sizes of one run: the GPU check's, or the dry run's tiny ones."""

    check_rows: int = 300
    vocab: int = 151_936
    hidden: int = 1536
    speed_tokens: int = 16_384
    scoring_model: str = "qwen2-1.5b"
    scoring_T: int = 8192
    scoring_m: int = 10
    gradient_batch: int = 2
    gradient_T: int = 64
    gradient_cost_T: int = 2048
    repeats: int = 5

    @classmethod
    def dry_run(cls) -> "Sizes":
        return cls(check_rows=24, vocab=1000, hidden=64, speed_tokens=16, scoring_model="tiny", scoring_T=48,
                   scoring_m=3, gradient_batch=2, gradient_T=12, gradient_cost_T=32, repeats=1)


@dataclass
class Target:
    what: str
    measured: str
    met: bool | None  # None: not judged (not measured, or a dry run)


@dataclass
class Report:
    """The results file, rewritten after every section."""

    path: Path
    dry_run: bool
    parts: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        print("\n" + text, flush=True)
        self.parts.append(text)
        self.write()

    def target(self, what: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(what, measured, None if self.dry_run else met))

    def write(self, final: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(self.parts)
        if final:
            text += "\n\n" + self.targets_markdown()
        self.path.write_text(text + "\n")

    def targets_markdown(self) -> str:
        lines = ["## Targets", ""]
        if self.dry_run:
            lines += ["Dry run (CPU, tiny sizes): the figures only prove the script runs; no target is judged.", ""]
        lines += ["| target | measured | met |", "|---|---|---|"]
        for target in self.targets:
            verdict = {True: "yes", False: "**no**", None: "not judged"}[target.met]
            lines.append(f"| {target.what} | {target.measured} | {verdict} |")
        lines += ["", "Correctness: " + ("every check passed." if not self.failures else "**FAILED**:\n" +
                                          "\n".join(f"- {failure}" for failure in self.failures))]
        return "\n".join(lines)


class Budget:
    """Wall-clock budget of the whole run; sections ask before starting optional work."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed


# ----------------------------------------------------------------------------------------------
# Optional baselines: Liger and veRL's fused kernel, from carried wheels
# ----------------------------------------------------------------------------------------------


def add_extra_paths(paths: list[str]) -> list[str]:
    """Put carried package trees on ``sys.path`` (``.carry`` at the repository root by default)."""
    added = []
    for path in paths or ([str(REPO / ".carry")] if (REPO / ".carry").is_dir() else []):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
            added.append(path)
    return added


def load_verl_kernel_files() -> str | None:
    """Make ``verl.utils.kernel.linear_cross_entropy`` importable from a carried tree holding only
    ``verl/utils/kernel/*.py``, without veRL's package ``__init__`` (which needs Ray and tensordict).
    Returns None, or why not."""
    try:
        importlib.import_module("verl.utils.device")
        return None  # the real package is there
    except ImportError:
        pass
    for root in sys.path:
        kernel_dir = Path(root) / "verl" / "utils" / "kernel"
        if (kernel_dir / "linear_cross_entropy.py").is_file() and (kernel_dir / "kernels.py").is_file():
            break
    else:
        return "not carried (no verl/utils/kernel/linear_cross_entropy.py on the path)"
    # Stand-in for the four helpers of verl.utils.device that veRL's kernel module uses.
    device = types.ModuleType("verl.utils.device")
    device.get_device_capability = lambda: torch.cuda.get_device_capability()
    device.get_device_name = lambda: "cuda"
    device.is_cuda_available = torch.cuda.is_available()
    device.get_torch_device = lambda: torch.cuda
    for name, path in (("verl", kernel_dir.parents[1]), ("verl.utils", kernel_dir.parent), ("verl.utils.kernel", kernel_dir)):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    sys.modules.setdefault("verl.utils.device", device)
    return None


def optional_baselines() -> dict[str, str]:
    """Import status of each optional baseline (what the report's environment section says)."""
    status = {}
    liger, why = bench_token_stats.liger_fused_linear_ce()
    status["Liger fused linear cross-entropy"] = "importable" if liger else f"not importable ({why})"
    # Carried files alone import as namespace packages, and the kernel module imports
    # verl.utils.device only when first called: the stand-in must be in place before that.
    reason = load_verl_kernel_files() if torch.cuda.is_available() else None  # veRL's kernel is CUDA-only
    verl, why = bench_token_stats.verl_linear_cross_entropy()
    if verl is None and reason is not None:
        why = reason
    status["veRL linear_cross_entropy"] = "importable" if verl else f"not importable ({why})"
    return status


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def device_slug(device: torch.device, dry_run: bool) -> str:
    if dry_run or device.type != "cuda":
        return f"{device.type}-dry-run" if dry_run else device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment_section(report: Report, device: torch.device, dry_run: bool, carried: list[str]) -> dict[str, float]:
    """Versions, baselines, bandwidths. Returns the bandwidths the roofline uses (label -> GB/s)."""
    import transformers

    lines = ["## Environment", "", machine_line(device), "",
             f"transformers {transformers.__version__}"]
    try:
        import triton

        lines[-1] += f"; triton {triton.__version__}" + (" (interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else "")
    except ImportError:
        lines[-1] += "; triton not importable"
    lines += ["", f"carried paths: {', '.join(carried) or 'none'}", ""]
    for name, status in optional_baselines().items():
        lines.append(f"* {name}: {status}")
    for name in ("verl", "ray", "vllm"):
        lines.append(f"* `{name}` package: {'imported' if name in sys.modules and hasattr(sys.modules[name], '__file__') and sys.modules[name].__file__ else 'absent (not needed)'}")
    copy = bench_token_stats.copy_bandwidth_gbs(device, 2**31 if device.type == "cuda" else 2**22)
    bandwidths = {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bench_token_stats.hbm_bandwidth_gbs(name) if device.type == "cuda" else None
    if peak:
        bandwidths[f"the HBM peak ({name})"] = peak
    bandwidths["the measured copy bandwidth"] = copy
    lines += ["", f"HBM bandwidth: vendor peak {f'{peak:.0f} GB/s' if peak else 'unknown for this name'}; "
              f"measured device copy (read + write, {'2 GiB' if device.type == 'cuda' else '4 MiB'}): {copy:.0f} GB/s"]
    if dry_run:
        lines += ["", "**Dry run**: tiny sizes on the CPU; kernel figures come from the Triton interpreter or the "
                  "torch reference and say nothing about speed."]
    report.add("\n".join(lines))
    return bandwidths


def _masked_eager(logits, labels, temperature):
    """veRL's formulas with ignored rows (label ``IGNORE_INDEX``) set to 0, as our kernels give them."""
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    stats = bench_token_stats.eager_stats_from_logits(logits, safe, temperature)
    return tuple(torch.where(valid, value, torch.zeros_like(value)) for value in stats)


def correctness_section(report: Report, device: torch.device, sizes: Sizes, backend: str) -> None:
    """Kernels (a) and (b) in each dtype against veRL's formulas in float64, outputs and gradients."""
    generator = torch.Generator(device=device).manual_seed(0)
    n, vocab, hidden_size, temperature = sizes.check_rows, sizes.vocab, sizes.hidden, CORRECTNESS_TEMPERATURE
    lines = ["## Kernel correctness", "",
             f"Against veRL's formulas in float64 on the same rounded inputs; N = {n} rows (every 7th ignored), "
             f"V = {vocab}, H = {hidden_size}, temperature {temperature}, backend `{backend}`. Outputs: tolerance "
             f"{bench_token_stats.FLOAT32_ATOL:g} + {bench_token_stats.FLOAT32_RTOL:g}·|x| (float32 maths); gradients of "
             "log p + 0.01·H: 4·eps(dtype)·max|grad|, or twice the error of the same formulas run eagerly in float32 "
             "if larger.", "",
             "| kernel | dtype | outputs (max abs error) | gradients (max abs error) |", "|---|---|---|---|"]
    labels = torch.randint(0, vocab, (n,), device=device, generator=generator)
    labels[::7] = IGNORE_INDEX

    def oracle_logits(z, y):
        return _masked_eager(z, y, temperature)

    def oracle_hidden(h, w, y):
        return _masked_eager(h @ w.t(), y, temperature)

    def ours_logits(z, y):
        return token_stats_from_logits(z, y, temperature=temperature, backend=backend)

    def ours_hidden(h, w, y):
        return token_stats_from_hidden(h, w, y, temperature=temperature, backend=backend)

    base_logits = torch.randn(n, vocab, device=device, generator=generator) * 4
    base_hidden = torch.randn(n, hidden_size, device=device, generator=generator)
    base_weight = torch.randn(vocab, hidden_size, device=device, generator=generator) / math.sqrt(hidden_size) * 4
    for dtype in DTYPES:
        name = bench_token_stats.dtype_name(dtype)
        for kernel, inputs, ours, oracle in (
            ("(a) logits", (base_logits.to(dtype),), ours_logits, oracle_logits),
            ("(b) hidden", (base_hidden.to(dtype), base_weight.to(dtype)), ours_hidden, oracle_hidden),
        ):
            def output_check(ours=ours, oracle=oracle, inputs=inputs, label=f"{kernel} {name}"):
                with torch.no_grad():
                    got = ours(*inputs, labels)
                    want = oracle(*(tensor.double() for tensor in inputs), labels)
                return bench_token_stats._compare(label, dict(zip(bench_token_stats.STAT_NAMES, got)),
                                             dict(zip(bench_token_stats.STAT_NAMES, want)),
                                             bench_token_stats.FLOAT32_ATOL, bench_token_stats.FLOAT32_RTOL)

            # a kernel that raises (e.g. fails to compile for this dtype) fails its row, not the section
            outputs = bench_token_stats.guarded_check(f"{kernel} {name}", True, output_check)
            gradients = bench_token_stats.guarded_check(f"{kernel} {name}", True, lambda ours=ours, oracle=oracle, inputs=inputs: (
                bench_token_stats.check_gradients(f"{kernel} {name}", ours, inputs, labels, oracle)))
            for check in (outputs, gradients):
                report.failures += [f"correctness {check.name}: {failure}" for failure in check.failures]
            lines.append(f"| {kernel} | {name} | {outputs.summary()} | {gradients.summary()} |")
    del base_logits, base_weight
    report.add("\n".join(lines))


def scoring_section(report: Report, device: torch.device, sizes: Sizes, dry_run: bool) -> None:
    """Prefix-shared vs naive J on the 1.5B-shaped random model in bf16 (bench_scoring's case)."""
    import bench_scoring

    dtype = torch.float32 if dry_run else torch.bfloat16
    model = bench_scoring.build_model(sizes.scoring_model, device.type, dtype)
    vocab = model.config.vocab_size
    T, m, responses, prompt_tokens, answer_tokens = sizes.scoring_T, sizes.scoring_m, 2, 128 if not dry_run else 8, 12
    warm = bench_scoring.make_case(min(256, T), 3, 1, prompt_tokens, answer_tokens, vocab, seed=1)
    bench_scoring.score_cuts_naive(model, *warm)
    bench_scoring.score_cuts_prefix_shared(model, *warm)
    case = bench_scoring.make_case(T, m, responses, prompt_tokens, answer_tokens, vocab, seed=T * 100 + m)
    naive, naive_s, naive_peak = bench_scoring.timed(
        lambda: bench_scoring.score_cuts_naive(model, *case, max_tokens_per_pass=0), device.type, sizes.repeats)
    shared, shared_s, shared_peak = bench_scoring.timed(
        lambda: bench_scoring.score_cuts_prefix_shared(model, *case), device.type, sizes.repeats)
    gap = bench_scoring.max_gap(naive, shared)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    token_ratio = naive.scored_tokens / shared.scored_tokens
    ok = gap <= tolerance and not shared.fallback_reason
    if not ok:
        report.failures.append(f"scoring: max|ΔJ| = {gap:.3g} (tolerance {tolerance:g})"
                               + (f"; prefix_shared fell back: {shared.fallback_reason}" if shared.fallback_reason else ""))
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    memory = device.type == "cuda"
    lines = [
        "## Prefix-shared vs naive J scoring", "",
        f"Model `{sizes.scoring_model}` ({parameters:.3g}M parameters, random weights, sdpa), {bench_token_stats.dtype_name(dtype)}; "
        f"{responses} responses of T = {T} tokens after a {prompt_tokens}-token prompt, m = {m} cuts ({m - 1} random + "
        f"the end) plus J_b, a {answer_tokens}-token answer. Naive: one unpadded sequence per forward, lm_head on the "
        f"answer positions only; prefix-shared: one packed pass per group. Best of {sizes.repeats}.", "",
        "| mode | tokens fed | s | peak GiB |", "|---|---:|---:|---:|",
        f"| naive | {naive.scored_tokens:,} | {naive_s:.3f} | {naive_peak / 2**30:.2f} |" if memory else
        f"| naive | {naive.scored_tokens:,} | {naive_s:.3f} | n/a |",
        f"| prefix_shared | {shared.scored_tokens:,} | {shared_s:.3f} | {shared_peak / 2**30:.2f} |" if memory else
        f"| prefix_shared | {shared.scored_tokens:,} | {shared_s:.3f} | n/a |",
        "", f"{token_ratio:.2f}× fewer tokens, {naive_s / shared_s:.2f}× less time; max |ΔJ| = {gap:.2e} "
        f"(tolerance {tolerance:g}): {'agree' if ok else '**DISAGREE**'}",
    ]
    report.add("\n".join(lines))
    report.target(f"prefix-shared: ≥ {TOKEN_RATIO_TARGET:g}× fewer tokens at T = {T}, m = {m}",
                  f"{token_ratio:.2f}× ({naive_s / shared_s:.2f}× time, max ΔJ {gap:.1e})", token_ratio >= TOKEN_RATIO_TARGET)
    del model
    _free(device)


def gradients_section(report: Report, device: torch.device, sizes: Sizes) -> None:
    """The CorR-PO signal: ``fast`` against ``exact`` (float32) and the cost of ``fast``."""
    import bench_scoring
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl_repro.gradients import logit_gradient_norms
    from verl_repro.models.tiny import TINY_MODEL_KWARGS

    config = Qwen2Config(**TINY_MODEL_KWARGS, vocab_size=512)
    config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(0)
    B, T = sizes.gradient_batch, sizes.gradient_T
    input_ids = torch.randint(0, config.vocab_size, (B, T), generator=generator).to(device)
    target_ids = torch.roll(input_ids, -1, dims=1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, : T // 4] = 0  # a left-padded row
    real = attention_mask.bool()
    matrices = ("q_proj", "v_proj", "o_proj")
    lines = [
        "## CorR-PO gradient signal (`verl_repro.gradients.logit_gradient_norms`)", "",
        f"Nuclear norms of ∂z[t, y_t]/∂W for the last layer's {', '.join(matrices)}, `fast` against `exact` (per-token "
        f"autograd); tiny random Qwen2 ({TINY_MODEL_KWARGS['num_hidden_layers']} layers, hidden "
        f"{TINY_MODEL_KWARGS['hidden_size']}), B = {B}, T = {T} (one row left-padded). Relative error on real tokens, "
        "against max(|exact|, 1e-3 · max|exact|).", "",
        f"| dtype | {' | '.join(matrices)} | tolerance | fast ms | exact ms |", "|---|" + "---:|" * (len(matrices) + 3),
    ]
    worst = {}
    for dtype, tolerance in ((torch.float64, 1e-6), (torch.float32, 1e-3)):
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2ForCausalLM(config).to(dtype).eval()
        runs = {}
        for method in ("fast", "exact"):
            runs[method] = time_calls(lambda method=method: logit_gradient_norms(
                model, input_ids, target_ids, attention_mask, layers=(-1,), matrices=matrices, norm="nuc", method=method), device, warmup=1)
        (fast, fast_s), (exact, exact_s) = [(runs[method].result, runs[method].median_s) for method in ("fast", "exact")]
        fast, exact = fast[real][:, 0].double(), exact[real][:, 0].double()  # [tokens, matrices]
        floor = 1e-3 * exact.abs().amax(dim=0, keepdim=True)
        relative = ((fast - exact).abs() / torch.maximum(exact.abs(), floor)).amax(dim=0).tolist()
        worst[dtype] = max(relative)
        if not worst[dtype] <= tolerance:
            report.failures.append(f"CorR-PO signal {bench_token_stats.dtype_name(dtype) if dtype != torch.float64 else 'fp64'}: "
                                   f"fast vs exact relative error {worst[dtype]:.3g} > {tolerance:g}")
        label = "fp64" if dtype == torch.float64 else bench_token_stats.dtype_name(dtype)
        lines.append(f"| {label} | {' | '.join(f'{error:.1e}' for error in relative)} | {tolerance:g} | "
                     f"{fast_s * 1e3:.1f} | {exact_s * 1e3:.1f} |")
    ok = all(worst[dtype] <= tolerance for dtype, tolerance in ((torch.float64, 1e-6), (torch.float32, 1e-3)))
    del model
    report.add("\n".join(lines))
    report.target("CorR-PO fast signal = exact (fp64 within 1e-6, fp32 within 1e-3)",
                  f"max relative error fp64 {worst[torch.float64]:.1e}, fp32 {worst[torch.float32]:.1e}", ok)
    _free(device)
    run_section(report, "CorR-PO signal cost", _gradient_cost, device, sizes, generator)


def _gradient_cost(report: Report, device: torch.device, sizes: Sizes, generator: torch.Generator) -> None:
    """The cost of ``fast`` at a real size: the 1.5B-shaped random model (the dry run: the tiny one)."""
    import bench_scoring

    from verl_repro.gradients import logit_gradient_norms

    cost_model = "tiny" if sizes.scoring_model == "tiny" else "qwen2-1.5b"
    dtype = torch.float32 if cost_model == "tiny" else torch.bfloat16
    model = bench_scoring.build_model(cost_model, device.type, dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, sizes.gradient_cost_T), generator=generator).to(device)
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        forward_s = time_calls(lambda: model(input_ids=ids, use_cache=False).logits, device, repeats=sizes.repeats, warmup=1).median_s
    _free(device)
    signal_s = time_calls(lambda: logit_gradient_norms(model, ids, targets, method="fast"), device, repeats=sizes.repeats, warmup=1).median_s
    peak = f"; peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    report.add(f"Cost of `fast` on `{cost_model}` ({bench_token_stats.dtype_name(dtype)}, one row of {sizes.gradient_cost_T} tokens, "
               f"median of {sizes.repeats}): {signal_s * 1e3:.1f} ms vs a no-grad forward {forward_s * 1e3:.1f} ms "
               f"({signal_s / max(forward_s, 1e-9):.2f}×){peak}")
    del model
    _free(device)




def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def speed_section(report: Report, device: torch.device, sizes: Sizes, backend: str, bandwidths: dict[str, float],
                  compile_while: Callable[[], bool]) -> None:
    """bench_token_stats's sections at the check's shape, in bf16 (eager fp32 is a row of each table)."""
    n, vocab, hidden_size = sizes.speed_tokens, sizes.vocab, sizes.hidden
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report.add("\n".join([
        "## Kernel speed and peak memory", "",
        "What each method computes: **eager** = veRL's unfused formulas (`verl/utils/torch_functional.py`: "
        "log_softmax + gather, H = logsumexp − Σ softmax·z, Σp² = exp(lse(2z) − 2 lse(z))) plus g from them, in the "
        "input dtype (bf16, as veRL runs them) and in fp32; **torch.compile** = the same formulas compiled "
        "(`dynamic=False`); **veRL linear_cross_entropy** = veRL's fused kernel, log p and H only (less work: no Σp², no g); "
        "**Liger fused linear CE** = per-token NLL only (no entropy), forward only; **ours** = all four statistics in "
        "one pass, float32. Forward+backward = gradient of log p + 0.01·H into the inputs. "
        f"Median of {sizes.repeats}; peak extra memory = allocator peak minus what the inputs hold."
        + " torch.compile rows are left out of a part when the time budget runs short (the part says so).",
    ]))
    sections: dict[str, list] = {"logits": [], "hidden": []}

    def part(report, kind):
        use_compile = compile_while()
        if not use_compile:
            report.add(f"(from {kind}: torch.compile rows left out — time budget or --no-compile)")
        if kind == "logits":
            sections[kind] = bench_token_stats.logits_sections(n, vocab, device, dtype, sizes.repeats, use_compile, backend, bandwidths)
        else:
            sections[kind] = bench_token_stats.hidden_sections(n, vocab, hidden_size, device, dtype, sizes.repeats, use_compile, backend)
        for section in sections[kind]:
            report.add(section.markdown())
            report.failures += section.failures
        _free(device)

    run_section(report, "Kernel speed: from logits", part, "logits")
    run_section(report, "Kernel speed: from hidden", part, "hidden")
    if sections["logits"] and sections["hidden"]:
        _speed_targets(report, sections["logits"], sections["hidden"], bandwidths, n, vocab, dtype)


def _speed_targets(report, logits, hidden, bandwidths, n, vocab, dtype) -> None:
    forward = logits[0]
    ours, eager = forward.rows[-1].measurement, forward.rows[0].measurement
    if ours.ms is not None:
        label, bandwidth = next(iter(bandwidths.items()))  # the vendor peak when the name is known
        achieved = bench_token_stats.read_once_bytes(n, vocab, torch.tensor([], dtype=dtype).element_size()) / (ours.ms * 1e-3) / 1e9
        report.target(f"(a) from logits: ≥ {ROOFLINE_TARGET:g} of the read-once roofline",
                      f"{achieved / bandwidth:.2f} of {label} ({achieved:.0f} GB/s)", achieved / bandwidth >= ROOFLINE_TARGET)
    if ours.ms is not None and eager.ms is not None:
        report.target(f"(a) from logits: ≥ {EAGER_SPEEDUP_TARGET:g}× eager {bench_token_stats.dtype_name(dtype)} (forward)",
                      f"{eager.ms / ours.ms:.2f}×", eager.ms / ours.ms >= EAGER_SPEEDUP_TARGET)
    logits_mib = n * vocab * torch.tensor([], dtype=dtype).element_size() / 2**20
    for section in hidden:
        ours_b = section.rows[-1].measurement
        kind = "forward" if "forward+backward" not in section.title else "forward+backward"
        if ours_b.peak_extra_mib is not None:
            report.target(f"(b) from hidden, {kind}: no [N, V] tensor in memory",
                          f"peak extra {ours_b.peak_extra_mib:.0f} MiB vs one [N, V] logits {logits_mib:.0f} MiB",
                          ours_b.peak_extra_mib < logits_mib)
    verl_row = hidden[0].row("veRL")
    ours_b = hidden[0].rows[-1].measurement
    if verl_row is not None and verl_row.measurement.ms is not None and ours_b.ms is not None:
        ratio = verl_row.measurement.ms / ours_b.ms
        report.target(f"(b) from hidden: ≥ {VERL_SPEEDUP_TARGET:g}× veRL's fused forward while also giving g",
                      f"{ratio:.2f}× ({ours_b.ms:.2f} vs {verl_row.measurement.ms:.2f} ms)", ratio >= VERL_SPEEDUP_TARGET)
    else:
        note = verl_row.note.strip(" ()") if verl_row is not None else "no CUDA device"
        report.target(f"(b) from hidden: ≥ {VERL_SPEEDUP_TARGET:g}× veRL's fused forward while also giving g",
                      f"not measured: {note}", None)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def run_section(report: Report, title: str, fn: Callable, *args) -> None:
    """One section; an exception is reported in the file (and fails the run), not fatal to the rest."""
    start = time.perf_counter()
    try:
        fn(report, *args)
    except Exception as error:  # noqa: BLE001 - a broken section must not hide the others
        report.failures.append(f"{title}: {type(error).__name__}: {error}")
        report.add(f"## {title}\n\n**ERROR** {type(error).__name__}: {error}\n\n```\n{traceback.format_exc()[-3000:]}```")
    print(f"[gpu_check] {title}: {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on any device (CI runs this on a CPU)")
    parser.add_argument("--out", default=None, help="results file (default: benchmarks/results/<device>.md)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help=f"wall-clock budget: a speed part leaves torch.compile out when less than {COMPILE_SECONDS} s are left")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--extra-path", action="append", default=[], help="carried package tree (default: ./.carry if present)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        print("gpu_check needs a CUDA device; --dry-run runs tiny sizes anywhere", file=sys.stderr)
        return 2
    if device.type != "cuda":
        torch.set_num_threads(1)
    sizes = Sizes.dry_run() if args.dry_run else Sizes()
    carried = add_extra_paths(args.extra_path)
    backend = bench_token_stats.resolve_bench_backend("auto", device)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"{device_slug(device, args.dry_run)}.md"
    report = Report(out, dry_run=args.dry_run)
    budget = Budget(args.budget_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.parts.append(f"# GPU check — {name}{' (dry run)' if args.dry_run else ''}\n\n"
                        f"`python benchmarks/gpu_check.py{' --dry-run' if args.dry_run else ''}`, "
                        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; sections in the order they ran.")

    bandwidths: dict[str, float] = {}

    def environment(report):
        bandwidths.update(environment_section(report, device, args.dry_run, carried))

    run_section(report, "Environment", environment)
    run_section(report, "Kernel correctness", correctness_section, device, sizes, backend)
    run_section(report, "Prefix-shared vs naive J scoring", scoring_section, device, sizes, args.dry_run)
    run_section(report, "CorR-PO gradient signal", gradients_section, device, sizes)
    # torch.compile costs ~1 min of compilation per part on a GPU: only while enough time is left
    def compile_while() -> bool:
        return device.type == "cuda" and not args.no_compile and budget.left() >= COMPILE_SECONDS
    run_section(report, "Kernel speed and peak memory", speed_section, device, sizes, backend,
                bandwidths or {"the measured copy bandwidth": float("nan")}, compile_while)
    report.parts.append(f"total wall time {budget.elapsed:.0f} s (budget {args.budget_s:.0f} s)")
    report.write(final=True)
    print("\n" + report.targets_markdown(), flush=True)
    print(f"\n[gpu_check] wrote {out}", flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
