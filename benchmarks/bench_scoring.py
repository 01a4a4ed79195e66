"""Naive vs prefix-shared RePro scoring: tokens fed, wall time, peak memory, and agreement of J.

Each case scores ``--responses`` responses of ``T`` tokens (after a ``--prompt-tokens`` prompt) at
``m`` cuts — ``m − 1`` random positions and the end of the response (``e + 1``) — plus the base cut
0, with a ``--answer-tokens`` answer: ``m + 1`` J values per response, as RePro needs them.

* naive: :func:`verl_repro.scoring.score_cuts_naive` — one sequence per cut, by default one
  unpadded sequence per forward (``--naive-tokens-per-pass`` groups them, left-padded), the lm_head
  on the answer positions only (a fair baseline: no padding waste, no ``[N, V]`` logits);
* prefix_shared: :func:`verl_repro.scoring.score_cuts_prefix_shared` — one packed pass per group.

Models: ``tiny`` (the 2-layer Qwen2 of the test checkpoint, random weights) and ``qwen2-1.5b``
(Qwen2.5-1.5B's shape, random weights). ``--smoke`` runs a small CPU case in well under a minute and
also checks both modes against the plain oracle ``verl_repro.scoring.reference.score_cuts_oracle``. The script exits with
status 1 when the modes disagree by more than ``--tolerance`` (default: 1e-5 in float32, 0.05 in bf16).

Defaults are the settings of the committed results (one CPU thread, best of 3); each run prints the
machine it ran on.

    python benchmarks/bench_scoring.py --smoke
    python benchmarks/bench_scoring.py --out benchmarks/results/bench_scoring_cpu.txt
    python benchmarks/bench_scoring.py --model qwen2-1.5b --device cuda --dtype bfloat16 \\
        --T 1024 4096 8192 32768 --out benchmarks/results/bench_scoring_h100.txt
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys

import torch

from harness import PeakMemory, machine_line, time_calls
from verl_repro.scoring import score_cuts_naive, score_cuts_prefix_shared

QWEN2_1_5B_SHAPE = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1_000_000.0, tie_word_embeddings=True,
)


def build_model(name: str, device: str, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if name == "tiny":
        from verl_repro.models.tiny import TINY_MODEL_KWARGS

        config = Qwen2Config(**{**TINY_MODEL_KWARGS, "max_position_embeddings": 32768}, vocab_size=512)
    elif name == "qwen2-1.5b":
        config = Qwen2Config(**QWEN2_1_5B_SHAPE)
    else:
        raise SystemExit(f"--model must be tiny or qwen2-1.5b, got {name!r}")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval()


def make_case(T: int, m: int, responses: int, prompt_tokens: int, answer_tokens: int, vocab: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (prompt_tokens,), generator=generator).tolist() for _ in range(responses)]
    response_ids = torch.randint(0, vocab, (responses, T), generator=generator)
    inner = torch.stack([torch.randperm(T - 1, generator=generator)[: m - 1] + 1 for _ in range(responses)])
    cuts = torch.cat([torch.sort(inner, dim=1).values, torch.full((responses, 1), T)], dim=1)
    cut_mask = torch.ones_like(cuts, dtype=torch.bool)
    answers = [torch.randint(0, vocab, (answer_tokens,), generator=generator).tolist() for _ in range(responses)]
    return prompts, response_ids, cuts, cut_mask, answers






def timed(fn, device: str, repeats: int):
    """``(result, best seconds, peak bytes)`` of ``repeats`` calls; the peak is the CUDA allocator's
    (model included; 0 on a CPU, where ``--shared-only`` reports the process's)."""
    with PeakMemory(device) if device == "cuda" else contextlib.nullcontext() as memory:
        timing = time_calls(fn, device, repeats=repeats)
    return timing.result, timing.best_s, memory.base_bytes + memory.peak_bytes if memory is not None else 0


def max_gap(a, b) -> float:
    both = torch.cat([a.j_base.unsqueeze(1), a.j_cuts], 1), torch.cat([b.j_base.unsqueeze(1), b.j_cuts], 1)
    if not torch.equal(torch.isnan(both[0]), torch.isnan(both[1])):
        return float("inf")
    return float((both[0] - both[1]).nan_to_num().abs().max())


def build_parser() -> argparse.ArgumentParser:
    """The command line; its defaults are the settings of the committed results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a small CPU case (< 1 min), checked against the oracle too")
    parser.add_argument("--model", default="tiny", choices=["tiny", "qwen2-1.5b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 8192], help="response tokens")
    parser.add_argument("--m", type=int, nargs="+", default=[5, 10, 20], help="cuts per response (incl. e+1)")
    parser.add_argument("--responses", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--answer-tokens", type=int, default=12)
    parser.add_argument("--tokens-per-pass", type=int, default=16384, help="prefix_shared: responses packed per forward")
    parser.add_argument("--naive-tokens-per-pass", type=int, default=0,
                        help="naive: padded tokens per forward; 0 = one unpadded sequence per forward (no padding waste, causal kernel)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (the best is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tolerance", type=float, default=None)
    parser.add_argument("--shared-only", action="store_true",
                        help="time prefix_shared alone (e.g. T=32768) and report the process's peak memory")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.dtype, args.T, args.m = "tiny", "cpu", "float32", [1024], [5, 10]
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance if args.tolerance is not None else (1e-5 if dtype == torch.float32 else 0.05)
    model = build_model(args.model, args.device, dtype)
    vocab = model.config.vocab_size

    # Warm-up: kernels, allocator, the first-use probe of the tree attention.
    warm = make_case(256, 3, 1, args.prompt_tokens, args.answer_tokens, vocab, seed=1)
    score_cuts_naive(model, *warm, max_tokens_per_pass=args.naive_tokens_per_pass)
    score_cuts_prefix_shared(model, *warm, max_tokens_per_pass=args.tokens_per_pass)

    lines = []
    if args.shared_only:
        return _shared_only(model, args)

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    emit(f"# bench_scoring: model={args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, random weights) "
         f"device={args.device} ({device_name}) dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    emit(f"# {machine_line()}")
    emit(f"# {args.responses} responses per case, prompt {args.prompt_tokens} tokens, answer {args.answer_tokens} tokens, "
         f"m cuts = m-1 random + e+1, plus J_b; prefix_shared packs {args.tokens_per_pass} tokens per pass, "
         f"naive {'one unpadded sequence' if args.naive_tokens_per_pass == 0 else f'{args.naive_tokens_per_pass} padded tokens'} per pass; "
         f"best of {args.repeats}")
    memory = args.device == "cuda"
    header = f"{'T':>6} {'m':>3} {'naive tok':>10} {'shared tok':>10} {'tok x':>6} {'naive s':>8} {'shared s':>8} {'time x':>6} {'max|dJ|':>9}"
    if memory:
        header += f" {'naive GiB':>9} {'shared GiB':>10}"
    emit(header)
    worst = 0.0
    for T in args.T:
        for m in args.m:
            case = make_case(T, m, args.responses, args.prompt_tokens, args.answer_tokens, vocab, seed=T * 100 + m)
            naive, naive_s, naive_peak = timed(lambda: score_cuts_naive(model, *case, max_tokens_per_pass=args.naive_tokens_per_pass), args.device, args.repeats)
            shared, shared_s, shared_peak = timed(lambda: score_cuts_prefix_shared(model, *case, max_tokens_per_pass=args.tokens_per_pass), args.device, args.repeats)
            if shared.fallback_reason:
                emit(f"# prefix_shared fell back to naive: {shared.fallback_reason}")
                worst = float("inf")
            gap = max_gap(naive, shared)
            worst = max(worst, gap)
            row = (f"{T:>6} {m:>3} {naive.scored_tokens:>10} {shared.scored_tokens:>10} {naive.scored_tokens / shared.scored_tokens:>6.2f} "
                   f"{naive_s:>8.3f} {shared_s:>8.3f} {naive_s / shared_s:>6.2f} {gap:>9.2e}")
            if memory:
                row += f" {naive_peak / 2**30:>9.2f} {shared_peak / 2**30:>10.2f}"
            emit(row)
            if args.smoke:
                from verl_repro.scoring.reference import score_cuts_oracle

                j_base, j_cuts = score_cuts_oracle(model, *case, micro_batch_size=4)
                oracle = type(shared)(j_base, j_cuts, 0, 0, 0)
                oracle_gap = max(max_gap(oracle, naive), max_gap(oracle, shared))
                emit(f"# vs reference.score_cuts_oracle: max|dJ| = {oracle_gap:.2e}")
                worst = max(worst, oracle_gap)
    verdict = "agree" if worst <= tolerance else "DISAGREE"
    emit(f"# modes {verdict}: max|dJ| = {worst:.2e} (tolerance {tolerance:g})")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0 if worst <= tolerance else 1


def _shared_only(model, args) -> int:
    """prefix_shared alone at the given sizes: time and peak memory (CUDA allocator, or the process RSS on CPU)."""
    import resource

    print(f"# prefix_shared only: model={args.model} device={args.device} dtype={args.dtype} threads={torch.get_num_threads()}")
    print(f"# {machine_line()}; best of {args.repeats}")
    print(f"{'T':>6} {'m':>3} {'shared tok':>10} {'shared s':>8} {'peak GiB':>9}")
    for T in args.T:
        for m in args.m:
            case = make_case(T, m, args.responses, args.prompt_tokens, args.answer_tokens, model.config.vocab_size, seed=T * 100 + m)
            shared, seconds, peak = timed(lambda: score_cuts_prefix_shared(model, *case, max_tokens_per_pass=args.tokens_per_pass), args.device, args.repeats)
            if args.device != "cuda":
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
            print(f"{T:>6} {m:>3} {shared.scored_tokens:>10} {seconds:>8.3f} {peak / 2**30:>9.2f}" + (f"  fallback: {shared.fallback_reason}" if shared.fallback_reason else ""))
            dense = shared.scored_tokens**2 * 4 / 2**30
            print(f"# peak GiB: {'the CUDA allocator' if args.device == 'cuda' else 'the whole process' + chr(39) + 's peak RSS (Python + torch + model included)'}; "
                  f"a dense {shared.scored_tokens / 1e3:.0f}k x {shared.scored_tokens / 1e3:.0f}k fp32 mask alone would be {dense:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
