"""CorR-PO's parameter-gradient signal: cost of the fast method inside the old-log-prob forward.

Side by side, in one run, per sequence length T:

* ``forward``      — the no-grad forward of the old-log-prob pass (logits included);
* ``forward+fast`` — the same forward with ``||∂z[t, y_t]/∂W||_*`` for q/v/o of the last layer measured
  inside it (``verl_repro.gradients.forward_with_logit_gradient_norms``, what the engine vendor runs);
* ``exact``        — per-token autograd (``method="exact"``) on a sample of tokens, per token and
  extrapolated to all T tokens.

Peak memory is the process's resident-set peak above its level before the measurement (sampled
every 2 ms). The run checks its own outputs: the fast norms must equal the exact ones on the sampled
tokens (float32: 1e-3 relative), or it exits 1.

Targets: the fast signal costs ≤ 15 % of the forward at T = 1k; peak memory ≤ 1.2× the forward's.

    python benchmarks/bench_gradients.py                       # SmolLM2-135M-Instruct (embedded), T = 256, 1k, 4k
    python benchmarks/bench_gradients.py --tiny --lengths 64   # random 2-layer Qwen2 (seconds; CI)

Defaults reproduce ``benchmarks/results/bench_gradients_cpu.md`` (one thread, best of 3, interleaved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import PeakMemory, machine_line, time_calls  # noqa: E402
from verl_repro.gradients import forward_with_logit_gradient_norms, logit_gradient_norms  # noqa: E402


def load_model(tiny: bool):
    from transformers import AutoModelForCausalLM

    if tiny:
        from transformers import Qwen2Config

        config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).float().eval(), "tiny random Qwen2 (2 layers, H=64)"
    from verl_repro.models.smollm2 import smollm2_checkpoint

    path = smollm2_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, "SmolLM2-135M-Instruct (embedded, float32)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="256,1024,4096", help="comma-separated sequence lengths")
    parser.add_argument("--exact-tokens", type=int, default=32, help="tokens the exact method measures per length")
    parser.add_argument("--exact-tokens-long", type=int, default=8, help="the same for T > 2048 (one backward through the [T, V] logits each)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="random 2-layer model instead of SmolLM2 (CI)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here (markdown)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, model_name = load_model(args.tiny)
    vocab = model.config.vocab_size
    header = f"{machine_line()}; {args.threads} thread(s), best of {args.repeats}; model: {model_name}"
    print(header)
    rows, ok = [], True
    for length in [int(v) for v in args.lengths.split(",")]:
        generator = torch.Generator().manual_seed(length)
        input_ids = torch.randint(0, vocab, (1, length), generator=generator)
        target_ids = torch.roll(input_ids, -1, dims=1)

        def forward():
            with torch.no_grad():
                return model(input_ids=input_ids, use_cache=False).logits

        def forward_fast():
            return forward_with_logit_gradient_norms(model, input_ids, target_ids)

        forward(), forward_fast()  # warm-up
        with PeakMemory() as memory_forward:
            forward()
        with PeakMemory() as memory_fast:
            _, fast = forward_fast()
        # interleaved, best of each: a busy machine slows both alike
        time_forward = time_fast = float("inf")
        for _ in range(args.repeats):
            time_forward = min(time_forward, time_calls(forward).best_s)
            time_fast = min(time_fast, time_calls(forward_fast).best_s)
        count = min(length, args.exact_tokens if length <= 2048 else args.exact_tokens_long)
        sample = torch.zeros(1, length, dtype=torch.bool)
        sample[0, torch.randperm(length, generator=generator)[:count]] = True
        with PeakMemory() as memory_exact:
            timing = time_calls(lambda: logit_gradient_norms(model, input_ids, target_ids, measure_mask=sample, method="exact")[:, :, 0])
        exact, time_exact = timing.result, timing.best_s
        got, want = fast[sample], exact[sample]
        error = float(((got - want).abs() / want.abs().clamp(min=1e-3 * float(want.abs().max()))).max())
        ok &= error <= 1e-3
        rows.append({
            "T": length, "forward_s": time_forward, "fast_s": time_fast, "overhead": time_fast / time_forward - 1,
            "exact_per_token_s": time_exact / count, "exact_all_s": time_exact / count * length,
            "mem_forward": memory_forward.mib, "mem_fast": memory_fast.mib, "mem_exact": memory_exact.mib,
            "error": error, "count": count,
        })
        r = rows[-1]
        print(f"T={length}: forward {r['forward_s']:.3f} s, +fast {r['fast_s']:.3f} s ({100 * r['overhead']:+.1f} %), "
              f"exact {r['exact_per_token_s']:.3f} s/token ({count} tokens) -> {r['exact_all_s']:.1f} s for all; "
              f"peak MiB forward {r['mem_forward']:.0f}, +fast {r['mem_fast']:.0f}, exact {r['mem_exact']:.0f}; "
              f"fast vs exact max rel. error {error:.1e}", flush=True)

    lines = [
        header, "",
        "| T | forward (s) | forward + fast (s) | fast overhead | exact (s / token) | exact, all T tokens (s) | exact ÷ fast's extra time | peak MiB: forward / +fast / exact | fast vs exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = r["fast_s"] - r["forward_s"]
        ratio = f"{r['exact_all_s'] / extra:.0f}×" if extra > 0 else "n/a"
        lines.append(
            f"| {r['T']} | {r['forward_s']:.3f} | {r['fast_s']:.3f} | {100 * r['overhead']:+.1f} % | {r['exact_per_token_s']:.3f} "
            f"| {r['exact_all_s']:.1f} | {ratio} | {r['mem_forward']:.0f} / {r['mem_fast']:.0f} / {r['mem_exact']:.0f} "
            f"| {r['error']:.1e} ({r['count']} tokens) |"
        )
    at_1k = [r for r in rows if r["T"] == 1024]
    if at_1k:
        r = at_1k[0]
        memory_ratio = r["mem_fast"] / max(r["mem_forward"], 1e-9)
        lines += ["", f"targets at T = 1024: fast overhead {100 * r['overhead']:.1f} % (≤ 15 %: {'met' if r['overhead'] <= 0.15 else 'MISSED'}); "
                      f"peak memory ×{memory_ratio:.2f} of the forward's (≤ 1.2: {'met' if memory_ratio <= 1.2 else 'MISSED'})"]
    table = "\n".join(lines)
    print("\n" + table)
    if args.output:
        args.output.write_text(table + "\n")
    if not ok:
        print("FAILED: the fast norms differ from the exact ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
