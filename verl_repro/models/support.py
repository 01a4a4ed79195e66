"""What this package needs of a transformers model, checked in one place, and the one way it swaps a
model's attention for its own.

Two model-level features run inside a Hugging Face model: RePro's prefix-shared scoring (a tree
attention, :mod:`verl_repro.scoring.attention`) and CorR-PO's fast gradient signal (a recorder of the
last layer's queries and keys, :mod:`verl_repro.gradients.fast`). Both need a causal decoder whose
attention dispatches through transformers' ``AttentionInterface`` and whose masks they can rebuild
(:func:`attention_support_error`); the gradient signal also needs the Llama / Qwen2 / Qwen3 decoder
layer layout (:func:`decoder_layout_error`). Both swap the attention implementation the same way
(:func:`attention_override`), restoring the model's own afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

from torch import nn

LLAMA_LAYOUT_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")
"""Architectures laid out as :func:`decoder_layout_error` requires (the driver reads them from a
checkpoint's ``config.json`` before any model is loaded)."""
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class UnsupportedModelError(ValueError):
    """The model's layout is not one a fast path knows; the message says why."""


def unwrap_model(model):
    """The transformers model inside FSDP1 / PEFT wrappers (FSDP2 keeps the model's own class)."""
    model = getattr(model, "_fsdp_wrapped_module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def model_class(model) -> type:
    """The model's own class: FSDP2 swaps in a generated subclass (``FSDPQwen2ForCausalLM``) defined
    inside torch, and the attention code lives with the first class of the MRO that is not torch's."""
    return next(c for c in type(model).__mro__ if not c.__module__.startswith("torch."))


def model_configs(module: nn.Module) -> list:
    """Every distinct transformers config held by ``module`` or its submodules (composite models hold several)."""
    from transformers import PretrainedConfig

    seen = {}
    for part in module.modules():
        config = getattr(part, "config", None)
        if isinstance(config, PretrainedConfig):
            seen[id(config)] = config
    return list(seen.values())


def attention_support_error(model) -> Optional[str]:
    """Why our attention cannot replace ``model``'s, or None when it can (static checks of the class
    and the config: a causal decoder, full attention everywhere, 1-D positions, no soft-capping)."""
    from transformers import PreTrainedModel

    model = unwrap_model(model)
    if not isinstance(model, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers PreTrainedModel"
    cls = model_class(model)
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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (``model.model.layers`` for Llama / Qwen2 / Qwen3)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(f"{type(model).__name__} has no decoder layer list at model.model.layers")
    return layers


def final_norm(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    norm = getattr(decoder, "norm", None)
    if not isinstance(norm, nn.Module):
        raise UnsupportedModelError(f"{type(model).__name__} has no final norm at model.model.norm")
    return norm


def decoder_layout_error(model: nn.Module) -> Optional[str]:
    """Why ``model``'s last decoder layer is not laid out as Llama / Qwen2 / Qwen3 (``input_layernorm``
    → ``self_attn`` with q/k/v/o linear projections → residual → ``post_attention_layernorm`` → ``mlp``
    → residual, then a final norm and an ``lm_head``), or None when it is."""
    layer = decoder_layers(model)[-1]
    attention = getattr(layer, "self_attn", None)
    needed = ("input_layernorm", "post_attention_layernorm", "mlp")
    if attention is None or any(not hasattr(layer, name) for name in needed):
        return f"{type(layer).__name__} is not laid out as a Llama / Qwen2 / Qwen3 decoder layer"
    if any(not isinstance(getattr(attention, name, None), nn.Linear) for name in PROJECTIONS):
        return f"{type(attention).__name__} has no q_proj / k_proj / v_proj / o_proj linear layers"
    if not hasattr(model, "lm_head"):
        return f"{type(model).__name__} has no lm_head"
    return None


@contextlib.contextmanager
def attention_override(module: nn.Module, name: str, attention: Callable) -> Iterator[None]:
    """Run every attention layer of ``module`` through ``attention`` (registered in transformers'
    ``AttentionInterface`` as ``name``) for the forwards inside the block; each config's own
    implementation is restored afterwards, also on error."""
    from transformers import AttentionInterface

    if AttentionInterface._global_mapping.get(name) is not attention:
        AttentionInterface.register(name, attention)
    configs = model_configs(module)
    previous = [config._attn_implementation_internal for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = name
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation_internal = implementation
