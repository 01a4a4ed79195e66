"""Benchmark: RePro's batched maths (verl_repro.algorithms) against the loop oracle of the tests.

Times the whole chain a training step runs after the policy has scored J — ``select_cuts`` →
``compute_repro_process_advantage`` (scores, process rewards, GRPO normalization over entries,
token return-to-go) → ``combine_advantages`` — on a padded batch shaped like a real one
(default B=2048 responses, T=8192 tokens, k=10 cuts, a 151,936-token vocabulary, int64
``response_mask`` as veRL passes it), then the loop oracle of
``verl_repro/algorithms/reference.py`` on a row subsample, extrapolated to B rows (it is
per-row work; said so in the output). It also checks that both agree on the subsample.

    python benchmarks/bench_advantages.py [--batch 2048 --length 8192 --k 10 --repeats 5 --oracle-rows 32 --threads 1]

The defaults are the settings of the committed ``benchmarks/results/bench_advantages.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from harness import machine_line
from verl_repro.algorithms import combine_advantages, compute_repro_process_advantage, select_cuts
from verl_repro.algorithms import reference as oracle

VOCAB = 151_936
THINK_END = 151_668
GROUP_SIZE = 8




def make_batch(batch: int, length: int, seed: int = 0):
    """Responses of length T/4..T, a step boundary every ~60 tokens, </think> at ~80 % of the
    response in 90 % of rows (the rest truncated), float32 entropy, J per cut position."""
    generator = torch.Generator().manual_seed(seed)
    boundary_ids = torch.randperm(VOCAB, generator=generator)[:900].sort().values
    boundary_ids = boundary_ids[boundary_ids != THINK_END]
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    ids[torch.isin(ids, boundary_ids)] = 0
    is_boundary = torch.rand(batch, length, generator=generator) < 1 / 60
    ids[is_boundary] = boundary_ids[torch.randint(0, len(boundary_ids), (int(is_boundary.sum()),), generator=generator)]
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=generator)
    response_mask = (torch.arange(length) < lengths[:, None]).long()
    has_think_end = torch.rand(batch, generator=generator) < 0.9
    rows = torch.arange(batch)[has_think_end]
    ids[rows, (lengths[has_think_end] * 0.8).long()] = THINK_END
    ids[(ids == THINK_END) & (response_mask == 0)] = 0
    entropy = torch.rand(batch, length, generator=generator) * 4
    # J at every cut position c = 0..T (column 0 is J_b): the "model" of this benchmark.
    j_base = -(0.5 + 3 * torch.rand(batch, 1, generator=generator))
    j_table = j_base * torch.rand(batch, length + 1, generator=generator)
    j_table[:, :1] = j_base
    outcome = torch.randn(batch, 1, generator=generator).expand(batch, length) * response_mask
    group_ids = torch.arange(batch) // GROUP_SIZE
    return ids, response_mask, entropy, boundary_ids, j_table, outcome.contiguous(), group_ids


def chain(ids, response_mask, entropy, boundary_ids, j_table, outcome, group_ids, k, timings=None):
    cpu_start = time.process_time()
    start = time.perf_counter()
    cuts, cut_mask, has_think_end = select_cuts(ids, response_mask, entropy, boundary_ids, THINK_END, k)
    selected = time.perf_counter()
    cpu_selected = time.process_time()
    j_cuts = j_table.gather(1, cuts)  # stands in for scoring J through the policy: not timed
    cpu_scored = time.process_time()
    scored = time.perf_counter()
    result = compute_repro_process_advantage(
        j_cuts, j_table[:, 0], cuts, cut_mask, has_think_end, response_mask, group_ids=group_ids,
        normalization="grpo", stability_weight=0.5,
    )
    process = time.perf_counter()
    advantages = combine_advantages(outcome, result.process_advantages, response_mask, alpha=0.1)
    end = time.perf_counter()
    cpu_end = time.process_time()
    if timings is not None:
        timings.setdefault("chain, CPU time of all threads", []).append((cpu_selected - cpu_start) + (cpu_end - cpu_scored))
        timings.setdefault("select_cuts", []).append(selected - start)
        timings.setdefault("compute_repro_process_advantage", []).append(process - scored)
        timings.setdefault("combine_advantages", []).append(end - process)
        timings.setdefault("chain", []).append((selected - start) + (end - scored))
    return advantages, result


def run_oracle(oracle, ids, response_mask, entropy, boundary_ids, j_table, outcome, group_ids, k):
    ids_l, mask_l, entropy_l = ids.tolist(), response_mask.tolist(), entropy.tolist()
    j_np = j_table.double().numpy()
    boundary_set = set(boundary_ids.tolist())
    start, cpu_start = time.perf_counter(), time.process_time()
    process, counts = oracle.chain(
        ids_l, mask_l, entropy_l, lambda b, cuts: [float(j_np[b, c]) for c in cuts], j_np[:, 0].tolist(),
        group_ids.tolist(), [True] * len(ids_l), boundary_set, THINK_END, k, w=0.5, mode="grpo",
    )
    advantages = [[(a + 0.1 * p) * m for a, p, m in zip(out_row, proc_row, m_row)]
                  for out_row, proc_row, m_row in zip(outcome.tolist(), process, mask_l)]
    return time.perf_counter() - start, time.process_time() - cpu_start, advantages, counts


def build_parser() -> argparse.ArgumentParser:
    """The command line; its defaults are the settings of the committed results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--oracle-rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"bench_advantages: B={args.batch} T={args.length} k={args.k} vocab={VOCAB} group size={GROUP_SIZE}")
    print(machine_line())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    inputs = make_batch(args.batch, args.length)
    ids, response_mask = inputs[0], inputs[1]
    print(f"rows with </think>: {int((ids == THINK_END).any(1).sum())}/{args.batch}, "
          f"mean response length {response_mask.sum(1).float().mean():.0f}")

    chain(*inputs, args.k)  # warm-up
    timings: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        _, result = chain(*inputs, args.k, timings=timings)
    print(f"cuts per response: mean {result.reward_mask.sum(1).float().mean():.2f}, K = {result.reward_mask.shape[1]}; "
          f"counts: {vars(result.counts)}")
    print(f"vectorized, median of {args.repeats} (min..max):")
    for name, values in timings.items():
        print(f"  {name:34s} {statistics.median(values) * 1e3:8.1f} ms  ({min(values) * 1e3:.1f}..{max(values) * 1e3:.1f})")

    # CPU time with one thread: the work itself, least sensitive to other processes on the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        chain(*inputs, args.k, timings=single)
    torch.set_num_threads(threads)
    print(f"  {'chain, CPU time with 1 thread':34s} {statistics.median(single['chain, CPU time of all threads']) * 1e3:8.1f} ms"
          f"  (wall {statistics.median(single['chain']) * 1e3:.1f} ms)")

    rows = torch.linspace(0, args.batch - 1, args.oracle_rows).long()
    subsample = [x if x is inputs[3] else x[rows] for x in inputs]  # inputs[3]: boundary ids, shared
    subsample[-1] = torch.arange(len(rows)) // GROUP_SIZE  # whole groups inside the subsample
    oracle_seconds, oracle_cpu_seconds, oracle_advantages, oracle_counts = run_oracle(oracle, *subsample, args.k)
    vectorized, sub_result = chain(*subsample, args.k)
    difference = (vectorized.double() - torch.tensor(oracle_advantages, dtype=torch.float64)).abs().max().item()
    assert vars(sub_result.counts) == oracle_counts, (vars(sub_result.counts), oracle_counts)
    extrapolated = oracle_seconds * args.batch / len(rows)
    vectorized_seconds = statistics.median(timings["chain"])
    print(f"loop oracle: {oracle_seconds:.2f} s on {len(rows)} rows, extrapolated linearly to {args.batch} rows: "
          f"{extrapolated:.1f} s (subsample, not measured on the full batch)")
    print(f"agreement on the subsample: max |Â_vectorized - Â_oracle| = {difference:.2e} (float32 vs float64); counts equal")
    if torch.get_num_threads() > 1:
        print("(CPU time counts every thread; wall time on an idle machine is less when they all work)")
    single_cpu = statistics.median(single["chain, CPU time of all threads"])
    oracle_cpu = oracle_cpu_seconds * args.batch / len(rows)
    print(f"CPU time, one thread each: vectorized {single_cpu:.3f} s vs loop oracle {oracle_cpu:.1f} s (extrapolated): "
          f"{oracle_cpu / single_cpu:.0f}x")
    print(f"full chain: vectorized {vectorized_seconds:.3f} s vs loop oracle {extrapolated:.1f} s (extrapolated): "
          f"{extrapolated / vectorized_seconds:.0f}x faster; target <= 1 s: {'met' if vectorized_seconds <= 1.0 else 'MISSED'}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
