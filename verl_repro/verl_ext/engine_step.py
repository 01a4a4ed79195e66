"""Worker side of prefix-shared scoring: the engine ``forward_step`` hook for veRL's FSDP engine.

A prefix-shared micro-batch (``PREFIX_LENGTHS_KEY`` among its keys; built by
``verl_repro.verl_ext.scoring.score_prefix_shared``) runs through veRL's own ``forward_step`` —
padding-free packing or padded rows, temperature, log-prob maths, fused kernels all unchanged —
with the tree attention of :mod:`verl_repro.scoring.attention` switched on for that forward.
Where the model cannot take it (static check, a first-use probe through the same path, Ulysses
sequence parallelism), the micro-batch is scored as naive sequences through the same stock
``forward_step`` instead, with the same number of forwards on every data-parallel rank, and the
reason is logged once. The hook needs, in the engine vendor's class (``verl_ext/engine.py``)::

    def forward_step(self, micro_batch, loss_function, forward_only):
        if is_prefix_shared_batch(micro_batch):
            return prefix_shared_forward_step(self, micro_batch, loss_function, forward_only, super().forward_step)
        return super().forward_step(micro_batch, loss_function, forward_only)

The engine is used through ``module``, ``_autocast_dtype``, ``ulysses_sequence_parallel_size`` and
``get_data_parallel_group()`` only.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from tensordict import TensorDict
from tensordict.tensorclass import NonTensorData

from verl_repro.models.support import attention_support_error, unwrap_model
from verl_repro.scoring.attention import PROBE_TOLERANCE, PrefixSharedUnsupported, probe_batch, tree_attention, tree_plan
from verl_repro.scoring.layout import (
    naive_groups,
    naive_scored_index,
    naive_sequences,
    prefix_shared_batch_from_packed,
    segment_positions,
)
from verl_repro.verl_ext import transport

logger = logging.getLogger("verl_repro")


def is_prefix_shared_batch(micro_batch: TensorDict) -> bool:
    return transport.PREFIX_LENGTHS_KEY in micro_batch.keys()


def prefix_shared_forward_step(engine, micro_batch: TensorDict, loss_function, forward_only: bool, base_forward_step):
    """Engine hook: run a prefix-shared micro-batch (``PREFIX_LENGTHS_KEY`` in its keys) through veRL's
    own ``forward_step`` (``base_forward_step``) with the tree attention switched on, or — when the
    model cannot take it (static check, first-use probe through the same path, Ulysses SP) — as
    naive sequences in as many stock forwards on every DP rank. Returns what ``forward_step`` returns,
    its ``model_output`` holding full-sequence ``log_probs`` and per-sample ``SERVED_KEY``."""
    if not forward_only:
        raise RuntimeError("prefix-shared scoring batches are forward-only (log-prob passes)")
    layout = prefix_shared_batch_from_packed(
        micro_batch["input_ids"].values(), micro_batch["position_ids"].values(),
        micro_batch["input_ids"].offsets().diff(), micro_batch[transport.PREFIX_LENGTHS_KEY], micro_batch[transport.COPY_LENGTHS_KEY],
    )
    reason = _prefix_shared_verdict(engine, micro_batch, base_forward_step)
    samples = len(layout)
    if reason is None:
        device = next(engine.module.parameters()).device
        padded = not bool(_non_tensor(micro_batch, "use_remove_padding", True))
        with tree_attention(engine.module, tree_plan(layout, device, padded=padded)):
            loss, output = base_forward_step(micro_batch, loss_function, forward_only)
        served = torch.full((samples,), transport.SERVED_TREE, device=output["model_output"]["log_probs"].device)
        output["model_output"][transport.SERVED_KEY] = transport.jagged(served, torch.ones(samples, dtype=torch.long))
        return loss, output
    if reason not in getattr(engine, "_repro_prefix_shared_logged", set()):
        engine._repro_prefix_shared_logged = getattr(engine, "_repro_prefix_shared_logged", set()) | {reason}
        logger.warning("prefix-shared scoring runs naive in this worker: %s", reason)
    scored = _naive_through_engine(engine, micro_batch, layout, base_forward_step, layout.num_tokens)
    device = next(engine.module.parameters()).device  # where the stock path leaves its outputs
    log_probs = transport.jagged(transport.sequence_log_probs(layout, scored).to(device), layout.sample_lengths)
    served = transport.jagged(torch.full((samples,), transport.SERVED_NAIVE, device=device), torch.ones(samples, dtype=torch.long))
    return torch.tensor(1.0), {"model_output": {"log_probs": log_probs, transport.SERVED_KEY: served}, "loss": 1.0, "metrics": {}}


def _non_tensor(data: TensorDict, key: str, default):
    value = data.get(key, default)
    return value.data if isinstance(value, NonTensorData) else value


def _engine_micro_batch(like: TensorDict, input_ids: torch.Tensor, lengths: torch.Tensor) -> TensorDict:
    """A stock micro-batch of plain sequences (positions 0, 1, …) with ``like``'s non-tensor settings."""
    _, position = segment_positions(lengths)
    ones = torch.ones_like(input_ids)
    batch = TensorDict(
        {
            "input_ids": transport.jagged(input_ids, lengths),
            "position_ids": transport.jagged(position, lengths),
            "loss_mask": transport.jagged(ones, lengths),
            "response_mask": transport.jagged(ones.clone(), lengths),
        },
        batch_size=[int(lengths.numel())],
    )
    for key in like.keys():
        value = like.get(key)
        if isinstance(value, NonTensorData):
            batch[key] = value
    return batch


