"""Prefix-shared ground-truth scoring: J at every cut of a response from one packed pass.

RePro's surrogate ``J(c) = mean_i log π(a_i | q, y_<=c, a_<i)`` is needed at ``m + 1`` cuts per
response (DESIGN §2). The naive way feeds one sequence per cut, ``prompt + response[:c] + answer``:
about ``(m+1)·T/2`` tokens. All cuts share the prompt and the response, so here a response is
packed once, with one *copy* of the answer per cut attached behind it::

    [ x_0 … x_{L-1} | x_{s_0} a_1 … a_A | x_{s_1} a_1 … a_A | … ]      L = P + max cut
      shared prefix    copy for cut c_0     copy for cut c_1

``s_j = P + c_j − 1`` is the last context token of cut ``c_j``. It is fed again at the head of its
copy, so that the next-token log-prob at copy positions ``0 … A−1`` is exactly
``log π(a_i | q, y_<=c_j, a_<i)`` (veRL's "position p predicts token p + 1" convention holds inside
each copy). Copy tokens take the position ids ``s_j, s_j + 1, …`` they would have in the naive
sequence, and attention is a tree:

* prefix token → prefix keys, causally (the ordinary causal kernel, O(L) memory);
* copy-``j`` token → prefix keys with position ``< s_j``, plus its own copy causally.

The copy part is one dense boolean mask of ``M × (L + M)`` per response, ``M = (m+1)(A+1)``; no
``L × L`` mask ever exists, so memory stays bounded at L = 32k. Tokens fed: ``L + (m+1)(A+1)``.

The tree attention runs inside any transformers model that dispatches through
``AttentionInterface``: it is registered as the implementation ``"repro_prefix_shared"`` and
switched on for the duration of one forward. Models whose attention cannot take it (sliding
windows, soft-capping, attention sinks, multimodal 3-D positions, custom attention code) are
detected before the forward, and a first-use probe compares both paths on a tiny input; in either
case the same scores are computed the naive way and the reason is logged once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import weakref
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ATTENTION_NAME = "repro_prefix_shared"
"""Name under which the tree attention is registered in transformers' ``AttentionInterface``."""


class PrefixSharedUnsupported(RuntimeError):
    """The model's attention cannot take the prefix-shared tree mask; the message says why."""


# ----------------------------------------------------------------------------- packed layout


