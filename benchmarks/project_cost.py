"""What a paper-sized RePro / CorR-PO run costs, by calculation from the shapes and what is measured.

Nothing here runs a model. For a model shape (DeepSeek-R1-Distill-Qwen-1.5B and Qwen3-8B, written out
below) and the paper's settings (256 prompts × 8 responses a step, responses up to 8,192 tokens,
k = 10), it prints per training step:

* the tokens and FLOPs of RePro's J scoring three ways: the authors' code (every response replicated
  ``k + 2`` times, each a full forward of prompt + response + answer), our ``naive`` mode (one
  sequence per cut, ``prompt + response[:c] + answer``) and our ``prefix_shared`` mode (the response
  once, one answer copy per cut; docs/scoring.md);
* the CorR-PO fast signal's extra FLOPs (last decoder layer re-run with autograd + the attention-
  weighted input pass, docs/corrpo.md) beside the old-log-prob forward;
* the rollout, old-log-prob, reference and actor-update FLOPs of the step itself, so each overhead
  is a share of the step;
* the peak memory of the log-prob / entropy head at V = 151,936 for one micro-batch, veRL's eager
  formulas and ``torch.compile`` against kernel (b) (docs/kernel.md);
* GPU-hours of a 500-step run on 8×H100 at a stated utilization, reference scoring against ours.

FLOPs are matrix multiplications only (2 per multiply-add): dense layers ``2·params`` per token,
attention ``4·heads·head_dim`` per (query, visible key) pair per layer, the lm_head ``2·H·V`` per token
whose logits are computed. Every input is printed as *measured* (with the results file it comes from)
or *assumed*. The script checks its own arithmetic against the measurements (exit status 1 if a check
fails): its token formulas against ``benchmarks/bench_scoring.py``'s committed token counts at that
benchmark's own settings and cases, its [N, V] and kernel (b) memory formulas against the H200
measurement, and its CorR-PO FLOP share against the CPU time share measured by
``benchmarks/bench_gradients.py``.

    python benchmarks/project_cost.py
    python benchmarks/project_cost.py --model qwen3-8b --utilization 0.4 --steps 500
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

H100_BF16_DENSE_FLOPS = 989e12  # NVIDIA H100 SXM, bf16 dense tensor-core peak (vendor figure)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Qwen2 / Qwen3 / Llama layout) as its config.json gives it."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool

    @property
    def attention_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        hidden, kv_width = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = hidden * self.attention_width * 2 + hidden * kv_width * 2  # q, o; k, v
        bias = (self.attention_width + 2 * kv_width) if self.qkv_bias else 0
        return attention + bias + 3 * hidden * self.intermediate_size  # gate, up, down

    @property
    def params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings

    def forward_flops(self, tokens: float, visible_pairs: float, logit_tokens: float) -> float:
        """Forward FLOPs of ``tokens`` tokens whose queries see ``visible_pairs`` keys in all, with
        logits for ``logit_tokens`` of them."""
        return (2 * self.num_layers * self.layer_params * tokens
                + 4 * self.num_layers * self.attention_width * visible_pairs
                + 2 * self.hidden_size * self.vocab_size * logit_tokens)


# config.json of each checkpoint, written out so nothing is downloaded.
R1_DISTILL_QWEN_1_5B = ModelShape("DeepSeek-R1-Distill-Qwen-1.5B", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                  num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=False, qkv_bias=True)
QWEN3_8B = ModelShape("Qwen3-8B", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                      num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, tie_word_embeddings=False, qkv_bias=False)
SMOLLM2_135M = ModelShape("SmolLM2-135M-Instruct", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True, qkv_bias=False)
MODELS = {"r1-distill-qwen-1.5b": R1_DISTILL_QWEN_1_5B, "qwen3-8b": QWEN3_8B}


def causal_pairs(length: float) -> float:
    """Visible (query, key) pairs of a causal sequence: ``L (L + 1) / 2``."""
    return length * (length + 1) / 2


# ----------------------------------------------------------------------------- token counts per response


def reference_tokens(prompt: float, response: float, answer: float, k: int) -> float:
    """The authors' code: ``k + 2`` replicas of prompt + response + answer."""
    return (k + 2) * (prompt + response + answer)