def _naive_through_engine(engine, micro_batch, layout, base_forward_step, max_tokens: int) -> torch.Tensor:
    """``[Q]`` scored log-probs of ``layout``, one naive sequence per copy, through the stock forward;
    the number of forwards is agreed over the DP group (sharded forwards are collective)."""
    ids, lengths = naive_sequences(layout)
    copy_lengths = torch.repeat_interleave(layout.copy_lengths, layout.copies_per_sample)
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    groups = naive_groups(layout, max_tokens)
    forwards = _agree(engine, len(groups), torch.distributed.ReduceOp.MAX if torch.distributed.is_initialized() else None)
    scored = torch.empty(layout.scored_index.numel(), dtype=torch.float32)
    answer_offsets = torch.nn.functional.pad((copy_lengths - 1).cumsum(0), (1, 0))
    for step in range(forwards):
        if step < len(groups):
            group = groups[step]
            owner, position = segment_positions(lengths[group])
            group_ids = ids[offsets[group][owner] + position]
            _, output = base_forward_step(_engine_micro_batch(micro_batch, group_ids, lengths[group]), None, True)
            values = output["model_output"]["log_probs"].values().float().cpu()
            a_owner, a_position = segment_positions(copy_lengths[group] - 1)
            scored[answer_offsets[group][a_owner] + a_position] = values[naive_scored_index(lengths[group], copy_lengths[group])]
        else:  # keep step with the other ranks
            base_forward_step(_engine_micro_batch(micro_batch, torch.zeros(2, dtype=torch.long), torch.tensor([2])), None, True)
    return scored


def _agree(engine, value: int, op) -> int:
    """``value`` reduced over the engine's DP group with ``op`` (itself without a process group)."""
    if op is None:
        return value
    group = engine.get_data_parallel_group() if hasattr(engine, "get_data_parallel_group") else None
    device = next(engine.module.parameters()).device
    tensor = torch.tensor([value], device=device if device.type != "meta" else "cpu")
    torch.distributed.all_reduce(tensor, op=op, group=group)
    return int(tensor.item())


def _prefix_shared_verdict(engine, micro_batch: TensorDict, base_forward_step) -> Optional[str]:
    """None when the tree pass may run in this engine, else why not; decided once per engine and
    precision, by a static check, then a probe through ``base_forward_step`` compared with naive
    sequences; every DP rank ends with the same verdict."""
    key = (str(getattr(engine, "_autocast_dtype", None)), bool(_non_tensor(micro_batch, "use_remove_padding", True)), bool(_non_tensor(micro_batch, "use_fused_kernels", False)))
    verdicts = engine.__dict__.setdefault("_repro_prefix_shared_verdicts", {})
    if key in verdicts:
        return verdicts[key]
    reason = None
    if int(getattr(engine, "ulysses_sequence_parallel_size", 1) or 1) > 1:
        reason = "Ulysses sequence parallelism splits the sequence across ranks"
    reason = reason or attention_support_error(engine.module)
    if reason is None:
        probe = probe_batch(int(getattr(unwrap_model(engine.module).config, "vocab_size", 32)))
        order = torch.arange(len(probe))
        batch = TensorDict(transport.transport_tensors(probe, order), batch_size=[len(probe)])
        for name in micro_batch.keys():
            value = micro_batch.get(name)
            if not isinstance(value, torch.Tensor):
                batch[name] = value
        try:
            device = next(engine.module.parameters()).device
            with tree_attention(engine.module, tree_plan(probe, device, padded=not key[1])):
                _, output = base_forward_step(batch, None, True)
            tree = transport.scored_from_slots(probe, order, torch.zeros(len(probe), dtype=torch.bool), output["model_output"]["log_probs"])
            naive = _naive_through_engine(engine, batch, probe, base_forward_step, max_tokens=0)
            compute_dtype = getattr(engine, "_autocast_dtype", torch.float32)
            tolerance = PROBE_TOLERANCE.get(compute_dtype, 0.1) if next(engine.module.parameters()).dtype == torch.float32 else 0.1
            gap = float((tree - naive).abs().max())
            if not gap <= tolerance:
                reason = f"probe disagrees with naive scoring (max |Δ log p| = {gap:.3g} > {tolerance:g})"
        except PrefixSharedUnsupported as error:
            reason = f"probe: {error}"
    if torch.distributed.is_initialized():
        agreed = _agree(engine, int(reason is None), torch.distributed.ReduceOp.MIN)
        if agreed == 0 and reason is None:
            reason = "another data-parallel rank cannot run the tree pass"
    verdicts[key] = reason
    return reason