def segment_positions(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed segments of ``lengths`` (``[N] long``): ``(owner [total], position-in-segment [total])``."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    starts = F.pad(lengths.cumsum(0), (1, 0))[:-1]
    return owner, torch.arange(int(lengths.sum()), device=lengths.device) - starts[owner]


@dataclass
class PrefixSharedBatch:
    """``S`` responses packed as ``[prefix | copy per cut]`` samples (module docstring), one after another.

    Sample ``s`` is ``input_ids[sample_offsets[s]:sample_offsets[s+1]]``: its first
    ``prefix_lengths[s]`` tokens are prompt + response up to the last cut, then
    ``copies_per_sample[s]`` copies of ``copy_lengths[s] = A_s + 1`` tokens each.
    """

    input_ids: torch.Tensor
    """``[N] long`` — packed tokens."""
    position_ids: torch.Tensor
    """``[N] long`` — prefix: 0 … L−1; copy j: s_j, s_j + 1, …"""
    sample_lengths: torch.Tensor
    """``[S] long`` — ``L_s + copies_s · (A_s + 1)``."""
    prefix_lengths: torch.Tensor
    """``[S] long`` — ``L_s = P_s + max cut`` (≥ 1)."""
    copy_lengths: torch.Tensor
    """``[S] long`` — ``A_s + 1`` (the re-fed context token and the answer)."""
    copies_per_sample: torch.Tensor
    """``[S] long`` — scored cuts of the sample (≥ 1; the base cut 0 is one of them)."""
    copy_starts: torch.Tensor
    """``[C] long`` — ``s_j = P + c_j − 1`` of every copy, packed in sample order."""
    copy_row: torch.Tensor
    """``[C] long`` — batch row of every copy."""
    copy_slot: torch.Tensor
    """``[C] long`` — slot of every copy: 0 = base cut ``c = 0``, ``k + 1`` = cut column ``k``."""
    sample_row: torch.Tensor
    """``[S] long`` — batch row of every sample."""
    scored_index: torch.Tensor
    """``[Q] long`` — packed positions whose next-token log-prob is an answer token."""
    scored_copy: torch.Tensor
    """``[Q] long`` — copy of each scored position."""
    labels: torch.Tensor
    """``[Q] long`` — the answer token predicted at each scored position (``input_ids[scored_index + 1]``)."""

    @property
    def sample_offsets(self) -> torch.Tensor:
        return F.pad(self.sample_lengths.cumsum(0), (1, 0))

    @property
    def num_tokens(self) -> int:
        return int(self.sample_lengths.sum())

    def __len__(self) -> int:
        return int(self.sample_lengths.numel())


def build_prefix_shared_batch(
    context_ids: torch.Tensor,
    context_offsets: torch.Tensor,
    prompt_lengths: torch.Tensor,
    cuts: torch.Tensor,
    slot_valid: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_lengths: torch.Tensor,
) -> PrefixSharedBatch:
    """Pack the rows with at least one valid slot into the prefix-shared layout (vectorized).

    Args:
        context_ids: ``[total] long`` — prompt + response of every row, packed without padding.
        context_offsets: ``[B + 1] long`` — row ``b`` is ``context_ids[offsets[b]:offsets[b+1]]``.
        prompt_lengths: ``[B] long`` — ``P_b``; must be ≥ 1 for rows that are scored.
        cuts: ``[B, K] long`` — cut positions (response tokens kept).
        slot_valid: ``[B, K + 1] bool`` — slot 0 is the base cut ``c = 0``, slot ``k + 1`` is ``cuts[:, k]``.
            Rows with no valid slot or an empty answer are not packed.
        answer_ids: ``[sum A_b] long`` — answer tokens of every row, packed.
        answer_lengths: ``[B] long`` — ``A_b``.
    """
    batch = prompt_lengths.numel()
    if cuts.dim() != 2 or cuts.shape[0] != batch or slot_valid.shape != (batch, cuts.shape[1] + 1):
        raise ValueError(
            f"prefix-shared layout: cuts {tuple(cuts.shape)} and slot_valid {tuple(slot_valid.shape)} "
            f"do not fit {batch} rows ([B, K] and [B, K + 1] expected)"
        )
    if context_offsets.numel() != batch + 1 or answer_lengths.numel() != batch:
        raise ValueError(
            f"prefix-shared layout: {batch} rows but {context_offsets.numel() - 1} contexts and "
            f"{answer_lengths.numel()} answers"
        )
    cuts = cuts.long()
    slot_cut = F.pad(cuts, (1, 0))
    slot_valid = slot_valid.bool() & (answer_lengths > 0).unsqueeze(1)
    rows = torch.nonzero(slot_valid.any(dim=1)).flatten()
    context_lengths = context_offsets.diff()
    if rows.numel():
        bad_prompt = prompt_lengths[rows] < 1
        if bool(bad_prompt.any()):
            raise ValueError(f"prefix-shared layout: row {int(rows[bad_prompt][0])} has no prompt token to score after")
        over = (slot_cut[rows] > (context_lengths - prompt_lengths)[rows].unsqueeze(1)) & slot_valid[rows]
        if bool(over.any()):
            row = int(rows[over.any(dim=1)][0])
            raise ValueError(f"prefix-shared layout: row {row} has a cut beyond its {int(context_lengths[row] - prompt_lengths[row])} response tokens")
        if bool((slot_cut[rows] < 0).any()):
            raise ValueError("prefix-shared layout: negative cut")

    copy_row, copy_slot = torch.nonzero(slot_valid[rows], as_tuple=True)
    copy_row = rows[copy_row]
    copy_cut = slot_cut[copy_row, copy_slot]
    copy_starts = prompt_lengths[copy_row] + copy_cut - 1
    copies_per_sample = slot_valid[rows].sum(dim=1)
    max_cut = torch.where(slot_valid[rows], slot_cut[rows], torch.zeros_like(slot_cut[rows])).amax(dim=1) if rows.numel() else rows
    prefix_lengths = prompt_lengths[rows] + max_cut
    copy_lengths = answer_lengths[rows] + 1
    sample_lengths = prefix_lengths + copies_per_sample * copy_lengths

    owner, position, is_prefix, copy_id, offset_in_copy = _token_coordinates(sample_lengths, prefix_lengths, copy_lengths, copies_per_sample)
    row = rows[owner]
    start = copy_starts[copy_id] if copy_starts.numel() else torch.zeros_like(position)

    answer_offsets = F.pad(answer_lengths.cumsum(0), (1, 0))
    prefix_token = context_ids[context_offsets[row] + torch.where(is_prefix, position, start)] if position.numel() else position
    answer_index = (answer_offsets[row] + offset_in_copy - 1).clamp(0, max(answer_ids.numel() - 1, 0))
    answer_token = answer_ids[answer_index] if answer_ids.numel() else torch.zeros_like(position)
    from_context = is_prefix | (offset_in_copy == 0)
    input_ids = torch.where(from_context, prefix_token, answer_token).long()
    position_ids = torch.where(is_prefix, position, start + offset_in_copy)

    scored_index = torch.nonzero(~is_prefix & (offset_in_copy < copy_lengths[owner] - 1)).flatten()
    return PrefixSharedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        sample_lengths=sample_lengths,
        prefix_lengths=prefix_lengths,
        copy_lengths=copy_lengths,
        copies_per_sample=copies_per_sample,
        copy_starts=copy_starts,
        copy_row=copy_row,
        copy_slot=copy_slot,
        sample_row=rows,
        scored_index=scored_index,
        scored_copy=copy_id[scored_index],
        labels=input_ids[scored_index + 1] if scored_index.numel() else scored_index,
    )


