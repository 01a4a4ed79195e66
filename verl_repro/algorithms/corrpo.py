"""CorR-PO's maths (docs/corrpo.md): the regularized reward, its group-relative advantage, and the
``corr/*`` metrics. Pure torch on padded ``[B, T]`` batches; the veRL estimators in
``verl_repro.verl_ext.corrpo`` only map veRL's arguments onto these functions.
"""

from __future__ import annotations

import torch

from verl_repro.algorithms.advantages import group_normalize_process_rewards, rloo_process_rewards
from verl_repro.algorithms.correlation import CorrelationResult

CORRPO_NORMALIZATIONS: tuple[str, ...] = ("grpo", "rloo")


def corrpo_rewards(
    outcome_scores: torch.Tensor, rho: torch.Tensor, *, coef: float, outcome_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r_i = w · r_outcome_i − λ · ρ_i``.

    Args:
        outcome_scores: ``[B]`` float — each response's summed token-level reward.
        rho: ``[B]`` float — ``ρ_i`` (0 where undefined).
        coef: λ (``repro.corr.coef``); outcome_weight: w (``repro.corr.outcome_weight``, 0 = verifier-free).

    Returns:
        ``(rewards [B], regularizer [B] = λ · ρ)``.
    """
    regularizer = coef * rho.to(outcome_scores.dtype)
    return outcome_weight * outcome_scores - regularizer, regularizer


def corrpo_advantages(
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    normalization: str = "grpo",
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantage of the regularized reward, broadcast over the response tokens.

    Args:
        rewards: ``[B]`` float — ``r_i``.
        response_mask: ``[B, T]`` — 1 on real response tokens.
        group_ids: ``[B]`` long — prompt group of each response.
        normalization: ``grpo`` (``(r − mean_g) / (std_g + ε)``, std division optional) or ``rloo``
            (``r`` minus the mean of the group's other responses).

    Returns:
        ``[B, T]`` float, zero outside ``response_mask``.
    """
    if normalization not in CORRPO_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {CORRPO_NORMALIZATIONS}, got {normalization!r}")
    entries = torch.ones_like(rewards, dtype=torch.bool).unsqueeze(1)
    if normalization == "grpo":
        normalized = group_normalize_process_rewards(
            rewards.unsqueeze(1), entries, group_ids, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, epsilon=epsilon
        )
    else:
        normalized = rloo_process_rewards(rewards.unsqueeze(1), entries, group_ids)
    return normalized * response_mask.to(normalized.dtype)


def corrpo_metrics(
    correlation: CorrelationResult,
    outcome_scores: torch.Tensor,
    regularizer: torch.Tensor,
    response_mask: torch.Tensor,
) -> dict[str, float]:
    """The ``corr/*`` scalars of one batch; every value is finite.

    Rows without any response token (veRL's batch-balancing padding rows) take no part. A response
    is *correct* when its outcome score is > 0 (math verifiers give 1 for right, 0 or −1 for wrong).
    ``corr/rho_mean`` / ``_correct_mean`` / ``_incorrect_mean`` average ρ over responses whose ρ is
    defined and are left out when that set is empty (a mean of nothing is not 0).
    """
    real = response_mask.bool().any(dim=1)
    defined = correlation.defined & real
    correct = outcome_scores > 0
    rho = correlation.rho.double()
    metrics: dict[str, float] = {
        "corr/skipped": float((correlation.skipped & real).sum()),
        "corr/skipped_few_tokens": float((correlation.too_few_tokens & real).sum()),
        "corr/skipped_zero_variance": float((correlation.zero_variance & real).sum()),
        "corr/nonfinite_tokens": float(correlation.nonfinite_tokens[real].sum()),
        "corr/scope_tokens_mean": float(correlation.num_tokens[real].double().mean()) if bool(real.any()) else 0.0,
        "corr/regularizer_abs_mean": float(regularizer[real].double().abs().mean()) if bool(real.any()) else 0.0,
    }
    for name, selected in (("rho_mean", defined), ("rho_correct_mean", defined & correct), ("rho_incorrect_mean", defined & ~correct)):
        if bool(selected.any()):
            metrics[f"corr/{name}"] = float(rho[selected].mean())
    return metrics