def naive_tokens(prompt: float, cuts: list[float], answer: float) -> float:
    """One sequence per slot: the base cut 0 and every cut (the last is the end of the response)."""
    return sum(prompt + c + answer for c in [0.0, *cuts])


def prefix_shared_tokens(prompt: float, cuts: list[float], answer: float) -> float:
    """``P + max cut + slots·(A + 1)``: each copy re-feeds the last context token of its cut."""
    return prompt + max(cuts) + (len(cuts) + 1) * (answer + 1)


# ----------------------------------------------------------------------------- FLOPs per response


def reference_flops(model: ModelShape, prompt: float, response: float, answer: float, k: int) -> float:
    length = prompt + response + answer
    return (k + 2) * model.forward_flops(length, causal_pairs(length), length)


def naive_flops(model: ModelShape, prompt: float, cuts: list[float], answer: float) -> float:
    return sum(model.forward_flops(prompt + c + answer, causal_pairs(prompt + c + answer), prompt + c + answer)
               for c in [0.0, *cuts])


def prefix_shared_flops(model: ModelShape, prompt: float, cuts: list[float], answer: float) -> float:
    prefix = prompt + max(cuts)
    copy = answer + 1
    # copy j sees the prefix up to its cut's last context token and itself, causally
    copy_pairs = sum(copy * (prompt + c) + causal_pairs(copy) for c in [0.0, *cuts])
    tokens = prefix + (len(cuts) + 1) * copy
    return model.forward_flops(tokens, causal_pairs(prefix) + copy_pairs, tokens)


def corrpo_signal_flops(model: ModelShape, length: float) -> float:
    """Extra FLOPs of the fast signal over a sequence: the last layer re-run with autograd (its
    forward, and a backward of activation gradients only, as many FLOPs again), ``z[t, y_t]`` from
    the target rows of the lm_head, the attention-weighted input pass ``x̄ = Σ_τ A_tτ x_τ`` (scores
    again, then values of width H), and per token a thin QR of ``[H, heads]`` and an SVD of
    ``heads × heads``."""
    last_layer = 2 * model.layer_params * length + 4 * model.attention_width * causal_pairs(length)
    attended_input = 2 * model.num_heads * (model.head_dim + model.hidden_size) * causal_pairs(length)
    per_token = 2 * model.hidden_size + 2 * model.hidden_size * model.num_heads**2 + 4 * model.num_heads**3
    return 2 * last_layer + attended_input + per_token * length


# ----------------------------------------------------------------------------- the paper's settings


@dataclass(frozen=True)
class Settings:
    prompts_per_step: int = 256          # paper (recipes/paper_defaults.yaml: data.train_batch_size)
    responses_per_prompt: int = 8        # paper (actor_rollout_ref.rollout.n)
    max_response: int = 8192             # paper (data.max_response_length)
    k: int = 10                          # paper (repro.num_segments)
    prompt_tokens: int = 256             # assumed
    answer_tokens: int = 12              # assumed (as bench_scoring: "\boxed{...}" of a short answer)
    shortest_response: int = 1024        # assumed distribution: ...
    truncated_share: float = 0.2         # ... this share hits max_response, the rest uniform above shortest
    micro_batch_tokens: int = 32768      # recipes (ppo_max_token_len_per_gpu): tokens per head call
    gradient_checkpointing: bool = True  # recipes (enable_gradient_checkpointing)

    @property
    def responses(self) -> int:
        return self.prompts_per_step * self.responses_per_prompt

    def response_lengths(self, quantiles: int = 100) -> list[float]:
        """The stated length distribution as ``quantiles`` equally likely lengths."""
        truncated = round(quantiles * self.truncated_share)
        rest = quantiles - truncated
        spread = [self.shortest_response + (self.max_response - self.shortest_response) * (i + 0.5) / rest for i in range(rest)]
        return spread + [float(self.max_response)] * truncated

    def cuts(self, response: float) -> list[float]:
        """k boundaries spread evenly over the response (assumed), then the end cut e + 1."""
        return [response * (j + 1) / (self.k + 1) for j in range(self.k)] + [response]


