"""Loop-based oracle of RePro's maths, written straight from docs/repro.md ("RePro maths", "Bad input") in float64 Python.

One response at a time, one cut at a time, Kendall's tau from ``scipy.stats.kendalltau``
(tau-b). It shares no code with the vectorized modules beside it, which the tests and
``benchmarks/bench_advantages.py`` compare against it. Step boundaries: the rule written with the
decoded text of every prefix (:func:`step_ends_by_decoding`), which ``tests/algorithms/test_segments.py``
and ``benchmarks/bench_boundaries.py`` compare the vocabulary tables against.
"""

from __future__ import annotations

import math
import statistics

from typing import Sequence

from scipy.stats import kendalltau


def select_cuts_row(ids, mask, entropy, boundary_ids, think_end_id, k, no_think_end="skip"):
    """-> (cuts: list[int], has_think_end: bool) for one response (Python lists)."""
    real = [i for i in range(len(ids)) if mask[i]]
    think_end = next((t for t in real if ids[t] == think_end_id), None)
    has_think_end = think_end is not None
    if think_end is None:
        if no_think_end == "skip" or not real:
            return [], has_think_end
        think_end = real[-1]
    candidates = []
    for t in range(think_end - 1):  # cut c = t + 1 strictly before e
        if mask[t] and ids[t] in boundary_ids:
            value = float(entropy[t + 1])
            finite = math.isfinite(value)
            # Highest entropy first; non-finite entropies last; ties: earlier cut first.
            candidates.append(((0 if finite else 1), -(value if finite else 0.0), t + 1))
    chosen = sorted(c[2] for c in sorted(candidates)[:k])
    return chosen + [think_end + 1], has_think_end


def kendall_tau_b(values):
    if len(values) < 2:
        return 0.0
    tau = kendalltau(values, list(range(len(values)))).statistic
    return 0.0 if math.isnan(tau) else float(tau)


def ema(values, beta):
    smoothed = [values[0]]
    for value in values[1:]:
        smoothed.append(beta * smoothed[-1] + (1 - beta) * value)
    return smoothed


def row_is_scorable(j_cuts, j_base, eps):
    values = [j_base, *j_cuts]
    return all(math.isfinite(v) for v in values) and j_base < -eps


def scores_row(j_cuts, j_base, w, eps=1e-6, beta=0.0):
    """S_j for one response; all zeros when J is non-finite or J_b >= -eps."""
    if not row_is_scorable(j_cuts, j_base, eps):
        return [0.0] * len(j_cuts)
    sequence = [j_base, *j_cuts]
    smoothed = ema(sequence, beta) if beta else sequence
    scores = []
    for j in range(1, len(sequence)):
        magnitude = 1.0 - math.tanh(sequence[j] / j_base)
        stability = (kendall_tau_b(smoothed[: j + 1]) + 1.0) / 2.0
        scores.append((1 - w) * magnitude + w * stability)
    return scores


def rewards_row(scores):
    return [s - (scores[j - 1] if j else 0.0) for j, s in enumerate(scores)]


def normalize(rewards_by_row, groups, mode, norm_by_std=True, epsilon=1e-6):
    """rewards_by_row: list of lists (empty for rows without process reward)."""
    if mode == "none":
        return [list(r) for r in rewards_by_row]
    if mode == "reinforce_plus_plus":
        entries = [x for r in rewards_by_row for x in r]
        if not entries:
            return [[] for _ in rewards_by_row]
        mean = sum(entries) / len(entries)
        variance = statistics.variance(entries) if len(entries) > 1 else 0.0
        return [[(x - mean) / math.sqrt(variance + epsilon) for x in r] for r in rewards_by_row]
    if mode == "reinforce_plus_plus_baseline":
        # Group baseline (mean of the group's entries; a group with one entry keeps it), then whitening.
        centered = normalize(rewards_by_row, groups, "grpo", norm_by_std=False)
        return normalize(centered, groups, "reinforce_plus_plus", epsilon=epsilon)
    out = []
    for i, row in enumerate(rewards_by_row):
        members = [b for b in range(len(rewards_by_row)) if groups[b] == groups[i]]
        if mode == "grpo":
            entries = [x for b in members for x in rewards_by_row[b]]
            if len(entries) <= 1:
                mean, std = 0.0, 1.0
            else:
                mean, std = statistics.mean(entries), statistics.stdev(entries)
            out.append([((x - mean) / (std + epsilon)) if norm_by_std else (x - mean) for x in row])
        elif mode == "rloo":
            others = [x for b in members if b != i for x in rewards_by_row[b]]
            baseline = sum(others) / len(others) if others else 0.0
            out.append([x - baseline for x in row])
        else:
            raise ValueError(mode)
    return out


def token_advantage_row(rewards, cuts, mask, gamma=1.0):
    """Return-to-go of rewards placed on token c_j - 1; zero after the last cut and off-mask."""
    length = len(mask)
    placed = [0.0] * length
    for r, c in zip(rewards, cuts):
        placed[c - 1] += r
    last = cuts[-1] - 1 if cuts else -1
    out = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        running = placed[t] + gamma * running
        out[t] = running if (t <= last and mask[t]) else 0.0
    return out


