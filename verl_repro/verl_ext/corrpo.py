"""CorR-PO advantage estimators: outcome reward regularized by the entropy–gradient correlation.

Our definition (docs/corrpo.md; the paper's text is not public): for response ``i`` with in-scope
tokens ``t`` (``repro.corr.scope``), ``ρ_i = corr(H_t, s_t)`` (``repro.corr.kind``), where ``H_t`` is the
token entropy and ``s_t`` the gradient strength of ``repro.corr.signal`` — by default the norm of the
gradient of the token's raw logit with respect to the last layer's attention projections — both from
the actor's old-log-prob pass. The maths is in ``verl_repro.algorithms.corrpo``. The regularized reward

    r_i = w · r_outcome_i − λ · ρ_i          (w = repro.corr.outcome_weight, λ = repro.corr.coef)

rewards a stronger inversion (ρ < 0) and is then normalized within each prompt group:

* ``corrpo``      — GRPO: ``(r_i − mean_g) / (std_g + ε)`` (std division follows
  ``algorithm.norm_adv_by_std_in_grpo``),
* ``corrpo_rloo`` — RLOO: ``r_i − mean of the other responses of the group``.

``r_outcome_i`` is the response's summed ``token_level_rewards`` (the verifier score, plus the KL
penalty when ``algorithm.use_kl_in_reward``); ``w = 0`` is the verifier-free mode, where the
regularizer alone is the reward. The advantage is broadcast over the response tokens.

These estimators need per-token entropy and gradient strength (``logit_grad_norm``) that veRL's stock trainer does not
pass: they run under ``trainer.v1.trainer_mode=repro_sync`` (docs/dev/estimator_contract.md).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from verl_repro.algorithms.advantages import group_ids_from_uids
from verl_repro.algorithms.correlation import response_correlation
from verl_repro.algorithms.corrpo import corrpo_advantages, corrpo_metrics, corrpo_rewards
from verl_repro.config import CorrConfig, ReproConfig, setting
from verl_repro.verl_ext.estimator_registry import EstimatorSpec, advantage_estimator, missing_inputs_error

# What both CorR-PO estimators take from the repro_sync trainer; the optional ones depend on repro.corr.
CORRPO_INPUTS = ("repro_config", "entropy", "logit_grad_norm")
CORRPO_OPTIONAL_INPUTS = ("responses", "think_end_id", "metrics")
CORRPO_REQUIREMENT = "a source of `logit_grad_norm`"


def _corrpo_advantage(
    spec: EstimatorSpec,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float,
    norm_adv_by_std_in_grpo: Optional[bool],
    config: Any,
    *,
    repro_config: ReproConfig,
    entropy: torch.Tensor,
    logit_grad_norm: torch.Tensor,
    responses: Optional[torch.Tensor] = None,
    think_end_id: Optional[int] = None,
    metrics: Optional[dict] = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    corr: CorrConfig = repro_config.corr
    # the spec's required inputs are checked by its decorator; these depend on the settings
    missing = []
    if corr.scope == "thinking":
        missing = [key for key, value in (("responses", responses), ("think_end_id", think_end_id)) if value is None]
    elif corr.unit == "unique_tokens" and responses is None:
        missing = ["responses"]
    if missing:
        raise missing_inputs_error(spec.name, missing)
    if token_level_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask {tuple(response_mask.shape)} differ"
        )

    with torch.no_grad():
        response_mask = response_mask.to(token_level_rewards.device)
        correlation = response_correlation(
            entropy.to(token_level_rewards.device),
            logit_grad_norm.to(token_level_rewards.device),
            response_mask,
            kind=corr.kind,
            scope=corr.scope,
            min_tokens=corr.min_tokens,
            responses=None if responses is None else responses.to(token_level_rewards.device),
            think_end_id=think_end_id,
            unit=corr.unit,
        )
        outcome_scores = token_level_rewards.sum(dim=-1)
        rewards, regularizer = corrpo_rewards(outcome_scores, correlation.rho, coef=corr.coef, outcome_weight=corr.outcome_weight)
        if norm_adv_by_std_in_grpo is None:
            norm_adv_by_std_in_grpo = bool(setting(config, "norm_adv_by_std_in_grpo", True))
        advantages = corrpo_advantages(
            rewards, response_mask, group_ids_from_uids(index, rewards.shape[0]).to(rewards.device),
            normalization=spec.group_form, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo, epsilon=epsilon,
        )

    if metrics is not None:
        metrics.update(corrpo_metrics(correlation, outcome_scores, regularizer, response_mask))
    return advantages, advantages


@advantage_estimator(
    "corrpo", method="corrpo", base="grpo", normalization="group", inputs=CORRPO_INPUTS,
    optional_inputs=CORRPO_OPTIONAL_INPUTS, requirement=CORRPO_REQUIREMENT,
)
def compute_corrpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: Optional[bool] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    repro_config: Optional[ReproConfig] = None,
    responses: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
    logit_grad_norm: Optional[torch.Tensor] = None,
    think_end_id: Optional[int] = None,
    metrics: Optional[dict] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``corrpo``: GRPO advantage of ``r_i = w·r_outcome_i − λ·ρ_i`` (module docstring).

    Args:
        token_level_rewards: ``[B, T]`` float — outcome reward on the tokens (summed per response).
        response_mask: ``[B, T]`` — 1 on real response tokens.
        index: ``[B]`` veRL ``uid`` — prompt groups.
        epsilon: added to the group std.
        norm_adv_by_std_in_grpo: divide by the group std; default ``config.norm_adv_by_std_in_grpo`` (True).
        config: veRL's ``algorithm`` config.
        spec: its own :class:`EstimatorSpec` (passed by the decorator); ``spec.group_form`` is the normalization.
        repro_config: validated :class:`ReproConfig`; ``.corr`` holds λ, kind, scope, min_tokens, w.
        responses: ``[B, T]`` long — response ids (scope ``thinking``).
        entropy: ``[B, T]`` float — per-token entropy of the old-log-prob pass.
        logit_grad_norm: ``[B, T]`` float — per-token ``g_t``.
        think_end_id: id of ``</think>`` (scope ``thinking``).
        metrics: dict receiving the ``corr/*`` scalars.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` float, equal, zero outside ``response_mask``.
    """
    return _corrpo_advantage(
        spec, token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, config,
        repro_config=repro_config, responses=responses, entropy=entropy, logit_grad_norm=logit_grad_norm,
        think_end_id=think_end_id, metrics=metrics,
    )


@advantage_estimator(
    "corrpo_rloo", method="corrpo", base="rloo", normalization="group", inputs=CORRPO_INPUTS,
    optional_inputs=CORRPO_OPTIONAL_INPUTS, requirement=CORRPO_REQUIREMENT,
)
def compute_corrpo_rloo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: Optional[bool] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``corrpo_rloo``: leave-one-out baseline on ``r_i = w·r_outcome_i − λ·ρ_i``.

    Same arguments as :func:`compute_corrpo_advantage` (``epsilon`` and ``norm_adv_by_std_in_grpo``
    are unused); a group of one keeps its reward as the advantage, as veRL's RLOO does.
    """
    return _corrpo_advantage(spec, token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, config, **inputs)
