"""Per-token strength of the gradient of a generated token's raw logit with respect to the model's
attention projection matrices: the quantity behind the entropy-gradient inversion (docs/corrpo.md).

For token ``t`` with target ``y_t`` and raw logits ``z_t`` (no temperature, no log-softmax), and a
projection matrix ``W`` (``q_proj``, ``k_proj``, ``v_proj`` or ``o_proj`` of a decoder layer),

    G_t(W) = ∂ z[t, y_t] / ∂ W,        strength = ||G_t(W)||_*  (nuclear)  or  ||G_t(W)||_F.

Two methods, ``exact`` beside ``fast`` (the exact one is the oracle of the fast one):

* ``exact`` — one ``torch.autograd.grad`` call per token, any layer, any matrix. Offline use and tests.
* ``fast`` — every token at once, for ``q_proj``, ``v_proj`` and ``o_proj`` of the *last* decoder
  layer, from one re-run of that layer with autograd and one attention-weighted pass:

  * ``q_proj`` and ``o_proj`` act on position ``t`` alone, and in the last layer position ``t`` feeds
    only ``z_t``; so ``G_t(W_Q) = (∂z_t/∂q_t) x_tᵀ`` and ``G_t(W_O) = (∂z_t/∂o_t) a_tᵀ`` are rank one
    (their nuclear and Frobenius norms are a product of two vector norms), and a single backward of
    ``Σ_t z[t, y_t]`` to ``q`` and ``o`` yields every ``∂z_t/∂q_t`` and ``∂z_t/∂o_t``;
  * ``v_proj``: ``G_t(W_V) = Σ_h E_h u_t^h (x̄_t^h)ᵀ`` with ``u_t^h = ∂z_t/∂a_t^h`` (gradient at head
    ``h``'s attention output, placed in the rows of its key-value head by ``E_h``) and
    ``x̄_t^h = Σ_τ A^h_{tτ} x_τ`` (the attention of head ``h`` applied to the layer's normalized input).
    Its rank is at most the number of heads: with ``U`` (the placed ``u``, block diagonal by key-value
    group) and ``X̄`` (the ``x̄`` as columns), ``G_t = U X̄ᵀ`` has the singular values of the
    ``heads × heads`` matrix ``R_u R_xᵀ`` of their thin QR factors: a small SVD per token.

  ``k_proj`` (under RoPE ``G_t(W_K)`` is not low-rank) and deeper layers have no fast form; ``auto``
  picks ``fast`` when it applies and ``exact`` otherwise.

Supported families (:mod:`verl_repro.models.support`): decoder layers laid out as Llama / Qwen2 / Qwen3 (``input_layernorm`` →
``self_attn`` (``q_proj``/``k_proj``/``v_proj``/``o_proj``, optional ``q_norm``/``k_norm``, biases, GQA,
RoPE) → residual → ``post_attention_layernorm`` → ``mlp`` → residual), a final ``norm`` and an
``lm_head``. The fast method re-runs the last layer from its captured input and checks that it
reproduces the layer's own output, so a layer that does something else is refused, never
silently mis-measured.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from verl_repro.gradients.exact import exact_norms
from verl_repro.gradients.fast import (
    LastLayerCapture,
    capture_last_layer,
    fast_norms_of_model,
    fast_support_error,
    forward_with_logit_gradient_norms,
    last_layer_norms,
)
from verl_repro.gradients.layout import (
    FAST_MATRICES,
    MATRICES,
    METHODS,
    NORMS,
    check_request,
    check_targets,
    layer_indices,
    positions_from_mask,
    sequence_ids,
    token_layout,
)
from verl_repro.models.support import UnsupportedModelError, decoder_layers, final_norm


def resolve_method(model: nn.Module, layers: Sequence[int], matrices: Sequence[str], method: str) -> str:
    """``auto`` → ``fast`` when it applies, else ``exact``; ``fast`` that cannot apply is an error."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact":
        return method
    reason = fast_support_error(model, layers, matrices)
    if reason is None:
        return "fast"
    if method == "fast":
        raise UnsupportedModelError(f"method='fast' is unavailable: {reason}; use method='exact'")
    return "exact"


def logit_gradient_norms(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    position_ids: Optional[torch.Tensor] = None,
    measure_mask: Optional[torch.Tensor] = None,
    layers: Sequence[int] = (-1,),
    matrices: Sequence[str] = FAST_MATRICES,
    norm: str = "nuc",
    method: str = "auto",
) -> torch.Tensor:
    """Per-token ``||∂ z[b, t, target_ids[b, t]] / ∂ W||`` for each selected projection matrix.

    Args:
        model: a Hugging Face causal LM (Llama / Qwen2 / Qwen3 layout), any dtype.
        input_ids: ``[B, T]`` long.
        target_ids: ``[B, T]`` long — the token whose raw logit at position ``t`` is differentiated
            (usually the next input token).
        attention_mask: ``[B, T]`` — 1 on real tokens; masked positions give 0. None: all real.
        position_ids: ``[B, T]`` long — for packed rows (several sequences in one row, ``attention_mask``
            None); default: counted over ``attention_mask``.
        measure_mask: ``[B, T]`` bool — measure only these tokens (e.g. a sample for the exact
            method); default: every real token.
        layers: decoder layer indices (negative counts from the end).
        matrices: subset of ``("q_proj", "k_proj", "v_proj", "o_proj")``.
        norm: ``"nuc"`` (sum of singular values) or ``"fro"``.
        method: ``"exact"`` (one autograd call per token), ``"fast"`` (last layer, q/v/o, all tokens at
            once) or ``"auto"`` (fast when it applies).

    Returns:
        ``[B, T, len(layers), len(matrices)]`` float in the model's dtype (float32 for bf16 / fp16
        models), zero where ``attention_mask`` is 0.
    """
    layers = layer_indices(model, layers)
    matrices = tuple(matrices)
    check_request(matrices, norm, layers)
    if input_ids.shape != target_ids.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and target_ids {tuple(target_ids.shape)} must both be [B, T]")
    valid, position_ids, _ = token_layout(input_ids, attention_mask, position_ids, measure_mask)
    check_targets(model, target_ids, valid)
    method = resolve_method(model, layers, matrices, method)
    if method == "exact":
        return exact_norms(model, input_ids, target_ids, attention_mask, position_ids, valid, layers, matrices, norm)
    return fast_norms_of_model(model, input_ids, target_ids, attention_mask, position_ids, valid, matrices, norm)


__all__ = [
    "FAST_MATRICES",
    "MATRICES",
    "METHODS",
    "NORMS",
    "LastLayerCapture",
    "UnsupportedModelError",
    "capture_last_layer",
    "decoder_layers",
    "fast_support_error",
    "final_norm",
    "forward_with_logit_gradient_norms",
    "last_layer_norms",
    "logit_gradient_norms",
    "positions_from_mask",
    "resolve_method",
    "sequence_ids",
]