def step_costs(model: ModelShape, settings: Settings) -> dict[str, float]:
    """FLOPs (and scored tokens) of one training step, summed over its responses."""
    totals = dict.fromkeys(["rollout", "old_log_prob", "reference_policy", "update", "corrpo_signal",
                            "j_reference", "j_naive", "j_prefix_shared",
                            "tokens_reference", "tokens_naive", "tokens_prefix_shared", "response_tokens"], 0.0)
    lengths = settings.response_lengths()
    scale = settings.responses / len(lengths)
    prompt, answer, k = settings.prompt_tokens, settings.answer_tokens, settings.k
    for response in lengths:
        sequence = prompt + response
        pairs = causal_pairs(sequence)
        forward = model.forward_flops(sequence, pairs, sequence)  # veRL's log-prob path: logits for every token
        cuts = settings.cuts(response)
        contributions = {
            "rollout": model.forward_flops(sequence, pairs, response),  # vLLM: logits of generated tokens only
            "old_log_prob": forward,
            "reference_policy": forward,  # the paper's KL loss needs the reference log-probs
            "update": forward * (4 if settings.gradient_checkpointing else 3),  # forward, recompute, backward (2×)
            "corrpo_signal": corrpo_signal_flops(model, sequence),
            "j_reference": reference_flops(model, prompt, response, answer, k),
            "j_naive": naive_flops(model, prompt, cuts, answer),
            "j_prefix_shared": prefix_shared_flops(model, prompt, cuts, answer),
            "tokens_reference": reference_tokens(prompt, response, answer, k),
            "tokens_naive": naive_tokens(prompt, cuts, answer),
            "tokens_prefix_shared": prefix_shared_tokens(prompt, cuts, answer),
            "response_tokens": response,
        }
        for key, value in contributions.items():
            totals[key] += value * scale
    totals["step"] = totals["rollout"] + totals["old_log_prob"] + totals["reference_policy"] + totals["update"]
    return totals


# ----------------------------------------------------------------------------- head memory

MIB = 2**20


@dataclass(frozen=True)
class HeadMemory:
    """Peak extra memory of the log-prob / entropy head per [N, V] bf16 logits tensor, measured on an
    NVIDIA H200 at N = 16,384, V = 151,936, H = 1,536 (benchmarks/results/nvidia-h200.md)."""

    eager_forward: float = 14244 / 4748          # "from hidden, forward": eager bf16
    eager_forward_backward: float = 37491 / 4748
    compile_forward: float = 4748 / 4748
    compile_forward_backward: float = 13751 / 4748
    kernel_b_forward_mib: float = 1              # no [N, V] tensor
    kernel_b_forward_backward_mib: float = 1025  # the fp32 weight gradient and hidden gradient


def logits_mib(tokens: int, vocab: int) -> float:
    return tokens * vocab * 2 / MIB


def kernel_b_backward_mib(tokens: int, model: ModelShape) -> float:
    """Kernel (b)'s forward + backward keeps no [N, V] tensor: a float32 weight gradient ``[V, H]``
    and a float32 hidden gradient ``[N, H]``."""
    return (model.vocab_size + tokens) * model.hidden_size * 4 / MIB


# ----------------------------------------------------------------------------- self-check


