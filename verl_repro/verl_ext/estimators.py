"""RePro advantage estimators in veRL's registry: ``repro_grpo``, ``repro_rloo``,
``repro_reinforce_plus_plus``, ``repro_reinforce_plus_plus_baseline``, ``repro_ppo`` (select with
``algorithm.adv_estimator=...``), each declared by :func:`~verl_repro.verl_ext.estimator_registry.advantage_estimator`
on its function: name, veRL base estimator, default normalization and inputs, written once.

Each computes its family's outcome advantage with veRL's own built-in estimator — so with
``repro.alpha=0`` the result *is* veRL's, bit for bit — and adds RePro's token process advantage:
``Â = A + α·Ã`` (docs/repro.md). ``repro_ppo`` instead adds ``α ·`` the process rewards to the
token rewards and runs veRL's GAE (needs the critic's ``values``).

How the process rewards are normalized is ``repro.process_reward_norm``: ``group`` (the estimator's
group form), ``batch`` (whitened over the batch) or ``none``; ``auto`` keeps each estimator's own
(the ``normalization`` of its spec).

The process advantage comes from ground-truth scoring, which veRL's stock trainer does not run:
these estimators need the ``repro_sync`` trainer (``trainer.v1.trainer_mode=repro_sync``, set by
``+repro=default``), which passes the extra inputs of ``docs/dev/estimator_contract.md``. Called
without them they raise an error that names that trainer.

The maths lives in ``verl_repro.algorithms``; this module only maps veRL's arguments onto it and
reports ``repro/*`` metrics.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from verl_repro.algorithms import (
    ReproProcessAdvantage,
    combine_advantages,
    compute_repro_process_advantage,
    group_ids_from_uids,
    magnitude_scores,
    stability_scores,
)
from verl_repro.config import ReproConfig, setting
from verl_repro.verl_ext.estimator_registry import SPECS, EstimatorSpec, advantage_estimator

GRPO_EPSILON = 1e-6  # veRL's default in compute_grpo_outcome_advantage

logger = logging.getLogger("verl_repro")

# What every RePro estimator takes from the repro_sync trainer (docs/dev/estimator_contract.md).
REPRO_INPUTS = ("repro_scoring", "repro_config", "metrics")

# The `repro` keys of the paper's runs (arXiv 2512.01925) and its authors' code, where they are
# known (docs/repro.md, "Paper setting"): J from the current policy, truncated responses scored up
# to their end, α = 0.1, k = 10 (its ablation varies k from 5 to 30). The recipes run these.
PAPER_SETTING: dict[str, Any] = {"scorer": "actor", "no_think_end": "use_end", "alpha": 0.1, "num_segments": 10}
_logged_differences: set[tuple[str, str]] = set()


def paper_setting_differences(repro_config: ReproConfig) -> list[str]:
    """One line per ``repro`` key whose value is not the paper's (empty when the run is the paper setting)."""
    lines = []
    for key, paper_value in PAPER_SETTING.items():
        value = getattr(repro_config, key)
        if value != paper_value:
            lines.append(f"repro.{key}={value} differs from the paper setting ({paper_value})")
    return lines


def log_paper_setting_differences(estimator: str, repro_config: ReproConfig) -> list[str]:
    """Log each difference of a RePro run from the paper setting once per process (at start-up)."""
    if SPECS.get(estimator) is None or SPECS[estimator].method != "repro":
        return []
    lines = paper_setting_differences(repro_config)
    for line in lines:
        if (estimator, line) not in _logged_differences:
            _logged_differences.add((estimator, line))
            logger.warning("verl-repro: %s: %s; the run works, but is not the paper's", estimator, line)
    return lines


def _process_advantage(
    spec: EstimatorSpec,
    response_mask: torch.Tensor,
    index: Any,
    config: Any,
    repro_scoring,
    repro_config: ReproConfig,
    return_token_rewards: bool = False,
) -> ReproProcessAdvantage:
    normalization = spec.process_normalization(repro_config.process_reward_norm)
    batch = response_mask.shape[0]
    if repro_scoring.cuts.shape[0] != batch:
        raise ValueError(f"{spec.name}: repro_scoring has {repro_scoring.cuts.shape[0]} rows for {batch} responses")
    device = response_mask.device
    return compute_repro_process_advantage(
        repro_scoring.j_cuts.to(device),
        repro_scoring.j_base.to(device),
        repro_scoring.cuts.to(device),
        repro_scoring.cut_mask.to(device),
        repro_scoring.has_think_end.to(device),
        response_mask,
        group_ids=None if normalization in ("reinforce_plus_plus", "none") else group_ids_from_uids(index, batch).to(device),
        valid=repro_scoring.valid.to(device),
        padding=repro_scoring.padding.to(device),
        normalization=normalization,
        stability_weight=repro_config.stability_weight,
        stability_ema=repro_config.stability_ema,
        j_base_eps=repro_config.j_base_eps,
        norm_adv_by_std_in_grpo=bool(setting(config, "norm_adv_by_std_in_grpo", True)),
        epsilon=GRPO_EPSILON,
        gamma=repro_config.gamma,
        return_token_rewards=return_token_rewards,
    )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.bool()
    return float(values[mask].double().mean()) if bool(mask.any()) else 0.0


