"""Step boundaries on real SmolLM2 responses: token by token (the old rule) against the decoded text.

Samples responses of the embedded SmolLM2-135M-Instruct to the bundled grade-school problems (the
analysis tools' prompt: one step per line, answer in ``\\boxed{}``), then counts, per response:

* lines — newline-ended lines of its text (a run of newlines counted once);
* candidates before — RePro's candidate cuts when a token ends a step only if its *own* text ends
  with a pattern (what ``repro.boundary_patterns`` matched before the text rule);
* candidates after — candidate cuts from the decoded text (:func:`verl_repro.algorithms.step_boundaries`);
* candidates at every line end — the same with the single pattern ``"\\n"`` (the demo's setting).

A candidate is a step end whose cut lies strictly before the response's end token (``c < e``), as
:func:`verl_repro.algorithms.select_cuts` ranks them (SmolLM2 writes no ``</think>``: its end-of-turn
token or its last token acts as ``e``). Self-check: every response's step ends equal those of the
prefix-decoding oracle (:func:`verl_repro.algorithms.reference.step_ends_by_decoding`); exit status 1 if not.
It also times the two rules, and :func:`~verl_repro.algorithms.select_cuts` with the text rule, on a
``--speed-batch × --speed-length`` batch tiled from the responses (median of 5; printed, never checked).

Defaults are the settings of the committed results (benchmarks/results/bench_boundaries_smollm2.md):

    python benchmarks/bench_boundaries.py --out benchmarks/results/bench_boundaries_smollm2.md
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

import torch

from harness import finish_report, machine_line, time_calls
from verl_repro import algorithms as alg
from verl_repro.algorithms.reference import step_ends_by_decoding


def sampling_parser(description: str) -> argparse.ArgumentParser:
    """The options of :func:`smollm2_samples` (shared with bench_answer_bos.py), ``--threads`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--problems", type=int, default=6, help="bundled problems to pose (at most 6)")
    parser.add_argument("--samples-per-problem", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the report to this file")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = sampling_parser(__doc__.splitlines()[0])
    parser.add_argument("--speed-batch", type=int, default=2048)
    parser.add_argument("--speed-length", type=int, default=8192)
    return parser


def newline_ended_lines(text: str) -> int:
    return len(re.findall(r"\n+", text))


def candidate_counts(boundaries, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[int]:
    """Candidate cuts per response (all step ends with c < e; e = the last real token)."""
    return alg.candidate_counts(response_ids, response_mask, boundaries, think_end_id=-1, no_think_end="use_end").tolist()


def median_seconds(fn, repeats: int = 5) -> float:
    return time_calls(fn, repeats=repeats).median_s


def smollm2_samples(args: argparse.Namespace):
    """SmolLM2's responses to the bundled problems with the analysis tools' prompt (shared with
    bench_answer_bos.py): ``(model, tokenizer, problems, prompt rows, response_ids [N, T],
    response_mask [N, T], end ids, sampling seconds)``."""
    from verl_repro.analysis.frontend import (
        SYSTEM_PROMPT, USER_SUFFIX, bundled_problems, encode, end_token_ids, load_model, pad_token_id, render_prompt,
    )
    from verl_repro.analysis.hf_scoring import sample_responses

    torch.manual_seed(args.seed)
    model, tokenizer, _ = load_model(None, device="cpu", dtype="float32", progress=False)
    problems = bundled_problems(args.problems)
    prompts = encode(tokenizer, [render_prompt(tokenizer, p.prompt, "chat", SYSTEM_PROMPT, USER_SUFFIX) for p in problems])
    rows = [ids for ids in prompts for _ in range(args.samples_per_problem)]
    end_ids = end_token_ids(model, tokenizer)
    started = time.perf_counter()
    response_ids, response_mask = sample_responses(
        model, rows, max_new_tokens=args.max_new_tokens, temperature=args.temperature, eos_token_id=end_ids,
        pad_id=pad_token_id(tokenizer), micro_batch_size=len(rows),
    )
    return model, tokenizer, problems, rows, response_ids, response_mask, end_ids, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, problems, rows, response_ids, response_mask, end_ids, sampling_seconds = smollm2_samples(args)
    after = alg.step_boundaries(tokenizer)
    before = alg.StepBoundaries.from_token_ids(after.single_token_ids())
    counts_before = candidate_counts(before, response_ids, response_mask)
    counts_after = candidate_counts(after, response_ids, response_mask)
    counts_lines = candidate_counts(alg.step_boundaries(tokenizer, ("\n",)), response_ids, response_mask)

    lines, failures, table, unmatched_endings = [], [], [], []
    for row in range(len(rows)):
        ids = response_ids[row, : int(response_mask[row].sum())].tolist()
        text = tokenizer.decode([i for i in ids if i not in end_ids], skip_special_tokens=False)
        marked = after.mark(torch.tensor([ids]))[0].nonzero().reshape(-1).tolist()
        expected = step_ends_by_decoding(tokenizer, ids)
        if marked != expected:
            failures.append(f"response {row}: step ends {marked} != decoding oracle {expected}")
        lines.append(newline_ended_lines(text))
        unmatched_endings += [m for m in re.findall(r"(.{0,6})\n+", text) if not m.endswith((".", "?"))]
        table.append(f"| {row} | {problems[row // args.samples_per_problem].id.split(':')[-1]} | {len(ids)} | "
                     f"{lines[-1]} | {counts_before[row]} | {counts_after[row]} | {counts_lines[row]} |")

    speed_ids = response_ids.masked_fill(~response_mask.bool(), 0).reshape(-1)
    speed_ids = speed_ids.repeat(args.speed_batch * args.speed_length // max(speed_ids.numel(), 1) + 1)
    speed_ids = speed_ids[: args.speed_batch * args.speed_length].view(args.speed_batch, args.speed_length)
    seconds_before = median_seconds(lambda: before.mark(speed_ids))
    seconds_after = median_seconds(lambda: after.mark(speed_ids))
    speed_mask = torch.ones_like(speed_ids)
    speed_entropy = torch.rand(speed_ids.shape, generator=torch.Generator().manual_seed(args.seed))
    select_after = median_seconds(lambda: alg.select_cuts(speed_ids, speed_mask, speed_entropy, after, think_end_id=-1,
                                                          num_segments=10, no_think_end="use_end"))

    settings = (f"SmolLM2-135M-Instruct (embedded, float32, CPU); {len(problems)} bundled problems × "
                f"{args.samples_per_problem} samples, temperature {args.temperature}, top-p 1.0, ≤ {args.max_new_tokens} "
                f"new tokens, seed {args.seed}; sampled in {sampling_seconds:.0f} s; patterns "
                f"{', '.join(repr(p) for p in after.patterns)}")
    report = [
        "# Step boundaries on SmolLM2 responses: token by token vs decoded text",
        "",
        "`" + " ".join(["python benchmarks/bench_boundaries.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        machine_line(),
        "",
        settings,
        "",
        "| response | problem | tokens | newline-ended lines | candidates before (own token text) | candidates after (decoded text) | candidates, pattern `\\n` |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *table,
        "",
        f"per response: lines {statistics.mean(lines):.1f} (range {min(lines)}–{max(lines)}); candidates before "
        f"{statistics.mean(counts_before):.1f} (range {min(counts_before)}–{max(counts_before)}), after "
        f"{statistics.mean(counts_after):.1f} (range {min(counts_after)}–{max(counts_after)}); with the pattern `\\n` "
        f"{statistics.mean(counts_lines):.1f} (range {min(counts_lines)}–{max(counts_lines)})",
        "",
        "line ends the default patterns do not match (the 6 characters before the newline): "
        + ", ".join(repr(e) for e in unmatched_endings[:12]),
        "",
        f"single tokens whose own text ends a step: {after.single_token_ids().numel()} of {len(tokenizer)}",
        "",
        f"marking a {args.speed_batch} × {args.speed_length} batch (median of 5): token lookup {seconds_before * 1e3:.1f} ms, "
        f"decoded-text tables {seconds_after * 1e3:.1f} ms; select_cuts with the tables (k = 10) {select_after * 1e3:.1f} ms",
        "",
    ]
    return finish_report(report, failures, "step ends equal the prefix-decoding oracle on every response", args.out)


if __name__ == "__main__":
    sys.exit(main())
