"""The fast method: every token at once, for ``q_proj``, ``v_proj`` and ``o_proj`` of the last decoder
layer, from one re-run of that layer with autograd and one attention-weighted pass (the closed forms
are in :mod:`verl_repro.gradients`). :mod:`verl_repro.gradients.exact` is its oracle.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from verl_repro.gradients.exact import per_token_norms
from verl_repro.gradients.layout import FAST_MATRICES, check_request, check_targets, output_dtype, token_layout
from verl_repro.models.support import (
    UnsupportedModelError,
    attention_override,
    attention_support_error,
    decoder_layers,
    decoder_layout_error,
    final_norm,
)

CAPTURE_ATTENTION = "verl_repro_capture"
# Bytes of attention scratch (probabilities and attention-weighted inputs) per chunk of queries.
ATTENTION_CHUNK_BYTES = 64 * 2**20
ATTENTION_CHUNK_QUERIES = 128


def fast_support_error(model: nn.Module, layers: Sequence[int], matrices: Sequence[str]) -> Optional[str]:
    """Why ``method="fast"`` cannot serve this request, or None when it can."""
    num_layers = len(decoder_layers(model))
    resolved = {layer % num_layers for layer in layers}
    if resolved != {num_layers - 1}:
        return f"the fast method covers the last decoder layer only (asked for layers {list(layers)})"
    unknown = sorted(set(matrices) - set(FAST_MATRICES))
    if unknown:
        return f"the fast method covers {list(FAST_MATRICES)} only, not {unknown} (k_proj under RoPE has no low-rank form)"
    reason = decoder_layout_error(model) or attention_support_error(model)
    if reason is not None:
        return reason
    if getattr(decoder_layers(model)[-1].self_attn, "sliding_window", None):
        return "the last layer uses sliding-window attention, which the fast method does not model"
    config = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, key, None):
            return f"the model's config sets {key}, which the fast method does not model"
    return None


@dataclass
class LastLayerCapture:
    """What a forward pass leaves behind for :func:`last_layer_norms` (filled by :func:`capture_last_layer`)."""

    hidden_in: Optional[torch.Tensor] = None
    """``[B, T, H]`` — input of the last decoder layer."""
    hidden_out: Optional[torch.Tensor] = None
    """``[B, T, H]`` — its output (the re-run is checked against it)."""
    layer_kwargs: Optional[dict] = None
    """Keyword arguments the model passed to the layer (position embeddings, mask, ...)."""


@contextmanager
def capture_last_layer(model: nn.Module, on_output: Optional[Callable[[LastLayerCapture], None]] = None) -> Iterator[LastLayerCapture]:
    """Record the last decoder layer's input, keyword arguments and output during a forward.

    ``on_output`` runs inside the layer's forward hook, before any hook registered earlier (such as
    FSDP's reshard), so the layer's and the model's root parameters are still materialized there.
    """
    layer = decoder_layers(model)[-1]
    capture = LastLayerCapture()

    def before(module, args, kwargs):
        capture.hidden_in = args[0] if args else kwargs["hidden_states"]
        capture.layer_kwargs = {key: value for key, value in kwargs.items() if key != "hidden_states"}

    def after(module, args, kwargs, output):
        capture.hidden_out = output[0] if isinstance(output, tuple) else output
        if on_output is not None:
            on_output(capture)

    handles = [
        layer.register_forward_pre_hook(before, with_kwargs=True),
        layer.register_forward_hook(after, with_kwargs=True, prepend=True),
    ]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def fast_norms_of_model(model, input_ids, target_ids, attention_mask, position_ids, valid, matrices, norm):
    _, norms = forward_with_logit_gradient_norms(
        model, input_ids, target_ids, attention_mask, position_ids=position_ids, measure_mask=valid,
        matrices=matrices, norm=norm, return_logits=False,
    )
    return norms.unsqueeze(2)


def forward_with_logit_gradient_norms(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    position_ids: Optional[torch.Tensor] = None,
    measure_mask: Optional[torch.Tensor] = None,
    matrices: Sequence[str] = FAST_MATRICES,
    norm: str = "nuc",
    return_logits: bool = True,
):
    """One no-grad forward that also measures the fast last-layer norms, as the engine vendor does in
    veRL's old-log-prob pass: ``(logits [B, T, V] or None, norms [B, T, len(matrices)])``.

    ``measure_mask`` (``[B, T]`` bool, default ``attention_mask``): tokens to measure; others give 0.
    """
    check_request(tuple(matrices), norm, (-1,))
    reason = fast_support_error(model, (-1,), matrices)
    if reason is not None:
        raise UnsupportedModelError(reason)
    valid, position_ids, segments = token_layout(input_ids, attention_mask, position_ids, measure_mask)
    check_targets(model, target_ids, valid)
    result = {}

    def measure(capture: LastLayerCapture) -> None:
        # unmeasured positions may hold any id (padding, -100): they read row 0 and are masked out
        lm_rows = model.lm_head.weight[torch.where(valid, target_ids, 0)].detach()  # [B, T, H]
        result["norms"] = last_layer_norms(
            decoder_layers(model)[-1], final_norm(model), capture, lm_rows, valid, segments, matrices=matrices, norm=norm
        )

    with torch.no_grad(), capture_last_layer(model, on_output=measure):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if return_logits:
            logits = model(**inputs).logits
        else:  # the norms need the decoder only, not the [B, T, V] logits
            model.get_decoder()(**inputs)
            logits = None
    return logits, result["norms"]


def last_layer_norms(
    layer: nn.Module,
    norm_module: nn.Module,
    capture: LastLayerCapture,
    lm_head_rows: torch.Tensor,
    valid: torch.Tensor,
    segments: torch.Tensor,
    *,
    matrices: Sequence[str] = FAST_MATRICES,
    norm: str = "nuc",
    method: str = "fast",
) -> torch.Tensor:
    """Norms for the last layer from a captured forward: ``[B, T, len(matrices)]``.

    ``method="fast"`` is the closed form of the module docstring (q/v/o); ``method="exact"`` takes one
    backward of the re-run layer per token, for any of q/k/v/o (used where the fast form does not
    apply, e.g. ``k_proj``).

    Args:
        layer: the last decoder layer (parameters materialized).
        norm_module: the model's final norm.
        capture: the layer's input, keyword arguments and output from the forward.
        lm_head_rows: ``[B, T, H]`` — ``lm_head.weight[target]`` per token (``z_t = lm_head_rows_t · n_t``).
        valid: ``[B, T]`` bool — tokens to measure (others give 0 and take no part in the backward).
        segments: ``[B, T]`` long — sequence index within a row (several for packed rows, negative on
            padding); a key is visible to a query of the same row and segment at or before it.
        matrices: subset of ``("q_proj", "v_proj", "o_proj")``.
        norm: ``"nuc"`` or ``"fro"``.
    """
    attention = layer.self_attn
    hidden_in = capture.hidden_in.detach()
    out_dtype = output_dtype(hidden_in.dtype)
    saved: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            saved[name + "_in"] = args[0]
            saved[name + "_out"] = output

        return hook

    handles = [getattr(attention, name).register_forward_hook(keep(name)) for name in ("q_proj", "o_proj")]
    try:
        with torch.enable_grad(), _capture_attention(attention) as scores_inputs:
            x = layer.input_layernorm(hidden_in)
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            attn_out = attention(hidden_states=x, **_attention_kwargs(capture.layer_kwargs))[0]
            residual = hidden_in + attn_out
            hidden_out = residual + layer.mlp(layer.post_attention_layernorm(residual))
            if capture.hidden_out is not None:
                _check_rerun(hidden_out.detach(), capture.hidden_out.detach())
            chosen = (norm_module(hidden_out) * lm_head_rows.to(hidden_out.dtype)).sum(-1)  # z[t, y_t]
            if method == "exact":
                return per_token_norms(chosen, [getattr(attention, name).weight for name in matrices], valid, norm, out_dtype)
            total = chosen.masked_fill(~valid, 0).sum()
            grad_q, grad_a, grad_o = torch.autograd.grad(total, [saved["q_proj_out"], saved["o_proj_in"], saved["o_proj_out"]])
    finally:
        for handle in handles:
            handle.remove()

    with torch.no_grad():
        x = saved["q_proj_in"].detach().to(out_dtype)
        results = []
        for name in matrices:
            if name == "q_proj":
                values = grad_q.to(out_dtype).norm(dim=-1) * x.norm(dim=-1)
            elif name == "o_proj":
                values = grad_o.to(out_dtype).norm(dim=-1) * saved["o_proj_in"].detach().to(out_dtype).norm(dim=-1)
            else:
                values = _value_norms(attention, scores_inputs, x, grad_a.to(out_dtype), valid, segments, norm)
            results.append(values)
        return torch.stack(results, dim=-1).masked_fill(~valid.unsqueeze(-1), 0)


def _attention_kwargs(layer_kwargs: Optional[dict]) -> dict:
    kwargs = dict(layer_kwargs or {})
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    kwargs["use_cache"] = False
    return kwargs


def _check_rerun(recomputed: torch.Tensor, actual: torch.Tensor) -> None:
    scale = actual.abs().amax().clamp(min=1e-6)
    tolerance = 1e-3 if actual.dtype == torch.float64 else 5e-2
    error = (recomputed.to(actual.dtype) - actual).abs().amax() / scale
    if not bool(error <= tolerance):
        raise UnsupportedModelError(
            f"re-running the last decoder layer as input_layernorm → self_attn → mlp does not reproduce its "
            f"output (relative error {float(error):.3g}); this layer layout is not supported by the fast method"
        )


@dataclass
class _AttentionInputs:
    query: Optional[torch.Tensor] = None  # [B, heads, T, d] after norms and RoPE
    key: Optional[torch.Tensor] = None  # [B, kv_heads, T, d]
    scaling: Optional[float] = None


@contextmanager
def _capture_attention(attention: nn.Module) -> Iterator[_AttentionInputs]:
    """Route one attention module's kernel call through a recorder of its (post-RoPE) queries and keys;
    the model's own kernel still computes the output."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    own = attention.config._attn_implementation_internal
    eager = getattr(sys.modules[type(attention).__module__], "eager_attention_forward")
    original = eager if own in (None, "eager") else ALL_ATTENTION_FUNCTIONS[own]
    inputs = _AttentionInputs()

    def recorder(module, query, key, value, attention_mask, scaling=None, **kwargs):
        if module is attention:
            inputs.query, inputs.key = query.detach(), key.detach()
            inputs.scaling = module.scaling if scaling is None else scaling
        return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    with attention_override(attention, CAPTURE_ATTENTION, recorder):
        yield inputs
    if inputs.query is None:
        raise UnsupportedModelError(f"{type(attention).__name__} did not call the attention interface")


