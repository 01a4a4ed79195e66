"""The exact method: one ``torch.autograd.grad`` call per token, for any layer and any of q/k/v/o.

It is the oracle of :mod:`verl_repro.gradients.fast` (as flash-linear-attention keeps ``naive``
beside ``fused``): plain autograd and ``torch.linalg.matrix_norm``, nothing derived by hand.
"""

from __future__ import annotations

import torch

from verl_repro.gradients.layout import output_dtype
from verl_repro.models.support import decoder_layers


def _matrix_norm(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """NaN for a non-finite gradient (an overflow), which callers count and drop."""
    gradient = gradient.float() if gradient.dtype in (torch.bfloat16, torch.float16) else gradient
    if not bool(torch.isfinite(gradient).all()):
        return torch.full((), float("nan"), dtype=gradient.dtype, device=gradient.device)
    return torch.linalg.matrix_norm(gradient, ord=norm)


def exact_norms(model, input_ids, target_ids, attention_mask, position_ids, valid, layers, matrices, norm):
    all_layers = decoder_layers(model)
    weights = [getattr(all_layers[layer].self_attn, name).weight for layer in layers for name in matrices]
    saved = [w.requires_grad for w in weights]
    out_dtype = output_dtype(weights[0].dtype)
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
            chosen = logits.gather(-1, torch.where(valid, target_ids, 0).unsqueeze(-1)).squeeze(-1)  # [B, T]; unmeasured: any id
            result = per_token_norms(chosen, weights, valid, norm, out_dtype).view(*chosen.shape, len(layers), len(matrices))
    finally:
        for w, flag in zip(weights, saved):
            w.requires_grad_(flag)
    return result


def per_token_norms(chosen, weights, valid, norm, out_dtype):
    result = torch.zeros(*chosen.shape, len(weights), dtype=out_dtype, device=chosen.device)
    rows, cols = valid.nonzero(as_tuple=True)
    for b, t in zip(rows.tolist(), cols.tolist()):
        grads = torch.autograd.grad(chosen[b, t], weights, retain_graph=True, allow_unused=True)
        result[b, t] = torch.stack([
            torch.zeros((), dtype=out_dtype, device=chosen.device) if g is None else _matrix_norm(g, norm).to(out_dtype)
            for g in grads
        ])
    return result