def chain(ids, masks, entropies, j_cut_fn, j_bases, groups, valid, boundary_ids, think_end_id, k, *,
          no_think_end="skip", w=0.5, eps=1e-6, beta=0.0, mode="grpo", norm_by_std=True, epsilon=1e-6, gamma=1.0,
          padding=None):
    """The whole batch, row by row. ``j_cut_fn(row, cuts) -> list of J``. Returns (adv rows, counts dict)."""
    batch = len(ids)
    padding = padding or [False] * batch
    counts = dict(rows=batch, with_process_reward=0, padding=0, empty_response=0, no_ground_truth=0,
                  no_think_end=0, nonfinite_j=0, j_base_near_zero=0, no_think_end_used_end=0, single_cut=0)
    rewards_by_row, cuts_by_row = [], []
    for b in range(batch):
        cuts, has_end = select_cuts_row(ids[b], masks[b], entropies[b], boundary_ids, think_end_id, k, no_think_end)
        j_cuts = j_cut_fn(b, cuts)
        reason = None
        if padding[b]:
            reason = "padding"
        elif not any(masks[b]):
            reason = "empty_response"
        elif not valid[b]:
            reason = "no_ground_truth"
        elif not cuts:
            reason = "no_think_end"
        elif not all(math.isfinite(v) for v in [j_bases[b], *j_cuts]):
            reason = "nonfinite_j"
        elif j_bases[b] >= -eps:
            reason = "j_base_near_zero"
        if reason:
            counts[reason] += 1
            rewards_by_row.append([])
            cuts_by_row.append([])
            continue
        counts["with_process_reward"] += 1
        counts["no_think_end_used_end"] += int(not has_end)
        counts["single_cut"] += int(len(cuts) == 1)
        rewards_by_row.append(rewards_row(scores_row(j_cuts, j_bases[b], w, eps, beta)))
        cuts_by_row.append(cuts)
    normalized = normalize(rewards_by_row, groups, mode, norm_by_std, epsilon)
    advantages = [token_advantage_row(normalized[b], cuts_by_row[b], masks[b], gamma) for b in range(batch)]
    return advantages, counts


def random_batch(seed, batch, length, *, p_think_end=0.7, p_boundary=0.3, entropy_ties=False, p_nan_entropy=0.0,
                 vocab=8, boundary_ids=(2, 3), think_end_id=7):
    """A random padded batch (numpy): ids, mask (left-aligned, like veRL), entropy.

    Padding positions are filled with adversarial ids (boundaries, ``</think>``) that must be
    ignored; a second ``</think>`` may follow the first.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    plain = [i for i in range(vocab) if i not in boundary_ids and i != think_end_id]
    lengths = rng.integers(0, length + 1, size=batch)
    ids = rng.choice(plain, size=(batch, length))
    is_boundary = rng.random((batch, length)) < p_boundary
    ids[is_boundary] = rng.choice(list(boundary_ids), size=int(is_boundary.sum()))
    mask = np.arange(length)[None, :] < lengths[:, None]
    for b in range(batch):
        if lengths[b] and rng.random() < p_think_end:
            for _ in range(rng.integers(1, 3)):
                ids[b, rng.integers(0, lengths[b])] = think_end_id
        pad = ~mask[b]
        ids[b, pad] = rng.choice([*boundary_ids, think_end_id, plain[0]], size=int(pad.sum()))
    if entropy_ties:
        entropy = rng.choice([0.0, 0.5, 1.0], size=(batch, length))
    else:
        entropy = rng.random((batch, length)) * 3
    if p_nan_entropy:
        entropy[rng.random((batch, length)) < p_nan_entropy] = np.nan
    return ids, mask, entropy


# ----------------------------------------------------------------------------- step boundaries


def step_ends_by_decoding(tokenizer, response_ids: Sequence[int], patterns: Sequence[str] = ("\n\n", ".\n", "?\n")) -> list[int]:
    """The step ends of one response, found by decoding its text prefix by prefix.

    The plain statement of the rule :meth:`verl_repro.algorithms.StepBoundaries.mark` vectorizes, and its oracle in
    tests and benchmarks (one decode per token: never in a training step). Returns the indices
    ``t`` whose decoded prefix ``y_0..y_t`` ends with a pattern, where token ``t`` wrote text, and
    whose next text-writing token does not add only newlines after which the text still ends
    with a pattern.
    """
    patterns = tuple(patterns)
    ids = list(response_ids)
    prefixes = [_decode_text(tokenizer, ids[: t + 1]) for t in range(len(ids))]
    wrote = [len(prefixes[t]) > (len(prefixes[t - 1]) if t else 0) for t in range(len(ids))]
    ends = []
    for t in range(len(ids)):
        if not (wrote[t] and prefixes[t].endswith(patterns)):
            continue
        following = next((s for s in range(t + 1, len(ids)) if wrote[s]), None)
        if following is not None:
            added = prefixes[following][len(prefixes[t]):]
            if prefixes[following].startswith(prefixes[t]) and added and not added.strip("\n") and prefixes[following].endswith(patterns):
                continue
        ends.append(t)
    return ends


def _decode_text(tokenizer, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except TypeError:  # a stand-in with decode(ids) only
        return tokenizer.decode(ids)