def _token_coordinates(sample_lengths, prefix_lengths, copy_lengths, copies_per_sample):
    """Per packed token: ``(sample, position in sample, is prefix, copy id, offset in its copy)``.

    Prefix tokens get copy id 0 and offset 0 (masked by ``is_prefix`` wherever they matter).
    """
    owner, position = segment_positions(sample_lengths)
    is_prefix = position < prefix_lengths[owner]
    in_copies = (position - prefix_lengths[owner]).clamp_min(0)
    copy_offsets = F.pad(copies_per_sample.cumsum(0), (1, 0))
    copy_id = torch.where(is_prefix, torch.zeros_like(position), copy_offsets[owner] + in_copies // copy_lengths[owner])
    offset_in_copy = torch.where(is_prefix, torch.zeros_like(position), in_copies % copy_lengths[owner])
    return owner, position, is_prefix, copy_id, offset_in_copy


def prefix_shared_batch_from_packed(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    sample_lengths: torch.Tensor,
    prefix_lengths: torch.Tensor,
    copy_lengths: torch.Tensor,
) -> PrefixSharedBatch:
    """Rebuild the layout of packed samples from what travels to a worker (tokens, positions, L, A + 1).

    Copy starts are read from the position ids of the copy heads; ``copy_row`` is the sample and
    ``copy_slot`` the copy's index inside it (the batch rows are the trainer's business).
    """
    input_ids, position_ids = input_ids.long().cpu(), position_ids.long().cpu()
    sample_lengths, prefix_lengths, copy_lengths = sample_lengths.long().cpu(), prefix_lengths.long().cpu(), copy_lengths.long().cpu()
    copy_part = sample_lengths - prefix_lengths
    if bool(((prefix_lengths < 1) | (copy_lengths < 2) | (copy_part <= 0) | (copy_part % copy_lengths.clamp_min(1) != 0)).any()):
        raise ValueError(
            "prefix-shared batch: every sample needs a prefix and whole copies of (A + 1) >= 2 tokens; got "
            f"lengths {sample_lengths.tolist()}, prefix lengths {prefix_lengths.tolist()}, copy lengths {copy_lengths.tolist()}"
        )
    if input_ids.numel() != int(sample_lengths.sum()) or position_ids.shape != input_ids.shape:
        raise ValueError(f"prefix-shared batch: {input_ids.numel()} tokens, {position_ids.numel()} positions, samples of {int(sample_lengths.sum())}")
    copies_per_sample = copy_part // copy_lengths
    owner, position, is_prefix, copy_id, offset_in_copy = _token_coordinates(sample_lengths, prefix_lengths, copy_lengths, copies_per_sample)
    if not torch.equal(position_ids[is_prefix], position[is_prefix]):
        raise ValueError("prefix-shared batch: prefix position ids must be 0, 1, … in every sample")
    heads = torch.nonzero(~is_prefix & (offset_in_copy == 0)).flatten()
    copy_starts = position_ids[heads]
    if bool((copy_starts >= prefix_lengths[owner[heads]]).any()):
        raise ValueError("prefix-shared batch: a copy starts beyond its prefix")
    sample_of_copy = owner[heads]
    scored_index = torch.nonzero(~is_prefix & (offset_in_copy < copy_lengths[owner] - 1)).flatten()
    return PrefixSharedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        sample_lengths=sample_lengths,
        prefix_lengths=prefix_lengths,
        copy_lengths=copy_lengths,
        copies_per_sample=copies_per_sample,
        copy_starts=copy_starts,
        copy_row=sample_of_copy,
        copy_slot=torch.arange(heads.numel()) - F.pad(copies_per_sample.cumsum(0), (1, 0))[sample_of_copy],
        sample_row=torch.arange(sample_lengths.numel()),
        scored_index=scored_index,
        scored_copy=copy_id[scored_index],
        labels=input_ids[scored_index + 1] if scored_index.numel() else scored_index,
    )


