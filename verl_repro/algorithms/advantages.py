"""From per-cut process rewards to token advantages (docs/repro.md, "RePro maths").

Process rewards live on *reward entries* ``[B, K]`` (one per valid cut). They are normalized over
entries — per prompt group (GRPO), leave-one-response-out within the group (RLOO), over the
whole batch (REINFORCE++), or group-centred then batch-whitened (REINFORCE++ with baseline) — then placed on token ``c_j - 1`` and summed from the right
(return-to-go) into a token process advantage ``Ã [B, T]``, zero after the end-of-think cut.
The final advantage is ``Â = A + α·Ã`` under ``response_mask``.

:func:`compute_repro_process_advantage` chains scores → rewards → normalization → ``Ã`` for
the estimators and returns the fallback counts the trainer logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch

from .repro import DEFAULT_J_BASE_EPS, _check_cut_mask, invalid_j_rows, process_rewards, repro_scores

NORMALIZATIONS: tuple[str, ...] = ("grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "none")


def group_ids_from_uids(uids, batch: Optional[int] = None) -> torch.Tensor:
    """``[B] long`` group index from veRL's ``uid`` column (a numpy object array of strings, or
    any sequence of hashables): equal uids get equal ids, numbered in order of first appearance.

    ``batch``, when given, is the number of responses the uids must cover. Raises ``ValueError``
    for ``uids=None`` (an estimator called without veRL's ``index``) or a length mismatch.
    """
    if uids is None:
        raise ValueError("group normalization needs veRL's uid index (index=None)")
    uids = list(uids)
    if batch is not None and len(uids) != batch:
        raise ValueError(f"index has {len(uids)} entries for {batch} responses")
    index: dict = {}
    return torch.tensor([index.setdefault(uid, len(index)) for uid in uids], dtype=torch.long)


def _group_statistics(values: torch.Tensor, entry_mask: torch.Tensor, group_ids: torch.Tensor):
    """Sums and counts of the masked entries per group and per row.

    ``values`` / ``entry_mask`` are ``[B, K]``; ``group_ids`` is ``[B]`` long (any values).
    Returns ``group_sum [G]``, ``group_count [G]``, ``group_index [B]`` (0..G-1), ``G``,
    ``row_sum [B]``, ``row_count [B]``.
    """
    if group_ids.shape != values.shape[:1]:
        raise ValueError(f"group_ids must have shape [{values.shape[0]}], got {tuple(group_ids.shape)}")
    group_index = torch.unique(group_ids.to(values.device), return_inverse=True)[1]
    num_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    masked = torch.where(entry_mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    row_sum = masked.sum(dim=1)
    row_count = entry_mask.sum(dim=1).to(values.dtype)
    group_sum = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, row_sum)
    group_count = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, row_count)
    return group_sum, group_count, group_index, num_groups, row_sum, row_count


def group_normalize_process_rewards(
    rewards: torch.Tensor,
    cut_mask: torch.Tensor,
    group_ids: torch.Tensor,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """GRPO form: ``r' = (r - mean_g) / (std_g + ε)`` over the reward *entries* of group ``g``.

    Args:
        rewards: ``[B, K] float`` — process rewards (:func:`process_rewards`).
        cut_mask: ``[B, K] bool`` — entries that exist (rows without process reward: all False).
        group_ids: ``[B] long`` — prompt group (veRL's ``uid``, mapped to integers).
        norm_adv_by_std_in_grpo: divide by the std (veRL's flag; False is Dr.GRPO's centering only).
        epsilon: added to the std, as veRL's GRPO does.

    Returns:
        ``[B, K]`` — 0 on padding. ``std`` is the unbiased std over all entries of the group;
        a group with a single entry keeps it as is (mean 0, std 1), veRL's convention for a
        group of one; a group without entries has nothing to normalize.
    """
    cut_mask = cut_mask.bool()
    group_sum, group_count, group_index, num_groups, _, _ = _group_statistics(rewards, cut_mask, group_ids)
    mean = group_sum / group_count.clamp_min(1)
    centered = torch.where(cut_mask, rewards - mean[group_index].unsqueeze(1), 0.0)
    squares = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    squares.index_add_(0, group_index, centered.square().sum(dim=1))
    std = torch.sqrt(squares / (group_count - 1).clamp_min(1))
    single = group_count <= 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    normalized = rewards - mean[group_index].unsqueeze(1)
    if norm_adv_by_std_in_grpo:
        normalized = normalized / (std[group_index].unsqueeze(1) + epsilon)
    return torch.where(cut_mask, normalized, 0.0)


def rloo_process_rewards(rewards: torch.Tensor, cut_mask: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO form: ``r'_{i,j} = r_{i,j} - mean{ r_{i',j'} : i' ≠ i in the group of i }``.

    The baseline of response ``i`` is the mean over the reward entries of the *other* responses
    of its group (leave one response out, so the baseline never depends on ``i``'s own steps —
    the same reason veRL's RLOO leaves out the response's own outcome score). When no other
    response of the group has an entry the baseline is 0 (veRL's convention for a group of one).

    Shapes as in :func:`group_normalize_process_rewards`; returns ``[B, K]``, 0 on padding.
    """
    cut_mask = cut_mask.bool()
    group_sum, group_count, group_index, _, row_sum, row_count = _group_statistics(rewards, cut_mask, group_ids)
    others_sum = group_sum[group_index] - row_sum
    others_count = group_count[group_index] - row_count
    baseline = torch.where(others_count > 0, others_sum / others_count.clamp_min(1), 0.0)
    return torch.where(cut_mask, rewards - baseline.unsqueeze(1), 0.0)


def batch_whiten_process_rewards(rewards: torch.Tensor, cut_mask: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ form: ``r' = (r - mean) / sqrt(var + ε)`` over every entry of the batch.

    ``var`` is unbiased, as in veRL's ``masked_whiten``; with fewer than two entries it is taken
    as 0 (veRL raises there — a batch with one process reward must not stop training).
    Shapes as in :func:`group_normalize_process_rewards`; returns ``[B, K]``, 0 on padding.
    """
    cut_mask = cut_mask.bool()
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    count = cut_mask.sum()
    mean = torch.where(cut_mask, rewards, zero).sum() / count.clamp_min(1)
    centered = torch.where(cut_mask, rewards - mean, zero)
    variance = torch.where(count > 1, centered.square().sum() / (count - 1).clamp_min(1), zero)
    return centered * torch.rsqrt(variance + epsilon)


def group_baseline_whiten_process_rewards(
    rewards: torch.Tensor, cut_mask: torch.Tensor, group_ids: torch.Tensor, epsilon: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++-with-baseline form: minus the group's mean entry, then whitened over the batch.

    veRL's ``reinforce_plus_plus_baseline`` does this to outcome scores: subtract the prompt
    group's mean (a group of one keeps its score), then whiten. Here over reward entries: the group
    mean is :func:`group_normalize_process_rewards` without the std division, the whitening
    :func:`batch_whiten_process_rewards`. Shapes as there; returns ``[B, K]``, 0 on padding.
    """
    centered = group_normalize_process_rewards(rewards, cut_mask, group_ids, norm_adv_by_std_in_grpo=False)
    return batch_whiten_process_rewards(centered, cut_mask, epsilon)


def normalize_process_rewards(
    rewards: torch.Tensor,
    cut_mask: torch.Tensor,
    normalization: str,
    group_ids: Optional[torch.Tensor] = None,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """Dispatch on ``normalization`` in :data:`NORMALIZATIONS`.

    ``group_ids`` (``[B] long``) is required for ``grpo``, ``rloo`` and ``reinforce_plus_plus_baseline``. ``none`` returns the raw
    rewards (``repro_ppo``: they go into the token rewards before GAE). ``epsilon`` is the GRPO
    std guard or the REINFORCE++ variance guard.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"process-reward normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization in ("grpo", "rloo", "reinforce_plus_plus_baseline") and group_ids is None:
        raise ValueError(f"normalization {normalization!r} needs group_ids (veRL's uid as a [B] LongTensor)")
    if normalization == "grpo":
        return group_normalize_process_rewards(rewards, cut_mask, group_ids, norm_adv_by_std_in_grpo, epsilon)
    if normalization == "rloo":
        return rloo_process_rewards(rewards, cut_mask, group_ids)
    if normalization == "reinforce_plus_plus":
        return batch_whiten_process_rewards(rewards, cut_mask, epsilon)
    if normalization == "reinforce_plus_plus_baseline":
        return group_baseline_whiten_process_rewards(rewards, cut_mask, group_ids, epsilon)
    return torch.where(cut_mask.bool(), rewards, 0.0)


def _reward_token_positions(cuts: torch.Tensor, cut_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Token index ``c_j - 1`` of each reward entry (0 at padding); raises on cuts outside ``1..T``
    or not strictly ascending."""
    if bool((cut_mask & ((cuts < 1) | (cuts > length))).any()):
        raise ValueError(f"valid cuts must lie in 1..{length} (the response length)")
    if cuts.shape[1] > 1 and bool((cut_mask[:, 1:] & (cuts[:, 1:] <= cuts[:, :-1])).any()):
        raise ValueError("valid cuts must be strictly ascending, as select_cuts returns")
    return torch.where(cut_mask, cuts - 1, 0)


def _keep_mask(response_mask: torch.Tensor, reward_tokens: torch.Tensor, cut_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: real token at or before the last reward token (the ``</think>`` token)."""
    last_reward_token = torch.where(cut_mask, reward_tokens, -1).amax(dim=1)
    keep = torch.arange(response_mask.shape[1], device=response_mask.device) <= last_reward_token.unsqueeze(1)
    keep &= response_mask.bool()
    return keep


def place_process_rewards(
    rewards: torch.Tensor, cuts: torch.Tensor, cut_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Token-level process rewards ``[B, T]``: ``r_j`` on token ``c_j - 1``, 0 elsewhere.

    For ``repro_ppo``, where ``α ·`` this is added to veRL's ``token_level_rewards`` before GAE.
    ``rewards`` / ``cuts`` / ``cut_mask`` are ``[B, K]``, ``response_mask`` ``[B, T]``; a reward
    whose token is masked out is dropped with it.
    """
    cut_mask = _check_cut_mask(cut_mask, rewards.shape)
    length = response_mask.shape[1]
    token_rewards = torch.zeros(response_mask.shape, dtype=rewards.dtype, device=rewards.device)
    if rewards.numel() and length:
        reward_tokens = _reward_token_positions(cuts, cut_mask, length)
        token_rewards.scatter_add_(1, reward_tokens, torch.where(cut_mask, rewards, 0.0))
        token_rewards.mul_(response_mask.bool())
    return token_rewards


def token_process_advantage(
    rewards: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Token process advantage ``Ã_t = Σ_{s >= t} γ^{s-t} r'_s`` with ``r'_j`` on token ``c_j - 1``.

    Args:
        rewards: ``[B, K] float`` — (normalized) process rewards; padding entries ignored.
        cuts: ``[B, K] long`` — strictly ascending cut positions (prefix lengths) in ``1..T``.
        cut_mask: ``[B, K] bool`` — valid entries, a prefix of each row.
        response_mask: ``[B, T]`` — tokens outside it get 0.
        gamma: discount in ``(0, 1]``; the distance counts token positions (masked tokens
            inside a response, which single-turn responses do not have, still count).

    Returns:
        ``[B, T]`` in ``rewards``' dtype — zero after the last cut (``e + 1``: nothing after
        ``</think>`` is credited) and on masked tokens.

    Rewards sit on only ``K`` tokens, so ``Ã`` is piecewise: token ``t`` in segment ``j``
    (``c_{j-1} <= t <= c_j - 1``) has ``Ã_t = γ^{c_j - 1 - t} · G_j`` with the return at the
    reward token ``G_j = Σ_{i >= j} γ^{c_i - c_j} r'_i`` (a ``[B, K, K]`` product). The ``[B, T]``
    work is one scatter of the jumps ``G_j - G_{j-1}`` at segment starts and one in-place cumsum
    (plus one more for the distances when ``γ < 1``) — no reverse scan over ``T``.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"repro.gamma must be in (0, 1], got {gamma!r}")
    cut_mask = _check_cut_mask(cut_mask, rewards.shape)
    batch, length = response_mask.shape
    dtype = rewards.dtype
    advantage = torch.zeros((batch, length), dtype=dtype, device=rewards.device)
    if rewards.numel() == 0 or length == 0:
        return advantage
    reward_tokens = _reward_token_positions(cuts, cut_mask, length)
    rewards = torch.where(cut_mask, rewards, 0.0)
    num_entries = rewards.shape[1]
    entry = torch.arange(num_entries, device=rewards.device)
    take = cut_mask.unsqueeze(1) & (entry.unsqueeze(1) <= entry.unsqueeze(0))  # [b, j, i]: i >= j, valid
    if gamma == 1.0:
        weights = take.to(dtype)
    else:
        distance = (reward_tokens.unsqueeze(1) - reward_tokens.unsqueeze(2)).clamp_min(0).to(dtype)
        weights = torch.where(take, torch.pow(gamma, distance), 0.0)
    returns = (weights @ rewards.unsqueeze(2)).squeeze(2)  # G_j, [B, K]

    # Segment j starts right after the previous reward token (segment 1 at token 0).
    segment_start = torch.nn.functional.pad(reward_tokens[:, :-1] + 1, (1, 0))
    segment_start = torch.where(cut_mask, segment_start, 0)
    jumps = torch.where(cut_mask, returns - torch.nn.functional.pad(returns[:, :-1], (1, 0)), 0.0)
    advantage.scatter_add_(1, segment_start, jumps)
    advantage.cumsum_(dim=1)
    if gamma != 1.0:
        segment_end = torch.zeros_like(advantage)
        end_jumps = torch.where(cut_mask, reward_tokens - torch.nn.functional.pad(reward_tokens[:, :-1], (1, 0)), 0)
        segment_end.scatter_add_(1, segment_start, end_jumps.to(dtype))
        segment_end.cumsum_(dim=1)
        # γ^(end - t) in place; distances past the last reward token are clamped (masked below).
        segment_end.sub_(torch.arange(length, device=rewards.device, dtype=dtype)).clamp_min_(0)
        advantage.mul_(segment_end.mul_(math.log(gamma)).exp_())
    # The cumsum leaves rounding residue after the last reward token: zero it exactly.
    advantage.mul_(_keep_mask(response_mask, reward_tokens, cut_mask))
    return advantage


def combine_advantages(
    outcome_advantages: torch.Tensor, process_advantages: torch.Tensor, response_mask: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Final advantage ``Â = (A + α·Ã) · response_mask`` — all ``[B, T]``; ``α = repro.alpha >= 0``."""
    if alpha < 0:
        raise ValueError(f"repro.alpha must be >= 0, got {alpha!r}")
    combined = outcome_advantages.add(process_advantages.to(outcome_advantages.dtype), alpha=alpha)
    return combined.mul_(response_mask)


@dataclass
class ReproFallbackCounts:
    """Rows by outcome; each row counted once, under the first reason that applies (in field order).

    ``rows = with_process_reward + padding + empty_response + no_ground_truth + no_think_end
    + nonfinite_j + j_base_near_zero``. ``no_think_end_used_end`` and ``single_cut`` are
    informational subsets of ``with_process_reward``.
    """

    rows: int = 0
    with_process_reward: int = 0
    padding: int = 0
    """Rows the trainer added to balance the batch (``tags["is_padding"]``): ignored."""
    empty_response: int = 0
    """No real response token."""
    no_ground_truth: int = 0
    """``valid`` was False: empty / missing / unparseable ground truth or empty rendered answer."""
    no_think_end: int = 0
    """No ``</think>`` under ``no_think_end="skip"`` (truncated response)."""
    nonfinite_j: int = 0
    """NaN / ±inf in ``J_b`` or a ``J_j``."""
    j_base_near_zero: int = 0
    """``J_b >= -eps``: the answer is already certain without reasoning; magnitude undefined."""
    no_think_end_used_end: int = 0
    """No ``</think>`` but scored with the response end as ``e`` (``no_think_end="use_end"``)."""
    single_cut: int = 0
    """No boundary before ``</think>``: only the ``e + 1`` cut."""

    def as_metrics(self, prefix: str = "repro/") -> dict[str, float]:
        return {f"{prefix}{f.name}": float(getattr(self, f.name)) for f in fields(self)}


@dataclass
class ReproProcessAdvantage:
    """Output of :func:`compute_repro_process_advantage` (``B`` rows, ``K`` cuts, ``T`` tokens)."""

    process_advantages: torch.Tensor
    """``[B, T]`` — ``Ã``, masked by ``response_mask``; 0 for rows without process reward."""
    scores: torch.Tensor
    """``[B, K]`` — ``S_j`` (0 where not scored)."""
    process_rewards: torch.Tensor
    """``[B, K]`` — raw ``r_j`` before normalization."""
    normalized_rewards: torch.Tensor
    """``[B, K]`` — ``r'_j`` after the chosen normalization."""
    reward_mask: torch.Tensor
    """``[B, K] bool`` — reward entries that exist (``cut_mask`` of rows with process reward)."""
    has_process_reward: torch.Tensor
    """``[B] bool``."""
    counts: ReproFallbackCounts
    token_rewards: Optional[torch.Tensor] = None
    """``[B, T]`` — ``r'_j`` placed on token ``c_j - 1`` (only when ``return_token_rewards``)."""


def compute_repro_process_advantage(
    j_cuts: torch.Tensor,
    j_base: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    has_think_end: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    group_ids: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    padding: Optional[torch.Tensor] = None,
    normalization: str = "grpo",
    stability_weight: float = 0.5,
    stability_ema: float | None = None,
    j_base_eps: float = DEFAULT_J_BASE_EPS,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
    gamma: float = 1.0,
    return_token_rewards: bool = False,
) -> ReproProcessAdvantage:
    """The batched RePro chain after scoring: scores → process rewards → normalization → ``Ã``.

    Args:
        j_cuts: ``[B, K] float`` — J at each cut, as scored by the policy (padding ignored).
        j_base: ``[B] float`` — ``J_b``.
        cuts, cut_mask, has_think_end: from :func:`select_cuts` (``[B, K]``, ``[B, K]``, ``[B]``).
        response_mask: ``[B, T]``.
        group_ids: ``[B] long`` — prompt groups (veRL ``uid``); needed by ``grpo`` / ``rloo``.
        valid: ``[B] bool`` — False where the ground truth is empty / missing / unparseable or its
            rendered answer has no tokens; default all True.
        padding: ``[B] bool`` — batch-balancing padding rows; default none.
        normalization: one of :data:`NORMALIZATIONS` (see :func:`normalize_process_rewards`).
        stability_weight, stability_ema, j_base_eps: see :func:`repro_scores`.
        norm_adv_by_std_in_grpo, epsilon: see :func:`normalize_process_rewards`.
        gamma: discount of :func:`token_process_advantage`.
        return_token_rewards: also return ``r'`` placed on tokens (``repro_ppo``).

    Rows without process reward (see :class:`ReproFallbackCounts`) get ``Ã = 0`` and contribute
    no entries to the group / batch statistics; nothing raises on bad data.
    """
    batch = j_cuts.shape[0]
    device = j_cuts.device
    cut_mask = _check_cut_mask(cut_mask, j_cuts.shape)
    if cuts.shape != j_cuts.shape:
        raise ValueError(f"cuts must have shape {tuple(j_cuts.shape)}, got {tuple(cuts.shape)}")
    if response_mask.shape[0] != batch:
        raise ValueError(f"response_mask must have {batch} rows, got {tuple(response_mask.shape)}")
    false = torch.zeros(batch, dtype=torch.bool, device=device)
    valid = ~false if valid is None else valid.to(device=device, dtype=torch.bool)
    padding = false if padding is None else padding.to(device=device, dtype=torch.bool)
    has_think_end = has_think_end.to(device=device, dtype=torch.bool)

    response_mask = response_mask.bool()  # converted once for the [B, T] steps below
    has_tokens = response_mask.any(dim=1)
    has_cuts = cut_mask.any(dim=1)
    nonfinite, base_near_zero = invalid_j_rows(j_cuts, j_base, cut_mask, j_base_eps)
    # Fallback reasons in the order of ReproFallbackCounts: each row lands in the first that applies.
    reasons = [padding, ~has_tokens, ~valid, ~has_cuts, nonfinite, base_near_zero]
    remaining = torch.ones(batch, dtype=torch.bool, device=device)
    reason_counts = []
    for reason in reasons:
        hit = remaining & reason
        reason_counts.append(hit)
        remaining &= ~reason
    has_process_reward = remaining
    reward_mask = cut_mask & has_process_reward.unsqueeze(1)

    scores = repro_scores(j_cuts, j_base, reward_mask, stability_weight, j_base_eps, stability_ema=stability_ema)
    rewards = process_rewards(scores, reward_mask)
    normalized = normalize_process_rewards(rewards, reward_mask, normalization, group_ids, norm_adv_by_std_in_grpo, epsilon)
    advantages = token_process_advantage(normalized, cuts, reward_mask, response_mask, gamma)
    token_rewards = place_process_rewards(normalized, cuts, reward_mask, response_mask) if return_token_rewards else None

    totals = torch.stack([hit.sum() for hit in reason_counts]
                         + [has_process_reward.sum(),
                            (has_process_reward & ~has_think_end).sum(),
                            (has_process_reward & (reward_mask.sum(dim=1) == 1)).sum()]).tolist()
    counts = ReproFallbackCounts(
        rows=batch,
        padding=totals[0],
        empty_response=totals[1],
        no_ground_truth=totals[2],
        no_think_end=totals[3],
        nonfinite_j=totals[4],
        j_base_near_zero=totals[5],
        with_process_reward=totals[6],
        no_think_end_used_end=totals[7],
        single_cut=totals[8],
    )
    return ReproProcessAdvantage(
        process_advantages=advantages,
        scores=scores,
        process_rewards=rewards,
        normalized_rewards=normalized,
        reward_mask=reward_mask,
        has_process_reward=has_process_reward,
        counts=counts,
        token_rewards=token_rewards,
    )
