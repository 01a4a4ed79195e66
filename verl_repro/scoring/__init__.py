"""Model-level scoring of RePro's surrogate J at the cuts of a response (torch + transformers only).

* :mod:`~verl_repro.scoring.layout` — the prefix-shared packed layout and its naive expansion;
* :mod:`~verl_repro.scoring.attention` — the tree attention inside a transformers model (which
  models it serves: :func:`verl_repro.models.support.attention_support_error`);
* :mod:`~verl_repro.scoring.cuts` — the passes that score J: :func:`score_j`, prefix-shared or naive.

How the layout travels through veRL's workers is the veRL glue's business
(:mod:`verl_repro.verl_ext.transport`, :mod:`verl_repro.verl_ext.engine_step`).
"""

from verl_repro.scoring.attention import ATTENTION_NAME, PrefixSharedUnsupported, tree_attention, tree_copy_mask, tree_plan
from verl_repro.scoring.cuts import (
    CutScores,
    prefix_shared_log_probs,
    prefix_shared_unavailable,
    score_cuts_naive,
    score_cuts_prefix_shared,
    score_j,
)
from verl_repro.scoring.layout import PrefixSharedBatch, build_prefix_shared_batch, copy_means, naive_sequences, naive_token_count

__all__ = [
    "ATTENTION_NAME",
    "CutScores",
    "PrefixSharedBatch",
    "PrefixSharedUnsupported",
    "build_prefix_shared_batch",
    "copy_means",
    "naive_sequences",
    "naive_token_count",
    "prefix_shared_log_probs",
    "prefix_shared_unavailable",
    "score_cuts_naive",
    "score_cuts_prefix_shared",
    "score_j",
    "tree_attention",
    "tree_copy_mask",
    "tree_plan",
]