def naive_token_count(prompt_lengths: torch.Tensor, cuts: torch.Tensor, slot_valid: torch.Tensor, answer_lengths: torch.Tensor) -> int:
    """Tokens the naive way feeds for the same slots: ``Σ (P + c + A)`` over valid slots."""
    slot_cut = F.pad(cuts.long(), (1, 0))
    valid = slot_valid.bool() & (answer_lengths > 0).unsqueeze(1)
    per_slot = prompt_lengths.unsqueeze(1) + slot_cut + answer_lengths.unsqueeze(1)
    return int(per_slot[valid].sum())


# ----------------------------------------------------------------------------- tree attention


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


def _register_attention() -> None:
    from transformers import AttentionInterface

    if AttentionInterface._global_mapping.get(ATTENTION_NAME) is not prefix_shared_attention:
        AttentionInterface.register(ATTENTION_NAME, prefix_shared_attention)


def _configs(model) -> list:
    from transformers import PretrainedConfig

    seen = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            seen[id(config)] = config
    return list(seen.values())


@contextlib.contextmanager
def tree_attention(model, plan: _TreePlan) -> Iterator[None]:
    """Route every attention layer of ``model`` through the tree attention of ``plan`` (see
    :func:`tree_plan`) for the forwards inside the block; the model's own implementation is
    restored afterwards, also on error. The input must be laid out as the plan says, with
    ``attention_mask=None`` or a 2-D padding mask (either is ignored: the plan is the mask)."""
    _register_attention()
    configs = _configs(model)
    previous = [config._attn_implementation_internal for config in configs]
    token = _ACTIVE_PLAN.set(plan)
    try:
        for config in configs:
            config._attn_implementation_internal = ATTENTION_NAME
        yield
    finally:
        for config, name in zip(configs, previous):
            config._attn_implementation_internal = name
        _ACTIVE_PLAN.reset(token)


# ----------------------------------------------------------------------------- support check


