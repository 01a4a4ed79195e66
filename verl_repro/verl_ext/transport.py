"""How scoring sequences travel to a veRL worker and back (the driver side of ``repro.scorer``).

Two layouts, one transport: plain sequences (:class:`ScoringSequences`, the ``naive`` mode) and
prefix-shared samples (:func:`transport_tensors`). Either goes as a jagged ``TensorDict`` like the
one veRL's trainer sends, laid out by :func:`dp_layout` so every data-parallel rank gets the same
number of whole micro-batches and similar token counts; padding slots are added for that and
dropped from the output. Full-sequence ``log_probs`` come back in veRL's "position p predicts token
p + 1" convention.

A prefix-shared sample carries ``L`` and ``A + 1`` as plain ``[S]`` tensors (their presence marks the
batch for :mod:`verl_repro.verl_ext.engine_step`), and the worker answers ``SERVED_KEY`` (one value
per sample) to prove it applied the tree mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from verl_repro.scoring.layout import PrefixSharedBatch, segment_positions

PREFIX_LENGTHS_KEY = "repro_prefix_lengths"
COPY_LENGTHS_KEY = "repro_copy_lengths"
SERVED_KEY = "repro_prefix_shared"
"""Per-sample worker output: ``SERVED_TREE`` (one tree pass) or ``SERVED_NAIVE`` (fallback)."""
SERVED_TREE, SERVED_NAIVE = 1.0, 2.0


def jagged(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Nested (jagged) ``[len(lengths), j, ...]`` tensor of packed ``values [sum(lengths), ...]``.

    Lengths on the CPU also give the shortest and longest length as hints (without them
    ``to_padded_tensor()`` pads to the total length); on a GPU they are left out, as reading them
    would wait for the device.
    """
    offsets = F.pad(lengths.cumsum(0), (1, 0)).to(device=values.device, dtype=lengths.dtype)
    hints = {}
    if lengths.device.type == "cpu" and lengths.numel():
        hints = {"min_seqlen": int(lengths.min()), "max_seqlen": int(lengths.max())}
    return torch.nested.nested_tensor_from_jagged(values, offsets=offsets, **hints)


# ----------------------------------------------------------------------------- plain sequences


@dataclass
class ScoringSequences:
    """A list of ``N`` token sequences to score, packed: sequence ``n`` is
    ``input_ids[offsets[n]:offsets[n+1]]`` and its last ``answer_lengths[n]`` tokens are scored."""

    input_ids: torch.Tensor
    """``[total] long``."""
    position_ids: torch.Tensor
    """``[total] long`` — 1-D (text) positions."""
    lengths: torch.Tensor
    """``[N] long`` — each ≥ ``answer_lengths + 1`` (a scored token needs a token before it)."""
    answer_lengths: torch.Tensor
    """``[N] long`` — ≥ 1."""

    @property
    def offsets(self) -> torch.Tensor:
        return torch.nn.functional.pad(self.lengths.cumsum(0), (1, 0))

    def __len__(self) -> int:
        return int(self.lengths.numel())


