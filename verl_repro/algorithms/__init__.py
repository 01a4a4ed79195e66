"""Pure, vectorized torch maths of RePro and CorR-PO on padded ``[B, T]`` batches (imports torch only).

RePro pipeline: :func:`step_boundaries` / :func:`think_end_token_id` (once per tokenizer) →
:func:`select_cuts` → (the policy scores J at the cuts, in ``verl_ext``) →
:func:`compute_repro_process_advantage` (or, step by step, :func:`repro_scores` →
:func:`process_rewards` → :func:`normalize_process_rewards` → :func:`token_process_advantage`) →
:func:`combine_advantages`.
"""

from .advantages import (
    NORMALIZATIONS,
    ReproFallbackCounts,
    ReproProcessAdvantage,
    batch_whiten_process_rewards,
    combine_advantages,
    compute_repro_process_advantage,
    group_baseline_whiten_process_rewards,
    group_ids_from_uids,
    group_normalize_process_rewards,
    normalize_process_rewards,
    place_process_rewards,
    rloo_process_rewards,
    token_process_advantage,
)
from .repro import (
    DEFAULT_J_BASE_EPS,
    invalid_j_rows,
    magnitude_scores,
    prefix_kendall_tau,
    process_rewards,
    repro_scores,
    smooth_ema,
    stability_scores,
)
from .segments import (
    DEFAULT_BOUNDARY_PATTERNS,
    NO_THINK_END_POLICIES,
    StepBoundaries,
    candidate_counts,
    select_cuts,
    step_boundaries,
    think_end_token_id,
)

__all__ = [
    # segments
    "DEFAULT_BOUNDARY_PATTERNS",
    "NO_THINK_END_POLICIES",
    "StepBoundaries",
    "candidate_counts",
    "step_boundaries",
    "think_end_token_id",
    "select_cuts",
    # scores and rewards
    "DEFAULT_J_BASE_EPS",
    "invalid_j_rows",
    "magnitude_scores",
    "stability_scores",
    "prefix_kendall_tau",
    "smooth_ema",
    "repro_scores",
    "process_rewards",
    # normalization and advantages
    "NORMALIZATIONS",
    "group_ids_from_uids",
    "group_normalize_process_rewards",
    "rloo_process_rewards",
    "batch_whiten_process_rewards",
    "group_baseline_whiten_process_rewards",
    "normalize_process_rewards",
    "place_process_rewards",
    "token_process_advantage",
    "combine_advantages",
    "ReproFallbackCounts",
    "ReproProcessAdvantage",
    "compute_repro_process_advantage",
    # CorR-PO
    "CORRELATION_KINDS",
    "CORRELATION_UNITS",
    "TOKEN_SCOPES",
    "CorrelationResult",
    "average_ranks",
    "masked_correlation",
    "masked_pearson",
    "masked_spearman",
    "response_correlation",
    "scope_mask",
    "unique_token_means",
    "corrpo_advantages",
    "corrpo_metrics",
    "corrpo_rewards",
    "pad_token_lists",
]
from .correlation import (  # noqa: E402
    CORRELATION_KINDS,
    CORRELATION_UNITS,
    TOKEN_SCOPES,
    CorrelationResult,
    average_ranks,
    masked_correlation,
    masked_pearson,
    masked_spearman,
    response_correlation,
    scope_mask,
    unique_token_means,
)
from .corrpo import corrpo_advantages, corrpo_metrics, corrpo_rewards  # noqa: E402
from .padding import pad_token_lists  # noqa: E402