def unwrap_model(model):
    """The transformers model inside FSDP1 / PEFT wrappers (FSDP2 keeps the model's own class)."""
    model = getattr(model, "_fsdp_wrapped_module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _model_class(model) -> type:
    # FSDP2 swaps in a generated subclass (``FSDPQwen2ForCausalLM``) defined inside torch; the
    # attention code lives with the first class of the MRO that is not torch's.
    return next(c for c in type(model).__mro__ if not c.__module__.startswith("torch."))


def unsupported_reason(model) -> Optional[str]:
    """Why ``model``'s attention cannot take the tree mask, or None when it can (static checks)."""
    from transformers import PreTrainedModel

    model = unwrap_model(model)
    if not isinstance(model, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers PreTrainedModel"
    cls = _model_class(model)
    if not cls._can_set_attn_implementation():
        return f"{cls.__name__} does not dispatch attention through transformers' AttentionInterface"
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return "not a causal decoder"
    if any(getattr(config, name, None) is not None for name in config.sub_configs):
        return f"composite model ({', '.join(config.sub_configs)}): multimodal positions are not supported"
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return f"layers with non-full attention ({sorted(set(layer_types) - {'full_attention'})})"
    if layer_types is None and getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return f"sliding-window attention (window {config.sliding_window})"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(config, name, None) is not None:
            return f"config.{name} is set"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and ("mrope_section" in rope or rope.get("rope_type") == "mrope"):
        return "3-D (mrope) position ids"
    return None


_PROBED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()

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


def probe(model, temperature: float = 1.0) -> Optional[str]:
    """Score :func:`probe_batch` both ways, once per model and precision setting (cached).

    Returns None when the tree pass agrees with the naive pass, else the reason to fall back (an
    error inside the model, or a disagreement beyond :data:`PROBE_TOLERANCE`). Every rank of a
    sharded model calls it at the same point with the same input, as its forwards are collective.
    """
    parameter = next(model.parameters())
    key = (parameter.dtype, parameter.device.type, torch.is_autocast_enabled(parameter.device.type))
    verdicts = _PROBED.setdefault(model, {})
    if key in verdicts:
        return verdicts[key]
    batch = probe_batch(int(getattr(unwrap_model(model).config, "vocab_size", 32)))
    try:
        shared, logits_dtype = _tree_log_probs(model, batch, temperature, return_dtype=True)
    except Exception as error:  # any failure inside a foreign model means "cannot take the mask"
        verdicts[key] = f"probe forward failed: {type(error).__name__}: {error}"
        return verdicts[key]
    naive, _ = _naive_log_probs(model, batch, temperature)
    tolerance = PROBE_TOLERANCE.get(logits_dtype, 0.1)
    gap = float((shared - naive).abs().max())
    verdicts[key] = None if gap <= tolerance else f"probe disagrees with naive scoring (max |Δ log p| = {gap:.3g} > {tolerance:g})"
    return verdicts[key]


def prefix_shared_unavailable(model, temperature: float = 1.0) -> Optional[str]:
    """Why the tree pass cannot be used on ``model`` (static checks, then the probe), or None."""
    return unsupported_reason(model) or probe(model, temperature)


# ----------------------------------------------------------------------------- log-probs


def _log_probs_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """``[Q] float32`` log-softmax(logits / temperature)[label], in row chunks to bound the fp32 copy."""
    out = torch.empty(labels.numel(), dtype=torch.float32, device=logits.device)
    for begin in range(0, labels.numel(), chunk):
        rows = logits[begin : begin + chunk].float()
        if temperature != 1.0:
            rows = rows / temperature
        out[begin : begin + chunk] = rows.gather(-1, labels[begin : begin + chunk].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)
    return out


def _tree_log_probs(model, batch: PrefixSharedBatch, temperature: float, return_dtype: bool = False):
    device = next(model.parameters()).device
    plan = tree_plan(batch, device)
    with tree_attention(model, plan):
        output = model(
            input_ids=batch.input_ids.to(device).unsqueeze(0),
            position_ids=batch.position_ids.to(device).unsqueeze(0),
            use_cache=False,
            # Only the answer-predicting positions need the lm_head: no [N, V] logits.
            logits_to_keep=batch.scored_index.to(device),
        )
    values = _log_probs_of(output.logits[0], batch.labels.to(device), temperature).cpu()
    return (values, output.logits.dtype) if return_dtype else values


def naive_sequences(batch: PrefixSharedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand the layout back to one sequence per copy, ``prefix[:s_j] + copy_j`` (the fallback's input).

    Returns ``(input_ids [total] long, lengths [C] long)``, packed; sequence ``j`` ends with its copy.
    """
    copy_lengths = torch.repeat_interleave(batch.copy_lengths, batch.copies_per_sample)
    lengths = batch.copy_starts + copy_lengths
    owner, position = segment_positions(lengths)
    sample = torch.repeat_interleave(torch.arange(len(batch)), batch.copies_per_sample)[owner]
    copy_offsets = F.pad(batch.copies_per_sample.cumsum(0), (1, 0))
    local_copy = owner - copy_offsets[sample]
    in_prefix = position < batch.copy_starts[owner]
    copy_index = batch.prefix_lengths[sample] + local_copy * batch.copy_lengths[sample] + position - batch.copy_starts[owner]
    source = batch.sample_offsets[sample] + torch.where(in_prefix, position, copy_index)
    return batch.input_ids[source], lengths


def naive_groups(batch: PrefixSharedBatch, max_tokens: Optional[int] = None) -> list[torch.Tensor]:
    """Copies of ``batch`` per forward of the naive pass: longest first, at most ``max_tokens``
    padded tokens a forward (default: the batch's own packed size; 0: one copy per forward)."""
    lengths = naive_sequences(batch)[1]
    budget = batch.num_tokens if max_tokens is None else max_tokens
    order = torch.argsort(lengths, descending=True, stable=True)
    groups, start = [], 0
    while start < order.numel():
        size = max(1, budget // int(lengths[order[start]]))
        groups.append(order[start : start + size])
        start += size
    return groups


def _naive_log_probs(model, batch: PrefixSharedBatch, temperature: float, max_tokens: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """The values of :func:`prefix_shared_log_probs` computed the naive way: one sequence per copy,
    ``prefix[:s_j] + copy_j``, through the model's own attention.

    Sequences are left-padded in the groups of :func:`naive_groups` (by default the batch's own
    packed size, so the fallback needs no more activation memory than the tree pass), with explicit
    position ids, so every copy ends at the last column and only those columns reach the lm_head.
    Returns ``([Q] float32, number of forwards)``.
    """
    device = next(model.parameters()).device
    ids, lengths = naive_sequences(batch)
    offsets = F.pad(lengths.cumsum(0), (1, 0))
    copy_lengths = torch.repeat_interleave(batch.copy_lengths, batch.copies_per_sample)
    answer_offsets = F.pad((copy_lengths - 1).cumsum(0), (1, 0))
    # Copies are copy-major, token-minor here as in ``scored_index``: same order of values.
    values = torch.empty(int(answer_offsets[-1]), dtype=torch.float32)
    groups = naive_groups(batch, max_tokens)
    for group in groups:
        longest = int(lengths[group].max())
        owner, position = segment_positions(lengths[group])
        pad = longest - lengths[group]
        padded = torch.zeros(group.numel(), longest, dtype=torch.long)
        padded[owner, pad[owner] + position] = ids[offsets[group][owner] + position]
        positions = torch.zeros_like(padded)
        positions[owner, pad[owner] + position] = position
        mask = torch.arange(longest).unsqueeze(0) >= pad.unsqueeze(1)
        keep = int(copy_lengths[group].max())
        logits = model(
            input_ids=padded.to(device),
            attention_mask=None if group.numel() == 1 else mask.long().to(device),
            position_ids=positions.to(device),
            use_cache=False,
            logits_to_keep=keep,
        ).logits
        # Column ``keep - C + t`` of the kept logits predicts answer token ``t`` (C = copy length).
        a_owner, a_position = segment_positions(copy_lengths[group] - 1)
        column = keep - copy_lengths[group][a_owner] + a_position
        chosen = logits[a_owner.to(device), column.to(device)]
        labels = padded[a_owner, longest - keep + column + 1].to(device)
        values[answer_offsets[group][a_owner] + a_position] = _log_probs_of(chosen, labels, temperature).cpu()
    return values, len(groups)


@torch.no_grad()
def prefix_shared_log_probs(model, batch: PrefixSharedBatch, temperature: float = 1.0, fallback_reason: Optional[list] = None) -> torch.Tensor:
    """``[Q] float32`` — ``log π(labels | …)`` at every scored position of ``batch``, in one packed pass.

    Falls back to the naive expansion (same values) when the model's attention cannot take the
    tree mask; the reason is logged once per model and appended to ``fallback_reason`` if given.
    """
    if batch.scored_index.numel() == 0:
        return torch.zeros(0, dtype=torch.float32)
    reason = prefix_shared_unavailable(model, temperature)
    if reason is None:
        return _tree_log_probs(model, batch, temperature)
    _log_fallback(model, reason)
    if fallback_reason is not None:
        fallback_reason.append(reason)
    return _naive_log_probs(model, batch, temperature)[0]


_LOGGED: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()


def _log_fallback(model, reason: str) -> None:
    logged = _LOGGED.setdefault(model, set())
    if reason not in logged:
        logged.add(reason)
        logger.warning("RePro prefix-shared scoring falls back to naive scoring for %s: %s", type(unwrap_model(model)).__name__, reason)


# ----------------------------------------------------------------------------- J at the cuts


def copy_means(batch: PrefixSharedBatch, token_log_probs: torch.Tensor) -> torch.Tensor:
    """``[C] float32`` — J of every copy: the mean of its answer-token log-probs (float64 sums)."""
    copies = batch.copy_starts.numel()
    sums = torch.zeros(copies, dtype=torch.float64).index_add_(0, batch.scored_copy, token_log_probs.double())
    counts = torch.repeat_interleave(batch.copy_lengths - 1, batch.copies_per_sample)
    return (sums / counts.clamp_min(1)).to(torch.float32)


@dataclass
class CutScores:
    """J of a batch of ``B`` responses at ``K`` cut columns."""

    j_base: torch.Tensor
    """``[B] float32`` — ``J(0)``; NaN where not scored."""
    j_cuts: torch.Tensor
    """``[B, K] float32`` — ``J(c_k)``; NaN where not scored."""
    scored_tokens: int
    """Tokens fed to the model."""
    naive_tokens: int
    """Tokens the naive way would feed for the same cuts."""
    passes: int
    """Model forwards."""
    fallback_reason: Optional[str] = None
    """Why the naive path was used instead, or None."""


def _pack_contexts(prompt_ids, response_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor]):
    """Packed ``prompt + response`` per row from token lists or a left-padded ``[B, P_max]`` tensor."""
    batch = response_ids.shape[0]
    if isinstance(prompt_ids, torch.Tensor):
        mask = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        if mask.shape != prompt_ids.shape:
            raise ValueError(f"prompt_mask {tuple(mask.shape)} does not match prompt_ids {tuple(prompt_ids.shape)}")
        prompts = [prompt_ids[b][mask[b]] for b in range(batch)]
    else:
        prompts = [torch.as_tensor(list(p), dtype=torch.long) for p in prompt_ids]
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts but {batch} responses")
    contexts = [torch.cat([prompts[b].long(), response_ids[b].long()]) for b in range(batch)]
    lengths = torch.tensor([c.numel() for c in contexts], dtype=torch.long)
    prompt_lengths = torch.tensor([p.numel() for p in prompts], dtype=torch.long)
    return torch.cat(contexts) if contexts else torch.zeros(0, dtype=torch.long), F.pad(lengths.cumsum(0), (1, 0)), prompt_lengths


@torch.no_grad()
def score_cuts_prefix_shared(
    model,
    prompt_ids,
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    *,
    prompt_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    max_tokens_per_pass: int = 16384,
) -> CutScores:
    """Prefix-shared RePro scoring: J_b (cut 0) and J at every valid cut, all cuts of a response in one pass.

    Same inputs and values as :func:`verl_repro.analysis.hf_scoring.score_cuts` (the naive oracle).

    Args:
        prompt_ids: B token lists, or a left-padded ``[B, P_max] long`` tensor with ``prompt_mask``.
        response_ids: ``[B, T] long`` right-padded responses.
        cuts, cut_mask: ``[B, K]`` from ``select_cuts``; a row with no valid cut or an empty answer is not scored.
        answer_ids: B rendered-answer token lists.
        prompt_mask: ``[B, P_max]`` — 1 on real prompt tokens (left padding), for tensor prompts.
        max_tokens_per_pass: responses are packed into forwards of about this many tokens.
    """
    return _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive=False)


@torch.no_grad()
def score_cuts_naive(
    model,
    prompt_ids,
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    *,
    prompt_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    max_tokens_per_pass: int = 16384,
) -> CutScores:
    """Naive RePro scoring with the arguments of :func:`score_cuts_prefix_shared`: one sequence per
    cut, ``prompt + response[:c] + answer``, left-padded groups of at most ``max_tokens_per_pass``
    tokens (0: one unpadded sequence per forward), lm_head on the answer positions only — the
    baseline of ``benchmarks/bench_scoring.py``."""
    return _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive=True)


def _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive: bool) -> CutScores:
    context_ids, context_offsets, prompt_lengths = _pack_contexts(prompt_ids, response_ids, prompt_mask)
    answers = [torch.as_tensor(list(a), dtype=torch.long) for a in answer_ids]
    answer_lengths = torch.tensor([a.numel() for a in answers], dtype=torch.long)
    answer_values = torch.cat(answers) if answers else torch.zeros(0, dtype=torch.long)
    cut_mask = cut_mask.bool()
    slot_valid = torch.cat([cut_mask.any(dim=1, keepdim=True), cut_mask], dim=1) & (answer_lengths > 0).unsqueeze(1)
    naive_tokens = naive_token_count(prompt_lengths, cuts, slot_valid, answer_lengths)
    j_table = torch.full((cuts.shape[0], cuts.shape[1] + 1), float("nan"), dtype=torch.float32)
    if naive:
        batch = build_prefix_shared_batch(context_ids, context_offsets, prompt_lengths, cuts, slot_valid, answer_values, answer_lengths)
        if batch.scored_index.numel():
            log_probs, passes = _naive_log_probs(model, batch, temperature, max_tokens=max_tokens_per_pass)
            j_table[batch.copy_row, batch.copy_slot] = copy_means(batch, log_probs)
        else:
            passes = 0
        return CutScores(j_table[:, 0], j_table[:, 1:], scored_tokens=naive_tokens, naive_tokens=naive_tokens, passes=passes)

    slot_cut = F.pad(cuts.long(), (1, 0))
    estimate = prompt_lengths + torch.where(slot_valid, slot_cut, torch.zeros_like(slot_cut)).amax(dim=1) + slot_valid.sum(1) * (answer_lengths + 1)
    scored_tokens, passes, reasons = 0, 0, []
    for rows in _packs(estimate, slot_valid.any(dim=1), max_tokens_per_pass):
        in_pack = torch.zeros_like(slot_valid)
        in_pack[rows] = slot_valid[rows]
        batch = build_prefix_shared_batch(context_ids, context_offsets, prompt_lengths, cuts, in_pack, answer_values, answer_lengths)
        log_probs = prefix_shared_log_probs(model, batch, temperature, fallback_reason=reasons)
        j_table[batch.copy_row, batch.copy_slot] = copy_means(batch, log_probs)
        scored_tokens += batch.num_tokens
        passes += 1
    if reasons:
        scored_tokens = naive_tokens
    return CutScores(
        j_base=j_table[:, 0], j_cuts=j_table[:, 1:], scored_tokens=scored_tokens, naive_tokens=naive_tokens,
        passes=passes, fallback_reason=reasons[0] if reasons else None,
    )


def _packs(sample_lengths: torch.Tensor, scored: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Consecutive groups of scored rows of at most ``max_tokens`` tokens (a longer row goes alone)."""
    groups, current, total = [], [], 0
    for row in torch.nonzero(scored).flatten().tolist():
        length = int(sample_lengths[row])
        if current and total + length > max_tokens:
            groups.append(torch.tensor(current))
            current, total = [], 0
        current.append(row)
        total += length
    if current:
        groups.append(torch.tensor(current))
    return groups


# ----------------------------------------------------------------------------- worker transport
#
# How a :class:`PrefixSharedBatch` travels to a veRL worker and back (the veRL side lives in
# ``verl_repro.verl_ext.scoring``): one jagged sample per response, tokens and position ids as
# nested tensors, ``L`` and ``A + 1`` per sample as plain ``[S]`` tensors (their presence marks the
# batch), full-sequence ``log_probs`` back in veRL's "position p predicts token p + 1" convention,
# and ``SERVED_KEY`` (one value per sample) to prove the worker applied the tree mask.

PREFIX_LENGTHS_KEY = "repro_prefix_lengths"
COPY_LENGTHS_KEY = "repro_copy_lengths"
SERVED_KEY = "repro_prefix_shared"
"""Per-sample worker output: ``SERVED_TREE`` (one tree pass) or ``SERVED_NAIVE`` (fallback)."""
SERVED_TREE, SERVED_NAIVE = 1.0, 2.0


def jagged(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Nested (jagged) ``[len(lengths), j]`` tensor of packed ``values``."""
    offsets = F.pad(lengths.cumsum(0), (1, 0)).to(values.device)
    return torch.nested.nested_tensor_from_jagged(values, offsets=offsets)


def transport_tensors(batch: PrefixSharedBatch, order: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of the worker batch, samples in dispatch ``order`` (``[Q] long``, repeats allowed).

    ``loss_mask`` / ``response_mask`` mark the scored positions (veRL counts tokens with them).
    """
    lengths = batch.sample_lengths[order]
    owner, position = segment_positions(lengths)
    source = batch.sample_offsets[:-1][order][owner] + position
    scored = torch.zeros(batch.num_tokens, dtype=torch.long)
    scored[batch.scored_index] = 1
    return {
        "input_ids": jagged(batch.input_ids[source], lengths),
        "position_ids": jagged(batch.position_ids[source], lengths),
        "loss_mask": jagged(scored[source], lengths),
        "response_mask": jagged(scored[source].clone(), lengths),
        PREFIX_LENGTHS_KEY: batch.prefix_lengths[order].clone(),
        COPY_LENGTHS_KEY: batch.copy_lengths[order].clone(),
    }


def scored_from_slots(batch: PrefixSharedBatch, order: torch.Tensor, is_padding: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``[Q] float32`` — the scored log-probs of ``batch`` from the worker's nested full-sequence
    ``log_probs`` (one entry per dispatched slot; ``is_padding`` slots are ignored)."""
    values, slot_offsets = log_probs.values().float().cpu(), log_probs.offsets().cpu()
    owner = torch.searchsorted(batch.sample_offsets, batch.scored_index, right=True) - 1
    local = batch.scored_index - batch.sample_offsets[owner]
    return values[slot_offsets[slot_of_sample(order, is_padding, len(batch))[owner]] + local]


def slot_of_sample(order: torch.Tensor, is_padding: torch.Tensor, samples: int) -> torch.Tensor:
    """``[S] long`` — the dispatched slot that carries each sample (not a layout-padding repeat)."""
    slots = torch.full((samples,), -1, dtype=torch.long)
    real = torch.nonzero(~is_padding.bool()).flatten()
    slots[order[real]] = real
    return slots


def fed_tokens(batch: PrefixSharedBatch, naive_samples: torch.Tensor) -> int:
    """Tokens the model was fed: the packed sample, or its naive sequences where ``naive_samples [S] bool``."""
    copy_sample = torch.repeat_interleave(torch.arange(len(batch)), batch.copies_per_sample)
    naive_lengths = batch.copy_starts + torch.repeat_interleave(batch.copy_lengths, batch.copies_per_sample)
    return int(batch.sample_lengths[~naive_samples].sum()) + int(naive_lengths[naive_samples[copy_sample]].sum())


def sequence_log_probs(batch: PrefixSharedBatch, scored: torch.Tensor) -> torch.Tensor:
    """``[N] float32`` — full-sequence log-probs with ``scored`` at ``scored_index`` and 0 elsewhere."""
    out = torch.zeros(batch.num_tokens, dtype=torch.float32)
    out[batch.scored_index] = scored.float().cpu()
    return out


def naive_scored_index(lengths: torch.Tensor, copy_lengths: torch.Tensor) -> torch.Tensor:
    """Packed positions of the scored tokens in :func:`naive_sequences` output (copy-major order):
    the last ``C`` tokens of each sequence are its copy, and its first ``C − 1`` predict the answer."""
    owner, position = segment_positions(copy_lengths - 1)
    ends = lengths.cumsum(0)
    return ends[owner] - copy_lengths[owner] + position
