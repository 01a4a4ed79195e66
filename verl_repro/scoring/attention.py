"""Tree attention for the prefix-shared layout, inside any transformers model.

A prefix token attends to prefix keys causally (the ordinary causal kernel, O(L) memory); a token
of copy ``j`` attends to prefix keys with position ``< s_j`` and to its own copy causally. The copy
part is one dense boolean mask of ``M × (L + M)`` per response, ``M = (m+1)(A+1)``; no ``L × L``
mask ever exists, so memory stays bounded at L = 32k.

The attention runs inside any transformers model that dispatches through ``AttentionInterface``: it
is registered as the implementation ``"repro_prefix_shared"`` and switched on for the duration of
one forward (:func:`tree_attention`). Models whose attention cannot take it (sliding windows,
soft-capping, attention sinks, multimodal 3-D positions, custom attention code) are named by
:func:`verl_repro.models.support.attention_support_error` before any forward; :func:`probe_batch` is the tiny input on which a
first-use probe compares the tree pass with the naive one.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from verl_repro.models.support import attention_override
from verl_repro.scoring.layout import PrefixSharedBatch, build_prefix_shared_batch


ATTENTION_NAME = "repro_prefix_shared"
"""Name under which the tree attention is registered in transformers' ``AttentionInterface``."""


class PrefixSharedUnsupported(RuntimeError):
    """The model's attention cannot take the prefix-shared tree mask; the message says why."""


@dataclass
class _TreePlan:
    """What the attention function needs per sample, as Python ints (no device syncs per layer).

    Sample ``s`` occupies ``[begins[s], begins[s] + lengths[s])`` of batch row ``rows[s]``: one row
    for a packed (padding-free) input, one row per sample for a right-padded ``[S, T_max]`` input.
    """

    rows: list[int]
    begins: list[int]
    lengths: list[int]
    prefix_lengths: list[int]
    copy_masks: list[torch.Tensor]
    """Per sample ``[M, L + M] bool`` — copy queries × (prefix keys, copy keys); True = attend."""

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)


_ACTIVE_PLAN: contextvars.ContextVar[Optional[_TreePlan]] = contextvars.ContextVar("repro_prefix_shared_plan", default=None)


def tree_copy_mask(prefix_length: int, copy_length: int, copy_starts: torch.Tensor) -> torch.Tensor:
    """``[M, L + M] bool`` attention of the copies of one sample, ``M = len(copy_starts) · copy_length``.

    Copy ``j`` sees prefix keys at positions ``< copy_starts[j]`` and its own tokens causally.
    """
    device = copy_starts.device
    copies = copy_starts.numel()
    span = copies * copy_length
    query_copy = torch.arange(span, device=device) // copy_length
    query_offset = torch.arange(span, device=device) % copy_length
    sees_prefix = torch.arange(prefix_length, device=device).unsqueeze(0) < copy_starts[query_copy].unsqueeze(1)
    sees_copy = (query_copy.unsqueeze(1) == query_copy.unsqueeze(0)) & (query_offset.unsqueeze(0) <= query_offset.unsqueeze(1))
    return torch.cat([sees_prefix, sees_copy], dim=1)


def tree_plan(batch: PrefixSharedBatch, device: torch.device, padded: bool = False) -> _TreePlan:
    """The attention plan of ``batch`` laid out packed in one row (default) or one sample per row."""
    lengths = batch.sample_lengths.tolist()
    prefix_lengths = batch.prefix_lengths.tolist()
    copy_lengths = batch.copy_lengths.tolist()
    copy_offsets = F.pad(batch.copies_per_sample.cumsum(0), (1, 0)).tolist()
    starts = batch.copy_starts.to(device)
    masks = [
        tree_copy_mask(prefix_lengths[s], copy_lengths[s], starts[copy_offsets[s] : copy_offsets[s + 1]])
        for s in range(len(prefix_lengths))
    ]
    if padded:
        rows, begins = list(range(len(lengths))), [0] * len(lengths)
    else:
        rows, begins = [0] * len(lengths), batch.sample_offsets[:-1].tolist()
    return _TreePlan(rows, begins, lengths, prefix_lengths, masks)


def prefix_shared_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, sliding_window=None, softcap=None, **kwargs):
    """Tree attention for :class:`PrefixSharedBatch` inputs, in transformers' ``AttentionInterface`` form.

    Args:
        query: ``[R, H, N, d]``; key, value: ``[R, H_kv, N, d]`` (rotary already applied); ``R = 1``
            for packed inputs, one row per sample for padded ones (see :class:`_TreePlan`).
    Returns:
        ``([R, N, H, d], None)`` like transformers' own attention functions; positions outside every
        sample (padding) are 0.
    """
    plan = _ACTIVE_PLAN.get()
    if plan is None:
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} runs only inside tree_attention()")
    if attention_mask is not None:
        raise PrefixSharedUnsupported("the model passed its own attention mask to the tree attention")
    if sliding_window is not None and sliding_window < plan.longest:
        raise PrefixSharedUnsupported(f"sliding-window attention (window {sliding_window})")
    if softcap is not None or kwargs.get("s_aux") is not None:
        raise PrefixSharedUnsupported("attention with soft-capping or sinks")
    gqa = key.shape[1] != query.shape[1]
    output = torch.zeros_like(query)
    for sample, prefix_length in enumerate(plan.prefix_lengths):
        row, begin = plan.rows[sample], plan.begins[sample]
        middle, end = begin + prefix_length, begin + plan.lengths[sample]
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        # The shared prefix is plain causal attention: the memory-efficient kernels apply.
        output[row : row + 1, :, begin:middle] = F.scaled_dot_product_attention(
            q[:, :, begin:middle], k[:, :, begin:middle], v[:, :, begin:middle],
            dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa,
        )
        if end > middle:
            output[row : row + 1, :, middle:end] = F.scaled_dot_product_attention(
                q[:, :, middle:end], k[:, :, begin:end], v[:, :, begin:end],
                attn_mask=plan.copy_masks[sample], dropout_p=dropout, scale=scaling, enable_gqa=gqa,
            )
    return output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def tree_attention(model, plan: _TreePlan) -> Iterator[None]:
    """Route every attention layer of ``model`` through the tree attention of ``plan`` (see
    :func:`tree_plan`) for the forwards inside the block; the model's own implementation is
    restored afterwards, also on error. The input must be laid out as the plan says, with
    ``attention_mask=None`` or a 2-D padding mask (either is ignored: the plan is the mask)."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        with attention_override(model, ATTENTION_NAME, prefix_shared_attention):
            yield
    finally:
        _ACTIVE_PLAN.reset(token)


# ----------------------------------------------------------------------------- first-use probe


PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
"""Largest |Δ log p| between the two paths on the probe, by the dtype the logits come out in; 0.1 otherwise (bf16/fp16)."""


def probe_batch(vocab_size: int) -> PrefixSharedBatch:
    """The fixed tiny batch of the first-use probe: 2 responses, cuts at 0, adjacent and at the end."""
    generator = torch.Generator().manual_seed(0)
    return build_prefix_shared_batch(
        context_ids=torch.randint(0, vocab_size, (18,), generator=generator),
        context_offsets=torch.tensor([0, 9, 18]),
        prompt_lengths=torch.tensor([3, 1]),
        cuts=torch.tensor([[2, 6], [1, 8]]),
        slot_valid=torch.ones(2, 3, dtype=torch.bool),
        answer_ids=torch.randint(0, vocab_size, (5,), generator=generator),
        answer_lengths=torch.tensor([2, 3]),
    )
