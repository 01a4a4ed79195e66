"""What a BOS token before the answer does to J, on SmolLM2's real responses (``repro.answer_bos``).

The same responses as ``bench_boundaries.py`` (the embedded SmolLM2-135M-Instruct answering the
bundled problems); J is scored at ``c = 0`` and after every line (``repro.boundary_patterns=["\\n"]``,
the demo's setting) up to the response's end, once with the answer's own tokens (our default) and
once with the tokenizer's BOS first (``repro.answer_bos=true``, the authors' tokenization; J then
averages over the BOS too), and, for comparison, with the BOS as context only (J over the answer's own
tokens after it, by a plain forward). Reported: the shift of J (nats) and, per response, Kendall's τ between
the two J curves (1: the BOS leaves the order of the points alone).

Self-check: every J of the first response equals a direct forward of ``prompt + response[:c] +
answer`` (float32, 1e-4); exit status 1 if not.

    python benchmarks/bench_answer_bos.py --out benchmarks/results/bench_answer_bos_smollm2.md
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import bench_boundaries
from harness import finish_report, machine_line
from verl_repro import algorithms as alg
from verl_repro.config import ReproConfig


def build_parser() -> argparse.ArgumentParser:
    return bench_boundaries.sampling_parser(__doc__.splitlines()[0])


def direct_j(model, prompt: list[int], response: list[int], cut: int, answer: list[int], scored: int | None = None) -> float:
    """J by one plain forward of ``prompt + response[:cut] + answer``, averaged over the last
    ``scored`` answer tokens (default: all of them)."""
    scored = len(answer) if scored is None else scored
    ids = torch.tensor([prompt + response[:cut] + answer])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    return float(log_probs[-scored:].gather(1, ids[0, -scored:, None]).mean())


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import kendalltau

    from verl_repro.scoring import score_j

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, problems, rows, response_ids, response_mask, end_ids, _ = bench_boundaries.smollm2_samples(args)
    reasoning = response_mask & ~torch.isin(response_ids, torch.tensor(end_ids))
    boundaries = alg.step_boundaries(tokenizer, ("\n",))
    cuts, cut_mask, _ = alg.select_cuts(response_ids, reasoning, torch.zeros(response_ids.shape), boundaries, think_end_id=-1,
                                        num_segments=max(response_ids.shape[1], 1), no_think_end="use_end")
    truths = [problems[row // args.samples_per_problem].ground_truth for row in range(len(rows))]
    curves, answers = {}, {}
    for answer_bos in (False, True):
        config = ReproConfig(answer_bos=answer_bos).validate()
        answers[answer_bos] = config.answer_token_ids(tokenizer, truths)
        j_base, j_cuts, _ = score_j(model, rows, response_ids, cuts, cut_mask, answers[answer_bos])
        curves[answer_bos] = [[float(j_base[b]), *j_cuts[b][cut_mask[b]].tolist()] for b in range(len(rows))]

    failures = []
    first = response_ids[0, : int(response_mask[0].sum())].tolist()
    for answer_bos, curve in curves.items():
        for cut, j in zip([0, *cuts[0][cut_mask[0]].tolist()], curve[0]):
            expected = direct_j(model, rows[0], first, cut, answers[answer_bos][0])
            if abs(j - expected) > 1e-4:
                failures.append(f"answer_bos={answer_bos}, cut {cut}: J {j:.6f} vs a direct forward {expected:.6f}")

    # The other reading of "a BOS before the answer": the BOS as context only, J over the answer's own
    # tokens after it (a plain forward per point).
    context = []
    for row in range(len(rows)):
        response = response_ids[row, : int(response_mask[row].sum())].tolist()
        context.append([direct_j(model, rows[row], response, cut, answers[True][row], scored=len(answers[False][row]))
                        for cut in [0, *cuts[row][cut_mask[row]].tolist()]])
    context_shifts = [c - p for plain, ctx in zip(curves[False], context) for p, c in zip(plain, ctx)]
    context_taus = [float(kendalltau(plain, ctx).statistic) for plain, ctx in zip(curves[False], context) if len(plain) >= 3]

    shifts = [b - p for plain, bos in zip(curves[False], curves[True]) for p, b in zip(plain, bos)]
    taus = [float(kendalltau(plain, bos).statistic) for plain, bos in zip(curves[False], curves[True]) if len(plain) >= 3]
    table = [f"| {row} | {len(curves[False][row])} | {statistics.median(b - p for p, b in zip(curves[False][row], curves[True][row])):+.2f} | "
             + (f"{kendalltau(curves[False][row], curves[True][row]).statistic:+.2f}" if len(curves[False][row]) >= 3 else "—") + " |"
             for row in range(len(rows))]
    report = [
        "# J with and without a BOS before the answer, on SmolLM2 responses",
        "",
        "`" + " ".join(["python benchmarks/bench_answer_bos.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        machine_line(),
        "",
        f"SmolLM2-135M-Instruct (embedded, float32, CPU); {len(problems)} bundled problems × {args.samples_per_problem} samples, "
        f"temperature {args.temperature}, top-p 1.0, ≤ {args.max_new_tokens} new tokens, seed {args.seed}; J at c = 0 and after "
        f"every line; answer `\\boxed{{ground truth}}`, BOS = {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})",
        "",
        "| response | J points | median ΔJ (BOS − plain, nats) | Kendall τ(plain, BOS) |",
        "|---:|---:|---:|---:|",
        *table,
        "",
        f"over all {len(shifts)} points: ΔJ median {statistics.median(shifts):+.2f} nats, median |ΔJ| "
        f"{statistics.median(abs(d) for d in shifts):.2f}, range {min(shifts):+.2f} … {max(shifts):+.2f}; Kendall τ over "
        f"{len(taus)} responses with ≥ 3 points: median {statistics.median(taus):+.2f}, range {min(taus):+.2f} … {max(taus):+.2f}",
        "",
        f"the BOS as context only (J over the answer's own tokens after it): ΔJ median {statistics.median(context_shifts):+.2f} nats, "
        f"median |ΔJ| {statistics.median(abs(d) for d in context_shifts):.2f}, range {min(context_shifts):+.2f} … {max(context_shifts):+.2f}; "
        f"Kendall τ median {statistics.median(context_taus):+.2f}, range {min(context_taus):+.2f} … {max(context_taus):+.2f}",
        "",
    ]
    return finish_report(report, failures, "J of the first response equals a direct forward in both tokenizations", args.out)


if __name__ == "__main__":
    sys.exit(main())