def _value_norms(attention, scores_inputs: _AttentionInputs, x, grad_a, valid, segments, norm):
    """``||Σ_h E_h u^h (x̄^h)ᵀ|| = ||U X̄ᵀ||`` per token: ``[B, T]``.

    With thin QR factorizations ``U = Q_u R_u`` and ``X̄ = Q_x R_x``, ``U X̄ᵀ`` has the singular values of
    the ``heads × heads`` matrix ``R_u R_xᵀ``. Taking them from an SVD (not from eigenvalues of a
    Gram matrix, whose square roots would amplify rounding of the zero eigenvalues of early tokens)
    keeps the error at the working precision.
    """
    query, key = scores_inputs.query.to(x.dtype), scores_inputs.key.to(x.dtype)
    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # U is block diagonal by key-value group: heads of different groups write to disjoint rows of W_V.
    u = grad_a.view(batch, length, kv_heads, group, head_dim).transpose(-1, -2)  # [B, T, kv, d, group]
    r_u = torch.zeros(batch, length, heads, heads, dtype=x.dtype, device=x.device)
    r_groups = torch.linalg.qr(_finite(u), mode="r").R  # [B, T, kv, group, group]
    for g in range(kv_heads):
        r_u[..., g * group : (g + 1) * group, g * group : (g + 1) * group] = r_groups[:, :, g]
    r_x = _attended_input_factor(query, key, x, segments, scores_inputs.scaling)  # [B, T, heads, heads]
    small = r_u @ r_x.transpose(-1, -2)
    values = torch.linalg.svdvals(small).sum(-1) if norm == "nuc" else torch.linalg.matrix_norm(small)
    # An overflowed gradient (bf16) yields NaN for its token, which callers count and drop.
    nonfinite = ~torch.isfinite(grad_a).all(-1)
    return values.masked_fill(nonfinite, float("nan"))


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values.nan_to_num(0.0, posinf=0.0, neginf=0.0)