def read_bench_scoring(results: Path) -> list[tuple[int, int, int, int]]:
    text = (results / "bench_scoring_cpu.txt").read_text()
    return [tuple(int(v) for v in row) for row in re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s", text, flags=re.M)]


def bench_scoring_cases(rows):
    """The cases bench_scoring scored for each committed (T, m) row, regenerated from its seeds."""
    import bench_scoring

    defaults = bench_scoring.build_parser().parse_args([])
    for T, m, naive, shared in rows:
        _, _, cuts, _, _ = bench_scoring.make_case(T, m, defaults.responses, defaults.prompt_tokens, defaults.answer_tokens,
                                                   vocab=512, seed=T * 100 + m)
        yield T, m, naive, shared, defaults, [[float(c) for c in row] for row in cuts.tolist()]


def self_check(results: Path) -> list[tuple[str, bool, str]]:
    checks = []
    rows = read_bench_scoring(results)
    worst = ""
    agree = bool(rows)
    for T, m, naive, shared, defaults, cuts in bench_scoring_cases(rows):
        ours_naive = sum(naive_tokens(defaults.prompt_tokens, row, defaults.answer_tokens) for row in cuts)
        ours_shared = sum(prefix_shared_tokens(defaults.prompt_tokens, row, defaults.answer_tokens) for row in cuts)
        if (ours_naive, ours_shared) != (naive, shared):
            agree = False
            worst = f"T={T} m={m}: formulas {ours_naive:.0f} / {ours_shared:.0f}, measured {naive} / {shared}"
    checks.append(("token formulas = bench_scoring's measured tokens on its own cases "
                   f"({len(rows)} rows of bench_scoring_cpu.txt)", agree, worst or "all equal"))

    h200 = (results / "nvidia-h200.md").read_text()
    match = re.search(r"\| naive \| ([\d,]+) \|.*\n\| prefix_shared \| ([\d,]+) \|", h200)
    measured = (int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))) if match else None
    cpu_row = next(((n, s) for T, m, n, s in rows if (T, m) == (8192, 10)), None)
    checks.append(("H200 prefix-shared case (T = 8192, m = 10) = the same token counts",
                   measured is not None and measured == cpu_row,
                   f"H200 {measured}, CPU {cpu_row}" + (f": {measured[0] / measured[1]:.2f}x fewer tokens" if measured else "")))

    match = re.search(r"one \[N, V\] bf16 logits tensor: (\d+) MiB", h200)
    formula = logits_mib(16384, 151936)
    checks.append(("[N, V] bf16 logits at N = 16,384, V = 151,936", match is not None and abs(formula - int(match.group(1))) < 1,
                   f"formula {formula:.0f} MiB, measured {match.group(1) if match else '?'} MiB"))
    match = re.search(r"### from hidden, forward\+backward.*?\| ours \(b\) \[triton\] \| [\d.]+ \| (\d+) \|", h200, flags=re.S)
    formula = kernel_b_backward_mib(16384, R1_DISTILL_QWEN_1_5B)
    measured_b = int(match.group(1)) if match else None
    checks.append(("kernel (b) forward + backward peak within 10 % of fp32 dweight + dhidden",
                   measured_b is not None and abs(formula - measured_b) <= 0.1 * measured_b,
                   f"formula {formula:.0f} MiB, measured {measured_b} MiB"))
    match = re.search(r"### from hidden, forward: .*?\| eager bf16 \| [\d.]+ \| (\d+) \|.*?\| torch.compile bf16 \| [\d.]+ \| (\d+) \|", h200, flags=re.S)
    inputs = HeadMemory()
    same = match is not None and (round(inputs.eager_forward * 4748), round(inputs.compile_forward * 4748)) == (int(match.group(1)), int(match.group(2)))
    checks.append(("head-memory inputs = the H200 measurement", same, "eager / compile forward peaks read back" if same else "differ"))

    logit_grad = (results / "bench_gradients_cpu.md").read_text()
    match = re.search(r"^\| 1024 \|.*?\| \+([\d.]+) % \|", logit_grad, flags=re.M)
    measured_share = float(match.group(1)) / 100 if match else float("nan")
    predicted = corrpo_signal_flops(SMOLLM2_135M, 1024) / SMOLLM2_135M.forward_flops(1024, causal_pairs(1024), 1024)
    checks.append(("CorR-PO signal FLOP share within 2x of its measured CPU time share (SmolLM2, T = 1,024)",
                   match is not None and 0.5 <= predicted / measured_share <= 2.0,
                   f"FLOPs +{predicted * 100:.1f} %, time +{measured_share * 100:.1f} % (bench_gradients_cpu.md)"))
    return checks


