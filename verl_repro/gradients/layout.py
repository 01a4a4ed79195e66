"""What the two methods of :mod:`verl_repro.gradients` share: the names of the matrices and norms and
the token layout of a batch (positions, packed sequences, the tokens to measure). The model's layout
(decoder layers, final norm, what is supported) is :mod:`verl_repro.models.support`'s."""

from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

from verl_repro.models.support import PROJECTIONS, decoder_layers

MATRICES = PROJECTIONS
FAST_MATRICES = ("q_proj", "v_proj", "o_proj")
NORMS = ("nuc", "fro")
METHODS = ("auto", "fast", "exact")


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` position ids counted over real tokens (0 on left padding), as veRL builds them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` packed-sequence index of each token: a new sequence starts wherever the position does
    not follow the previous one by 1 (the rule transformers applies to packed inputs)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).long().cumsum(-1)


def token_layout(input_ids, attention_mask, position_ids, measure_mask):
    """``(valid, position_ids, segments)``, each ``[B, T]``: tokens to measure (real and in
    ``measure_mask``), position ids (counted over the mask unless given), and the sequence index of
    each token (packed rows when ``attention_mask`` is None; padding is segment −1, seen by no query)."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    valid = real if measure_mask is None else measure_mask.bool() & real
    if position_ids is None:
        position_ids = positions_from_mask(real)
    if attention_mask is None:
        segments = sequence_ids(position_ids)
    else:
        segments = torch.where(real, 0, -1).to(position_ids.dtype)
    return valid, position_ids, segments


def layer_indices(model: nn.Module, layers: Sequence[int]) -> tuple[int, ...]:
    """The decoder layer indices as ints, each in ``[-L, L)``: an index past the model must not be
    read as some other layer (``5`` of a 2-layer model as the last one), nor ``1.5`` as layer 1."""
    count = len(decoder_layers(model))
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f"layers must be decoder layer indices (ints), got {layer!r} in {list(layers)!r}")
        if not -count <= layer < count:
            raise ValueError(f"layer {layer} is outside this {count}-layer model: layers must lie in [-{count}, {count})")
    return tuple(int(layer) for layer in layers)


def check_targets(model: nn.Module, target_ids: torch.Tensor, valid: torch.Tensor) -> None:
    """Every measured target is a token of the vocabulary (a negative id such as -100 would index the
    logits from their end), as the kernels check their labels; unmeasured positions may hold anything."""
    if target_ids.dtype.is_floating_point or target_ids.dtype == torch.bool:
        raise TypeError(f"target_ids must be an integer tensor, got {target_ids.dtype}")
    vocab_size = model.get_output_embeddings().weight.shape[0]
    bad = valid & ((target_ids < 0) | (target_ids >= vocab_size))
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target_ids must lie in [0, {vocab_size}) on measured tokens; found {int(target_ids[b, t])} at [{b}, {t}]: "
            "leave such positions out with attention_mask or measure_mask"
        )


def check_request(matrices: Sequence[str], norm: str, layers: Sequence[int]) -> None:
    if not matrices or any(m not in MATRICES for m in matrices):
        raise ValueError(f"matrices must be a non-empty subset of {MATRICES}, got {list(matrices)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not layers or any(not isinstance(layer, int) for layer in layers):
        raise ValueError(f"layers must be a non-empty sequence of ints, got {layers!r}")


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