def dp_layout(lengths: torch.Tensor, dp_size: int, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Order ``N`` sequences for a DP dispatch that splits the batch into ``dp_size`` contiguous chunks.

    Every rank gets the same number of sequences, a whole number of micro-batches (veRL's engine
    requires it without dynamic batch size) of at most ``micro_batch_size``; sequences are dealt longest first in snake
    order, so ranks get similar token counts and each micro-batch holds similar lengths. Free
    slots repeat the shortest sequence and are flagged.

    Returns:
        order: ``[Q] long`` — source index of each dispatched slot (``Q = dp_size · per_rank``).
        is_padding: ``[Q] bool`` — slots that only fill the layout.
        micro_batch_size: the micro-batch size used (≤ the requested one, balanced so each rank pads
            fewer sequences than it has micro-batches).
    """
    count = int(lengths.numel())
    if count == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), micro_batch_size
    per_rank = -(-count // dp_size)
    # As few micro-batches as the size limit allows, then even sizes: padding < one per micro-batch.
    num_micro_batches = -(-per_rank // max(1, micro_batch_size))
    micro_batch_size = -(-per_rank // num_micro_batches)
    per_rank = num_micro_batches * micro_batch_size
    by_length = torch.argsort(lengths, descending=True, stable=True)
    rank_round = torch.arange(count) // dp_size
    rank = torch.arange(count) % dp_size
    rank = torch.where(rank_round % 2 == 0, rank, dp_size - 1 - rank)
    slots = torch.full((dp_size, per_rank), -1, dtype=torch.long)
    slots[rank, rank_round] = by_length
    order = slots.reshape(-1)
    is_padding = order < 0
    order = torch.where(is_padding, by_length[-1], order)
    return order, is_padding, micro_batch_size


class LogProbBackend:
    """Answer-token log-probs of :class:`ScoringSequences` through one veRL worker group.

    Args:
        compute_log_prob: the worker-group method — ``ref_policy_wg.compute_ref_log_prob`` or
            ``actor_rollout_wg.compute_log_prob``: jagged ``TensorDict`` in (its length must
            divide by the DP size), ``TensorDict`` with full-sequence nested ``log_probs`` out.
        dp_size: data-parallel size of that worker group's mesh.
        temperature: logits are divided by it, as in veRL's own log-prob passes.
        extra_non_tensor: more non-tensor keys for the worker (``no_lora_adapter=True`` when the
            reference is the actor without its LoRA adapter).
    """

    def __init__(
        self,
        compute_log_prob: Callable[[TensorDict], TensorDict],
        dp_size: int,
        temperature: float,
        extra_non_tensor: Optional[Mapping[str, Any]] = None,
    ):
        if dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {dp_size}")
        self.compute_log_prob = compute_log_prob
        self.dp_size = int(dp_size)
        self.temperature = float(temperature)
        self.extra_non_tensor = dict(extra_non_tensor or {})

    def build_batch(self, sequences: ScoringSequences, micro_batch_size: int) -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
        """The dispatched jagged ``TensorDict`` (DP layout) with its ``order`` / ``is_padding``."""
        from verl.utils import tensordict_utils as tu

        order, is_padding, micro_batch_size = dp_layout(sequences.lengths, self.dp_size, micro_batch_size)
        lengths = sequences.lengths[order]
        answer_lengths = sequences.answer_lengths[order]
        owner, position = segment_positions(lengths)
        source = sequences.offsets[:-1][order][owner] + position
        answer_mask = torch.ones(int(answer_lengths.sum()), dtype=torch.long)
        batch = TensorDict(
            {
                "input_ids": jagged(sequences.input_ids[source], lengths),
                "position_ids": jagged(sequences.position_ids[source], lengths),
                # The engine scores the last |a| tokens as the "response" of each sequence.
                "response_mask": jagged(answer_mask, answer_lengths),
                "loss_mask": jagged(answer_mask.clone(), answer_lengths),
            },
            batch_size=[int(order.numel())],
        )
        tu.assign_non_tensor(
            batch,
            temperature=self.temperature,
            calculate_entropy=False,
            compute_loss=False,
            use_dynamic_bsz=False,
            micro_batch_size_per_gpu=micro_batch_size,
            **self.extra_non_tensor,
        )
        return batch, order, is_padding

    def answer_log_probs(self, sequences: ScoringSequences, micro_batch_size: int) -> torch.Tensor:
        """``[sum(answer_lengths)] float32`` — log-probs of the answer tokens, packed in sequence order."""
        from verl.workers.utils.padding import response_from_nested

        if len(sequences) == 0:
            return torch.zeros(0, dtype=torch.float32)
        batch, order, is_padding = self.build_batch(sequences, micro_batch_size)
        output = self.compute_log_prob(batch)
        if output is None or "log_probs" not in output.keys():
            raise RuntimeError("RePro scoring: the worker returned no log_probs")
        if len(output) != len(batch):
            raise RuntimeError(f"RePro scoring: sent {len(batch)} sequences, the worker returned {len(output)}")
        # Full-sequence log-probs are shifted by one (position p predicts token p + 1).
        answers = response_from_nested(output["log_probs"], batch["response_mask"])
        values = answers.values().to(torch.float32)
        slot_offsets = answers.offsets()
        # Undo the layout: slot of each source sequence, then its answer tokens in source order.
        slot_of_source = torch.empty(len(sequences), dtype=torch.long)
        real_slots = torch.nonzero(~is_padding).squeeze(1)
        slot_of_source[order[real_slots]] = real_slots
        owner, position = segment_positions(sequences.answer_lengths)
        return values[slot_offsets[slot_of_source][owner] + position]


# ----------------------------------------------------------------------------- prefix-shared samples


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