# ----------------------------------------------------------------------------- report


def gpu_hours(flops_per_step: float, steps: int, utilization: float) -> float:
    return flops_per_step * steps / (H100_BF16_DENSE_FLOPS * utilization) / 3600


def report(model: ModelShape, settings: Settings, steps: int, utilization: float, gpus: int) -> list[str]:
    costs = step_costs(model, settings)
    step = costs["step"]
    lines = [
        f"## {model.name} ({model.params / 1e9:.2f}B parameters; {model.num_layers} layers, hidden {model.hidden_size}, "
        f"{model.num_heads} heads / {model.num_kv_heads} KV heads, V = {model.vocab_size:,})",
        "",
        f"One step: {settings.responses:,} responses, {costs['response_tokens'] / settings.responses:,.0f} response tokens "
        f"on average ({costs['response_tokens'] / 1e6:.1f}M a step).",
        "",
        "| part of the step | tokens | PFLOP | share of the GRPO step |",
        "|---|---:|---:|---:|",
    ]
    parts = [("rollout (generation)", costs["response_tokens"], costs["rollout"]),
             ("old-log-prob forward", None, costs["old_log_prob"]),
             ("reference-policy forward (KL loss)", None, costs["reference_policy"]),
             (f"actor update (forward, {'recompute, ' if settings.gradient_checkpointing else ''}backward)", None, costs["update"]),
             ("**GRPO step**", None, step),
             (f"RePro J, authors' code ((k + 2) = {settings.k + 2} full forwards)", costs["tokens_reference"], costs["j_reference"]),
             ("RePro J, ours `naive`", costs["tokens_naive"], costs["j_naive"]),
             ("RePro J, ours `prefix_shared`", costs["tokens_prefix_shared"], costs["j_prefix_shared"]),
             ("CorR-PO fast signal (extra, inside the old-log-prob pass)", None, costs["corrpo_signal"])]
    for name, tokens, flops in parts:
        lines.append(f"| {name} | {f'{tokens / 1e6:,.1f}M' if tokens else ''} | {flops / 1e15:,.1f} | {flops / step * 100:.1f} % |")
    lines += [
        "",
        f"J scoring tokens: authors' code {costs['tokens_reference'] / costs['tokens_prefix_shared']:.1f}× and naive "
        f"{costs['tokens_naive'] / costs['tokens_prefix_shared']:.1f}× the prefix-shared count; CorR-PO signal "
        f"+{costs['corrpo_signal'] / costs['old_log_prob'] * 100:.1f} % of the old-log-prob forward's FLOPs.",
        "",
        f"GPU-hours for {steps} steps ({gpus}×H100, {utilization:.0%} of the bf16 dense peak, {H100_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s):",
        "",
        "| run | GPU-hours | wall-clock hours | vs GRPO |",
        "|---|---:|---:|---:|",
    ]
    base = gpu_hours(step, steps, utilization)
    for name, extra in [("GRPO", 0.0), ("RePro, authors' scoring", costs["j_reference"]),
                        ("RePro, ours `naive`", costs["j_naive"]), ("RePro, ours `prefix_shared`", costs["j_prefix_shared"]),
                        ("CorR-PO (fast signal)", costs["corrpo_signal"])]:
        hours = gpu_hours(step + extra, steps, utilization)
        lines.append(f"| {name} | {hours:,.0f} | {hours / gpus:,.1f} | {hours / base:.2f}× |")
    memory = HeadMemory()
    n = settings.micro_batch_tokens
    logits = logits_mib(n, model.vocab_size)
    lines += [
        "",
        f"Log-prob / entropy head, one micro-batch of N = {n:,} tokens (one [N, V] bf16 logits tensor: {logits / 1024:,.1f} GiB), peak extra GiB:",
        "",
        "| method | forward | forward + backward |",
        "|---|---:|---:|",
        f"| veRL's formulas, eager bf16 | {memory.eager_forward * logits / 1024:,.1f} | {memory.eager_forward_backward * logits / 1024:,.1f} |",
        f"| the same, torch.compile | {memory.compile_forward * logits / 1024:,.1f} | {memory.compile_forward_backward * logits / 1024:,.1f} |",
        f"| kernel (b), from hidden states | {memory.kernel_b_forward_mib / 1024:,.1f} | {kernel_b_backward_mib(n, model) / 1024:,.1f} |",
        "",
    ]
    return lines


