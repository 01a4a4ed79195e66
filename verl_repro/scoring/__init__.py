"""Model-level scoring of RePro's surrogate J (DESIGN §2): the prefix-shared pass and its layout.

Imports torch, tensordict and transformers only. :mod:`verl_repro.scoring.engine_step` is the hook
for the ``repro`` engine vendor's ``forward_step``; the trainer-side mode is registered in
:mod:`verl_repro.verl_ext.scoring`.
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
    prefix_shared_unavailable,
    prefix_shared_attention,
    prefix_shared_log_probs,
    score_cuts_naive,
    score_cuts_prefix_shared,
    tree_attention,
    tree_copy_mask,
    tree_plan,
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
    "prefix_shared_unavailable",
    "prefix_shared_attention",
    "prefix_shared_log_probs",
    "score_cuts_naive",
    "score_cuts_prefix_shared",
    "tree_attention",
    "tree_copy_mask",
    "tree_plan",
    "unsupported_reason",
]
