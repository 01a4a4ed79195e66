"""RePro scores and process rewards from the surrogate objective J (docs/repro.md, "RePro maths").

``J(c)`` is the mean log-prob of the ground-truth answer tokens appended after the first ``c``
response tokens; ``J_b = J(0)``. For cuts ``j = 1..m`` of one response:

* magnitude ``S_magn_j = 1 - tanh(J_j / J_b)`` — in ``(0, 1]``; 1 when the answer became certain;
* stability ``S_stab_j = (τ_j + 1) / 2`` — ``τ_j`` is Kendall's tau-b between
  ``[J_b, J_1, .., J_j]`` and their step indices ``[0, 1, .., j]`` (1: J rose monotonically);
* ``S_j = (1 - w)·S_magn_j + w·S_stab_j`` and process rewards ``r_1 = S_1``, ``r_j = S_j - S_{j-1}``.

All rows and prefixes at once: τ for every prefix comes from one ``[B, K+1, K+1]`` pairwise sign
tensor and cumulative sums, no loop over rows or cuts. Work is done in float64 for float64 inputs
and float32 otherwise (J tensors are ``[B, K]``, tiny next to a training step).
"""

from __future__ import annotations

import torch

DEFAULT_J_BASE_EPS = 1e-6


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_cut_mask(cut_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if cut_mask.shape != shape:
        raise ValueError(f"cut_mask must have shape {tuple(shape)}, got {tuple(cut_mask.shape)}")
    cut_mask = cut_mask.bool()
    if shape[1] > 1 and bool((cut_mask[:, 1:] & ~cut_mask[:, :-1]).any()):
        raise ValueError("cut_mask must mark a prefix of each row (valid cuts first), as select_cuts returns")
    return cut_mask


def invalid_j_rows(
    j_cuts: torch.Tensor, j_base: torch.Tensor, cut_mask: torch.Tensor, eps: float = DEFAULT_J_BASE_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose J cannot be scored (docs/repro.md, "Bad input": their process reward is 0, counted in metrics).

    Args:
        j_cuts: ``[B, K] float`` — J at each cut; padding entries are ignored.
        j_base: ``[B] float`` — ``J_b``.
        cut_mask: ``[B, K] bool`` — valid cuts.
        eps: ``J_b >= -eps`` (a log-prob mean that is ~0 or positive) leaves the magnitude undefined.

    Returns:
        nonfinite: ``[B] bool`` — NaN/±inf in ``J_b`` or in a valid ``J_j``.
        base_near_zero: ``[B] bool`` — finite ``J_b >= -eps`` (exclusive of ``nonfinite``).
    """
    cut_mask = cut_mask.bool()
    nonfinite = ~torch.isfinite(j_base) | (cut_mask & ~torch.isfinite(j_cuts)).any(dim=1)
    base_near_zero = ~nonfinite & (j_base >= -eps)
    return nonfinite, base_near_zero


def smooth_ema(values: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """Causal EMA along dim 1: ``s_0 = x_0``, ``s_i = β·s_{i-1} + (1-β)·x_i``.

    Args:
        values: ``[B, L] float``; entries where ``valid`` is False are treated as 0 (they only
            follow the valid prefix, so they never reach a valid output).
        valid: ``[B, L] bool`` — a prefix of each row.
        beta: in ``[0, 1)``; 0 returns ``values`` unchanged.

    Written as one ``[L, L]`` lower-triangular weight matrix so there is no loop over L.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"repro.stability_ema must be in [0, 1), got {beta!r}")
    values = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if beta == 0.0:
        return values
    length = values.shape[1]
    index = torch.arange(length, device=values.device)
    lag = (index.unsqueeze(1) - index.unsqueeze(0)).to(values.dtype)  # [i, m] = i - m
    weights = torch.where(lag >= 0, (1.0 - beta) * beta**lag, torch.zeros((), dtype=values.dtype, device=values.device))
    # The first element starts the average with full weight: its total weight is β^i.
    weights[:, 0] = beta ** index.to(values.dtype)
    return values @ weights.T


def prefix_kendall_tau(sequence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b of every prefix of ``sequence`` against its indices.

    Args:
        sequence: ``[B, L] float`` — ``[J_b, J_1, .., J_{L-1}]`` per row.
        valid: ``[B, L] bool`` — a prefix of each row.

    Returns:
        ``[B, L] float`` — entry ``n`` is tau-b of ``sequence[:, :n+1]`` vs ``0..n``. The indices
        never tie, so ``τ = (C - D) / sqrt(n0 · (n0 - n_ties))`` with ``n0 = n(n+1)/2`` pairs and
        ``n_ties`` pairs of equal values; 0 when every value is equal (and at ``n = 0``).
    """
    # pair_sign[b, p, q] = sign(x_q - x_p) for p < q: +1 concordant, -1 discordant, 0 tied.
    difference = sequence.unsqueeze(1) - sequence.unsqueeze(2)
    earlier = torch.ones(sequence.shape[1], sequence.shape[1], dtype=torch.bool, device=sequence.device).triu(1)
    pair_valid = earlier & valid.unsqueeze(1) & valid.unsqueeze(2)
    concordance = torch.where(pair_valid, torch.sign(difference), 0).sum(dim=1).cumsum(dim=1)
    ties = (pair_valid & (difference == 0)).sum(dim=1).cumsum(dim=1).to(sequence.dtype)
    count = torch.arange(sequence.shape[1], device=sequence.device, dtype=sequence.dtype)
    pairs = count * (count + 1) / 2
    denominator = torch.sqrt(pairs * (pairs - ties))
    return torch.where(denominator > 0, concordance / denominator.clamp_min(1e-30), 0.0)


def magnitude_scores(j_cuts: torch.Tensor, j_base: torch.Tensor, eps: float = DEFAULT_J_BASE_EPS) -> torch.Tensor:
    """``S_magn = 1 - tanh(J_j / J_b)`` — ``[B, K]``; ``J_b`` is clamped to ``<= -eps`` (the
    caller zeroes rows with ``J_b >= -eps``, see :func:`invalid_j_rows`)."""
    j_base = j_base.clamp(max=-eps)
    return 1.0 - torch.tanh(j_cuts / j_base.unsqueeze(1))


def stability_scores(
    j_cuts: torch.Tensor, j_base: torch.Tensor, cut_mask: torch.Tensor, stability_ema: float | None = None
) -> torch.Tensor:
    """``S_stab_j = (τ_j + 1) / 2`` — ``[B, K]``; τ over ``[J_b, J_1..J_j]`` (EMA-smoothed first
    when ``stability_ema`` is set: the reference code smooths, the paper's formula does not)."""
    sequence = torch.cat([j_base.unsqueeze(1), j_cuts], dim=1)
    valid = torch.cat([torch.ones_like(cut_mask[:, :1]), cut_mask], dim=1)
    sequence = smooth_ema(sequence, valid, float(stability_ema or 0.0))
    tau = prefix_kendall_tau(sequence, valid)[:, 1:]
    return (tau + 1.0) / 2.0


def repro_scores(
    j_cuts: torch.Tensor,
    j_base: torch.Tensor,
    cut_mask: torch.Tensor,
    stability_weight: float,
    eps: float = DEFAULT_J_BASE_EPS,
    *,
    stability_ema: float | None = None,
) -> torch.Tensor:
    """RePro's combined score ``S_j = (1-w)·S_magn_j + w·S_stab_j`` for every cut.

    Args:
        j_cuts: ``[B, K] float`` — ``J`` at each cut (mean answer-token log-prob, <= 0).
        j_base: ``[B] float`` — ``J_b = J(0)``.
        cut_mask: ``[B, K] bool`` — valid cuts, a prefix of each row (from :func:`select_cuts`).
        stability_weight: ``w`` in ``[0, 1]``; 0 is magnitude-only.
        eps: ``J_b`` guard (``repro.j_base_eps``).
        stability_ema: EMA factor in ``[0, 1)`` applied to the J sequence before τ; None/0: off.

    Returns:
        ``[B, K]`` float32 (float64 for float64 inputs) — 0 at padding and on rows that
        :func:`invalid_j_rows` rejects (non-finite J, ``J_b ≈ 0``), never NaN.
    """
    if not 0.0 <= stability_weight <= 1.0:
        raise ValueError(f"repro.stability_weight must be in [0, 1], got {stability_weight!r}")
    cut_mask = _check_cut_mask(cut_mask, j_cuts.shape)
    if j_base.shape != j_cuts.shape[:1]:
        raise ValueError(f"j_base must have shape [{j_cuts.shape[0]}], got {tuple(j_base.shape)}")
    dtype = _compute_dtype(j_cuts, j_base)
    j_cuts, j_base = j_cuts.to(dtype), j_base.to(dtype)
    nonfinite, base_near_zero = invalid_j_rows(j_cuts, j_base, cut_mask, eps)
    usable = cut_mask & ~(nonfinite | base_near_zero).unsqueeze(1)
    # Sanitize first so a bad row cannot leak NaN into the pairwise tensors or the EMA matmul.
    zero = torch.zeros((), dtype=dtype, device=j_cuts.device)
    j_cuts = torch.where(usable, j_cuts, zero)
    j_base = torch.where(usable.any(dim=1), j_base, -1.0)

    scores = (1.0 - stability_weight) * magnitude_scores(j_cuts, j_base, eps)
    if stability_weight > 0:
        scores = scores + stability_weight * stability_scores(j_cuts, j_base, usable, stability_ema)
    return torch.where(usable, scores, zero)


def process_rewards(scores: torch.Tensor, cut_mask: torch.Tensor) -> torch.Tensor:
    """Per-cut process rewards ``r_1 = S_1``, ``r_j = S_j - S_{j-1}`` — ``[B, K]``, 0 at padding.

    They telescope: the rewards of a row sum to its last score ``S_m``.
    """
    cut_mask = _check_cut_mask(cut_mask, scores.shape)
    previous = torch.nn.functional.pad(scores[:, :-1], (1, 0))
    return torch.where(cut_mask, scores - previous, torch.zeros((), dtype=scores.dtype, device=scores.device))