def repro_metrics(repro_scoring, result: ReproProcessAdvantage, response_mask: torch.Tensor, repro_config: ReproConfig) -> dict[str, float]:
    """The ``repro/*`` scalars of one batch (means over rows / entries that got a process reward; 0 if none)."""
    has = result.has_process_reward.cpu()
    entries = result.reward_mask.cpu()
    # Rows without process reward may hold NaN J: keep them out of every statistic.
    j_cuts = torch.where(entries, repro_scoring.j_cuts.float(), 0.0)
    j_base = torch.where(has, repro_scoring.j_base.float(), -1.0)
    num_cuts = entries.sum(dim=1)
    j_final = j_cuts.gather(1, (num_cuts - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    magnitude = magnitude_scores(j_cuts, j_base, repro_config.j_base_eps)
    stability = stability_scores(j_cuts, j_base, entries, repro_config.stability_ema)
    token_rows = response_mask.bool().cpu() & has.unsqueeze(1)
    counts = result.counts
    return {
        "repro/num_cuts_mean": _masked_mean(num_cuts.float(), has),
        "repro/j_base_mean": _masked_mean(j_base, has),
        "repro/j_final_mean": _masked_mean(j_final, has),
        "repro/magnitude_mean": _masked_mean(magnitude, entries),
        "repro/stability_mean": _masked_mean(stability, entries),
        "repro/process_adv_abs_mean": _masked_mean(result.process_advantages.abs().cpu(), token_rows),
        "repro/with_process_reward": float(counts.with_process_reward),
        "repro/skipped_no_think_end": float(counts.no_think_end),
        "repro/skipped_no_ground_truth": float(counts.no_ground_truth),
        "repro/skipped_nonfinite": float(counts.nonfinite_j + counts.j_base_near_zero),
        "repro/j_base_near_zero": float(counts.j_base_near_zero),
        "repro/no_think_end_used_end": float(counts.no_think_end_used_end),
        "repro/single_cut": float(counts.single_cut),
        "repro/scored_tokens": float(repro_scoring.stats.get("scored_tokens", 0.0)),
        "repro/scored_sequences": float(repro_scoring.stats.get("num_sequences", 0.0)),
        "repro/truncated_answers": float(repro_scoring.stats.get("truncated_answers", 0.0)),
    }


def with_process_advantage(
    spec: EstimatorSpec, outcome: torch.Tensor, response_mask: torch.Tensor, index: Any, config: Any, *,
    repro_scoring, repro_config: ReproConfig, metrics: dict, **unused: Any,
) -> torch.Tensor:
    """``Â = A + α·Ã``: the base estimator's ``outcome`` advantage plus the process advantage of
    ``repro_scoring``, normalized as ``spec`` and ``repro.process_reward_norm`` say; ``repro/*`` into ``metrics``."""
    result = _process_advantage(spec, response_mask, index, config, repro_scoring, repro_config)
    metrics.update(repro_metrics(repro_scoring, result, response_mask, repro_config))
    return combine_advantages(outcome, result.process_advantages, response_mask, repro_config.alpha)


@advantage_estimator("repro_grpo", method="repro", base="grpo", normalization="group", inputs=REPRO_INPUTS)
def compute_repro_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    repro_scoring=None,
    repro_config: Optional[ReproConfig] = None,
    metrics: Optional[dict] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage (veRL's ``grpo``) + ``α ·`` the process advantage; process rewards
    normalized per prompt group by default (mean / std over the group's reward entries).

    Args:
        token_level_rewards: ``[B, T] float`` — outcome reward on the last token, as veRL passes it.
        response_mask: ``[B, T]``.
        index: ``[B]`` uid array (prompt groups).
        config: veRL's ``algorithm`` config (``norm_adv_by_std_in_grpo``).
        spec: its own :class:`EstimatorSpec` (passed by the decorator).
        repro_scoring: :class:`verl_repro.verl_ext.scoring.ReproScoring` of this batch.
        repro_config: the validated ``repro`` group (``alpha``, ``stability_weight``, ...).
        metrics: ``repro/*`` scalars are added here.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and equal, as veRL's GRPO returns them.
    """
    from verl.trainer.ppo import core_algos

    outcome, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards,
        response_mask=response_mask,
        index=index,
        epsilon=GRPO_EPSILON,
        norm_adv_by_std_in_grpo=bool(setting(config, "norm_adv_by_std_in_grpo", True)),
        config=config,
    )
    advantages = with_process_advantage(
        spec, outcome, response_mask, index, config, repro_scoring=repro_scoring, repro_config=repro_config, metrics=metrics
    )
    return advantages, advantages


@advantage_estimator("repro_rloo", method="repro", base="rloo", normalization="group", inputs=REPRO_INPUTS)
def compute_repro_rloo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO outcome advantage (veRL's ``rloo``) + ``α ·`` the process advantage; process rewards minus
    the mean entry of the group's other responses by default (leave one out).

    Shapes and extra inputs as :func:`compute_repro_grpo_advantage`; returns ``(advantages, advantages)``.
    """
    from verl.trainer.ppo import core_algos

    outcome, _ = core_algos.compute_rloo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index, config=config
    )
    advantages = with_process_advantage(spec, outcome, response_mask, index, config, **inputs)
    return advantages, advantages


@advantage_estimator("repro_reinforce_plus_plus", method="repro", base="reinforce_plus_plus", normalization="batch", inputs=REPRO_INPUTS)
def compute_repro_reinforce_plus_plus_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantage (veRL's ``reinforce_plus_plus``: whitened discounted returns, ``config.gamma``)
    + ``α ·`` the process advantage; process rewards whitened over the batch by default.

    Returns ``(advantages, returns)`` — ``returns`` are veRL's outcome returns, unchanged.
    """
    from verl.trainer.ppo import core_algos

    outcome, returns = core_algos.compute_reinforce_plus_plus_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, config=config
    )
    advantages = with_process_advantage(spec, outcome, response_mask, index, config, **inputs)
    return advantages, returns


@advantage_estimator(
    "repro_reinforce_plus_plus_baseline", method="repro", base="reinforce_plus_plus_baseline", normalization="group", inputs=REPRO_INPUTS
)
def compute_repro_reinforce_plus_plus_baseline_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a group baseline (veRL's ``reinforce_plus_plus_baseline``: the outcome score
    minus its prompt group's mean, whitened over the batch) + ``α ·`` the process advantage; process
    rewards normalized the same way by default: minus the group's mean entry, then whitened over
    every entry of the batch.

    Shapes and extra inputs as :func:`compute_repro_grpo_advantage`; returns ``(advantages, advantages)``,
    as veRL's built-in returns its advantage twice.
    """
    from verl.trainer.ppo import core_algos

    outcome, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index, config=config
    )
    advantages = with_process_advantage(spec, outcome, response_mask, index, config, **inputs)
    return advantages, advantages


@advantage_estimator(
    "repro_ppo", method="repro", base="gae", normalization="none", inputs=REPRO_INPUTS + ("values",),
    requirement="`critic.enable=True`",
)
def compute_repro_ppo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Any = None,
    *,
    spec: EstimatorSpec,
    values: Optional[torch.Tensor] = None,
    repro_scoring=None,
    repro_config: Optional[ReproConfig] = None,
    metrics: Optional[dict] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GAE with RePro: ``r'_t = r_t + α·(process reward on token c_j − 1)``, then veRL's GAE.

    Args:
        values: ``[B, T] float`` — the critic's values (``critic.enable=True``).
        config: veRL's ``algorithm`` config — ``gamma`` and ``lam`` of GAE.
        Others as :func:`compute_repro_grpo_advantage`.

    Process rewards enter GAE raw by default (``repro.process_reward_norm=none``): GAE's critic
    learns their scale, and raw rewards keep the telescoping sum ``Σ r_j = S_m`` the paper's
    objective rests on. ``group`` normalizes them per prompt group first (GRPO form over reward
    entries), which is what the authors' PPO path is given the group ids for; ``batch`` whitens them.

    Returns:
        ``(advantages, returns)`` from veRL's ``compute_gae_advantage_return`` on the shaped rewards.
    """
    from verl.trainer.ppo import core_algos

    result = _process_advantage(spec, response_mask, index, config, repro_scoring, repro_config, return_token_rewards=True)
    shaped_rewards = token_level_rewards + repro_config.alpha * result.token_rewards.to(token_level_rewards.dtype)
    advantages, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=shaped_rewards,
        values=values,
        response_mask=response_mask,
        gamma=setting(config, "gamma", 1.0),
        lam=setting(config, "lam", 1.0),
    )
    metrics.update(repro_metrics(repro_scoring, result, response_mask, repro_config))
    return advantages, returns
