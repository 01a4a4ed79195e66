"""Model-level scoring of RePro's surrogate J (DESIGN §2): the prefix-shared pass and its layout.

Imports torch and transformers only; the veRL worker glue lives in :mod:`verl_repro.verl_ext.scoring`.
"""

from verl_repro.scoring.prefix_shared import (
    ATTENTION_NAME,
    CutScores,
    PrefixSharedBatch,
    PrefixSharedUnsupported,
    build_prefix_shared_batch,
    copy_means,
    naive_sequences,
    naive_token_count,
    prefix_shared_attention,
    prefix_shared_log_probs,
    score_cuts_naive,
    score_cuts_prefix_shared,
    tree_copy_mask,
    unsupported_reason,
)

__all__ = [
    "ATTENTION_NAME",
    "CutScores",
    "PrefixSharedBatch",
    "PrefixSharedUnsupported",
    "build_prefix_shared_batch",
    "copy_means",
    "naive_sequences",
    "naive_token_count",
    "prefix_shared_attention",
    "prefix_shared_log_probs",
    "score_cuts_naive",
    "score_cuts_prefix_shared",
    "tree_copy_mask",
    "unsupported_reason",
]
