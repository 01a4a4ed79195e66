"""``verl_repro.models.support``: the one model-support check and attention override that RePro's
prefix-shared scoring and CorR-PO's fast gradient signal share."""

from __future__ import annotations

import pytest
import torch

from verl_repro.gradients import fast_support_error
from verl_repro.models.support import attention_override, attention_support_error, decoder_layout_error


def test_a_llama_layout_is_supported_by_both(random_causal_lm):
    for kind in ("qwen2", "qwen3", "llama"):
        model = random_causal_lm(kind)
        assert attention_support_error(model) is None, kind
        assert decoder_layout_error(model) is None, kind
        assert fast_support_error(model, (-1,), ("q_proj", "v_proj", "o_proj")) is None, kind


@pytest.mark.parametrize(
    "config_key, value, reason",
    [
        pytest.param("attn_logit_softcapping", 30.0, "config.attn_logit_softcapping is set", id="softcapping"),
        pytest.param("attention_chunk_size", 8, "config.attention_chunk_size is set", id="chunked"),
        pytest.param("layer_types", ["full_attention", "sliding_attention"], "layers with non-full attention (['sliding_attention'])", id="sliding-layers"),
    ],
)
def test_an_attention_neither_can_replace_is_named_the_same_by_both(random_causal_lm, config_key, value, reason):
    model = random_causal_lm("llama")
    setattr(model.config, config_key, value)
    assert attention_support_error(model) == reason
    # the gradient signal's fast method refuses it with the same words (and `auto` falls back to exact)
    assert fast_support_error(model, (-1,), ("q_proj",)) == reason


def test_a_layer_without_the_llama_layout_is_named(random_causal_lm):
    model = random_causal_lm("qwen2")
    del model.model.layers[-1].post_attention_layernorm
    assert decoder_layout_error(model) == "Qwen2DecoderLayer is not laid out as a Llama / Qwen2 / Qwen3 decoder layer"


def test_attention_override_switches_every_layer_and_restores_on_error(random_causal_lm):
    model = random_causal_lm("qwen2")
    model.config._attn_implementation = "sdpa"
    calls = []

    def counting(module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        calls.append(module.layer_idx)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    with pytest.raises(RuntimeError, match="inside the block"):
        with attention_override(model, "verl_repro_test_counting", counting):
            assert model.config._attn_implementation_internal == "verl_repro_test_counting"
            model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)
            raise RuntimeError("inside the block")
    assert calls == [0, 1]  # both decoder layers went through the override
    assert model.config._attn_implementation_internal == "sdpa"