INPUTS = """\
Inputs:
* measured — token counts of the three scoring layouts (benchmarks/results/bench_scoring_cpu.txt and
  nvidia-h200.md: the formulas below reproduce them exactly); peak head memory per [N, V] logits tensor
  (nvidia-h200.md, N = 16,384, scaled linearly in N); the CorR-PO signal's cost share (bench_gradients_cpu.md,
  a FLOP check only: CPU time is not FLOPs);
* from the checkpoints' config.json — the model shapes; from the paper (recipes/paper_defaults.yaml) —
  256 prompts × 8 responses a step, responses ≤ 8,192 tokens, k = 10, a KL loss (a reference forward);
* assumed — prompt {prompt} tokens, answer {answer} tokens; response lengths: {truncated:.0%} truncated at
  {longest:,}, the rest uniform on [{shortest:,}, {longest:,}]; the k cuts spread evenly over the response;
  activation-only backward of the CorR-PO re-run = its forward's FLOPs; one utilization for every part
  (generation usually runs below it); matrix-multiply FLOPs only (norms, softmax, optimizer left out).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--utilization", type=float, default=0.3, help="share of the H100 bf16 dense peak sustained (assumed)")
    parser.add_argument("--prompt-tokens", type=int, default=Settings.prompt_tokens)
    parser.add_argument("--answer-tokens", type=int, default=Settings.answer_tokens)
    parser.add_argument("--k", type=int, default=Settings.k)
    parser.add_argument("--max-response", type=int, default=Settings.max_response)
    parser.add_argument("--shortest-response", type=int, default=Settings.shortest_response)
    parser.add_argument("--truncated-share", type=float, default=Settings.truncated_share)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the measured inputs are read (self-check)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.utilization <= 1:
        raise SystemExit(f"--utilization must be in (0, 1], got {args.utilization}")
    if not 0 <= args.truncated_share < 1 or not 0 < args.shortest_response <= args.max_response:
        raise SystemExit("--truncated-share must be in [0, 1) and 0 < --shortest-response <= --max-response")
    settings = Settings(k=args.k, prompt_tokens=args.prompt_tokens, answer_tokens=args.answer_tokens, max_response=args.max_response,
                        shortest_response=args.shortest_response, truncated_share=args.truncated_share)
    lines = ["# What a paper-sized run costs per training step", ""]
    for model in (MODELS.values() if args.model == "all" else [MODELS[args.model]]):
        lines += report(model, settings, args.steps, args.utilization, args.gpus)
    lines.append(INPUTS.format(prompt=settings.prompt_tokens, answer=settings.answer_tokens, truncated=settings.truncated_share,
                               longest=settings.max_response, shortest=settings.shortest_response))
    checks = self_check(args.results)
    lines += ["Self-check against the measurements:", ""]
    lines += [f"* {'ok' if passed else 'FAILED'}: {name} — {detail}" for name, passed, detail in checks]
    print("\n".join(lines))
    return 0 if all(passed for _, passed, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