def _attended_input_factor(query, key, x, segments, scaling):
    """``R_x`` of the thin QR of ``X̄_t = [x̄^1_t … x̄^h_t]`` with ``x̄^h_t = Σ_τ A^h_{tτ} x_τ``:
    ``[B, T, heads, heads]``, computed by chunks of queries (``[chunk, heads, H]`` at a time)."""
    batch, heads, length, _ = query.shape
    group = heads // key.shape[1]
    key = key.repeat_interleave(group, dim=1)
    position = torch.arange(length, device=x.device)
    values = _finite(x)
    chunk = max(1, ATTENTION_CHUNK_BYTES // max(1, batch * heads * (length + x.shape[-1]) * x.element_size()))
    chunk = min(chunk, ATTENTION_CHUNK_QUERIES)  # short chunks skip most of the causally hidden keys
    factors = []
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        # causal: the queries of this chunk see keys before `stop` only
        scores = torch.einsum("bhqd,bhkd->bhqk", query[:, :, start:stop], key[:, :, :stop]) * scaling
        visible = (
            (position[None, start:stop, None] >= position[None, None, :stop])
            & (segments[:, start:stop, None] == segments[:, None, :stop])
            & (segments[:, None, :stop] >= 0)
        )
        scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(x.dtype).nan_to_num(0.0)
        attended = torch.einsum("bhqk,bkc->bqch", probs, values[:, :stop])  # [B, q, H, heads]
        factors.append(torch.linalg.qr(attended, mode="r").R)
    return torch.cat(factors, dim=1)
