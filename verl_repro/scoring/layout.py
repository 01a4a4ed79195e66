"""The prefix-shared layout: J at every cut of a response from one packed sequence.

RePro's surrogate ``J(c) = mean_i log π(a_i | q, y_<=c, a_<i)`` is needed at ``m + 1`` cuts per
response (docs/repro.md). The naive way feeds one sequence per cut, ``prompt + response[:c] +
answer``: about ``(m+1)·T/2`` tokens. All cuts share the prompt and the response, so here a response
is packed once, with one *copy* of the answer per cut attached behind it::

    [ x_0 … x_{L-1} | x_{s_0} a_1 … a_A | x_{s_1} a_1 … a_A | … ]      L = P + max cut
      shared prefix    copy for cut c_0     copy for cut c_1

``s_j = P + c_j − 1`` is the last context token of cut ``c_j``. It is fed again at the head of its
copy, so that the next-token log-prob at copy positions ``0 … A−1`` is exactly
``log π(a_i | q, y_<=c_j, a_<i)`` (veRL's "position p predicts token p + 1" convention holds inside
each copy). Copy tokens take the position ids ``s_j, s_j + 1, …`` they would have in the naive
sequence; :mod:`verl_repro.scoring.attention` gives them their tree attention. Tokens fed:
``L + (m+1)(A+1)``.

The naive sequences are the same layout expanded (:func:`naive_sequences`), so the naive scorer and
the prefix-shared one read one set of slots, copies and answer positions.
"""

from __future__ import annotations

from typing import Optional

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def naive_scored_index(lengths: torch.Tensor, copy_lengths: torch.Tensor) -> torch.Tensor:
    """Packed positions of the scored tokens in :func:`naive_sequences` output (copy-major order):
    the last ``C`` tokens of each sequence are its copy, and its first ``C − 1`` predict the answer."""
    owner, position = segment_positions(copy_lengths - 1)
    ends = lengths.cumsum(0)
    return ends[owner] - copy_lengths[owner] + position


def copy_means(batch: PrefixSharedBatch, token_log_probs: torch.Tensor) -> torch.Tensor:
    """``[C] float32`` — J of every copy: the mean of its answer-token log-probs (float64 sums)."""
    copies = batch.copy_starts.numel()
    sums = torch.zeros(copies, dtype=torch.float64).index_add_(0, batch.scored_copy, token_log_probs.double())
    counts = torch.repeat_interleave(batch.copy_lengths - 1, batch.copies_per_sample)
    return (sums / counts.clamp_min(1)).to(torch.float32)


def cut_slots(cuts: torch.Tensor, cut_mask: torch.Tensor, rows: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
    """``[B, K + 1] bool`` — the slots to score: slot 0 is the base cut ``c = 0`` of every row in
    ``rows [B] bool`` that has a valid cut, slot ``k + 1`` is ``cuts[:, k]`` where ``cut_mask``; rows
    with an empty answer (``answer_lengths [B] long``) have none."""
    cut_mask = cut_mask.bool() & rows.bool().unsqueeze(1)
    slots = torch.cat([cut_mask.any(dim=1, keepdim=True), cut_mask], dim=1)
    return slots & (answer_lengths > 0).unsqueeze(1)


def scatter_j(copy_row: torch.Tensor, copy_slot: torch.Tensor, j: torch.Tensor, rows: int, cuts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(j_base [rows], j_cuts [rows, cuts])`` float32 from one J per copy (``copy_row``, ``copy_slot``
    as in :class:`PrefixSharedBatch`); NaN where no copy was scored."""
    table = torch.full((rows, cuts + 1), float("nan"), dtype=torch.float32)
    table[copy_row, copy_slot] = j.float()
    return table[:, 0], table[:, 1:]
