"""``verl_repro.gradients``: the fast last-layer method equals per-token autograd (float64), on
tiny random Qwen2 / Qwen3 / Llama models with GQA, RoPE, biases and q/k norms."""

from __future__ import annotations

import pytest
import torch

from verl_repro.gradients import (
    UnsupportedModelError,
    logit_gradient_norms,
    resolve_method,
    sequence_ids,
)

VOCAB = 61


def tiny_model(family: str, seed: int = 0, attention: str = "sdpa", **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config, AutoModelForCausalLM

    common = dict(
        vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )
    common.update(overrides)
    if family == "qwen2":
        config = Qwen2Config(**common)  # biases on q/k/v
    elif family == "qwen3":
        config = Qwen3Config(head_dim=8, attention_bias=False, **common)  # q_norm / k_norm, head_dim ≠ H / heads
    else:
        config = LlamaConfig(**common)
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float64).eval()
    with torch.no_grad():  # random init is tiny-std: widen it so attention is far from uniform
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.4)
    return model


def batch(seed: int = 1, rows: int = 2, length: int = 9):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (rows, length), generator=generator)
    target_ids = torch.randint(0, VOCAB, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[0, -2:] = 0  # right padding
    return input_ids, target_ids, mask


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative difference; values that are zero analytically (a sequence's first token
    for q_proj) are measured against 1e-9 of the largest value instead of their own rounding noise."""
    return float(((a - b).abs() / b.abs().clamp(min=1e-9 * float(b.abs().max()))).max())


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("norm", ["nuc", "fro"])
def test_fast_equals_exact_float64(family, norm):
    model = tiny_model(family)
    input_ids, target_ids, mask = batch()
    kwargs = dict(layers=(-1,), matrices=("q_proj", "v_proj", "o_proj"), norm=norm)
    exact = logit_gradient_norms(model, input_ids, target_ids, mask, method="exact", **kwargs)
    fast = logit_gradient_norms(model, input_ids, target_ids, mask, method="fast", **kwargs)
    assert exact.shape == fast.shape == (2, 9, 1, 3)
    real = mask.bool()
    assert (exact[~real] == 0).all() and (fast[~real] == 0).all()
    assert (exact[real][..., 1:] > 0).all()
    # a sequence's first token attends to itself alone: its softmax is constant in q, so G(W_Q) = 0
    assert (exact[0, 1:7, 0, 0] > 0).all() and exact[0, 0, 0, 0].abs() < 1e-12
    assert relative_error(fast[real], exact[real]) < 1e-6


def test_eager_attention_right_padding():
    """The fast method reads queries and keys from whichever attention kernel the model runs.
    (Eager attention turns fully masked left-padding rows into NaN, so right padding only.)"""
    model = tiny_model("qwen3", attention="eager")
    input_ids, target_ids, mask = batch()
    mask[1] = 1
    exact = logit_gradient_norms(model, input_ids, target_ids, mask, method="exact")
    fast = logit_gradient_norms(model, input_ids, target_ids, mask, method="fast")
    real = mask.bool()
    assert relative_error(fast[real], exact[real]) < 1e-6


def test_value_projection_is_not_rank_one():
    """The V gradient of a GQA layer has rank > 1 for late tokens: nuclear > Frobenius, so the
    eigenproblem matters (a rank-one shortcut would give equal norms)."""
    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch()
    nuc = logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("v_proj",), norm="nuc", method="fast")
    fro = logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("v_proj",), norm="fro", method="fast")
    late = mask.bool().clone()
    late[:, :5] = False
    assert (nuc[late] > fro[late] * (1 + 1e-6)).all()
    # the first real token attends to itself only: every head's x̄ is the same vector, rank one
    assert torch.allclose(nuc[0, 0], fro[0, 0], rtol=1e-7)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_packed_rows_equal_padded_rows(family):
    """Two sequences packed in one row (position ids restart, no attention mask) give the same
    norms as the same sequences on their own rows."""
    model = tiny_model(family)
    generator = torch.Generator().manual_seed(3)
    first, second = torch.randint(0, VOCAB, (5,), generator=generator), torch.randint(0, VOCAB, (4,), generator=generator)
    targets_first, targets_second = torch.randint(0, VOCAB, (5,), generator=generator), torch.randint(0, VOCAB, (4,), generator=generator)
    packed_ids = torch.cat([first, second]).unsqueeze(0)
    packed_targets = torch.cat([targets_first, targets_second]).unsqueeze(0)
    positions = torch.cat([torch.arange(5), torch.arange(4)]).unsqueeze(0)
    assert sequence_ids(positions).tolist() == [[0] * 5 + [1] * 4]
    packed = logit_gradient_norms(model, packed_ids, packed_targets, position_ids=positions, method="fast")
    alone_first = logit_gradient_norms(model, first[None], targets_first[None], method="fast")
    alone_second = logit_gradient_norms(model, second[None], targets_second[None], method="fast")
    assert relative_error(packed[0, :5], alone_first[0]) < 1e-8
    assert relative_error(packed[0, 5:], alone_second[0]) < 1e-8
    exact = logit_gradient_norms(model, packed_ids, packed_targets, position_ids=positions, method="exact")
    assert relative_error(packed, exact) < 1e-6


def test_exact_covers_k_proj_and_deeper_layers():
    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch(length=6)
    assert resolve_method(model, (-1,), ("q_proj", "k_proj"), "auto") == "exact"
    assert resolve_method(model, (0,), ("q_proj",), "auto") == "exact"
    assert resolve_method(model, (1,), ("q_proj", "o_proj"), "auto") == "fast"
    norms = logit_gradient_norms(model, input_ids, target_ids, mask, layers=(0, -1), matrices=("k_proj", "q_proj"))
    assert norms.shape == (2, 6, 2, 2)
    real = mask.bool()
    assert (norms[real] > 0).all()
    with pytest.raises(UnsupportedModelError, match="last decoder layer only"):
        logit_gradient_norms(model, input_ids, target_ids, mask, layers=(0,), method="fast")
    with pytest.raises(UnsupportedModelError, match="k_proj"):
        logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("k_proj",), method="fast")


def test_exact_matches_a_hand_written_gradient_of_the_raw_logit():
    """Independent of the function: the gradient of the raw logit (not the log-prob) of one token."""
    model = tiny_model("llama")
    input_ids, target_ids, mask = batch(length=5)
    b, t = 1, 4
    weight = model.model.layers[-1].self_attn.q_proj.weight
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    (gradient,) = torch.autograd.grad(logits[b, t, target_ids[b, t]], [weight])
    expected = torch.linalg.matrix_norm(gradient, ord="nuc")
    norms = logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("q_proj",), method="exact")
    assert torch.allclose(norms[b, t, 0, 0], expected, rtol=1e-12)
    fast = logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("q_proj",), method="fast")
    assert torch.allclose(fast[b, t, 0, 0], expected, rtol=1e-9)


def test_bad_arguments_are_named():
    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch(length=4)
    with pytest.raises(ValueError, match="matrices"):
        logit_gradient_norms(model, input_ids, target_ids, mask, matrices=("w_proj",))
    with pytest.raises(ValueError, match="norm"):
        logit_gradient_norms(model, input_ids, target_ids, mask, norm="l1")
    with pytest.raises(ValueError, match="method"):
        logit_gradient_norms(model, input_ids, target_ids, mask, method="quick")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        logit_gradient_norms(model, input_ids, target_ids[:, :2], mask)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([2], r"layer 2 is outside this 2-layer model: layers must lie in \[-2, 2\)"),
        ([5], r"layer 5 is outside this 2-layer model"),  # used to be read as the last layer
        ([-3], r"layer -3 is outside this 2-layer model"),
        ([1.5], r"layers must be decoder layer indices \(ints\), got 1\.5"),  # used to be truncated to layer 1
        ([True], r"got True"),
    ],
)
def test_layers_outside_the_model_are_refused(layers, message):
    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch(length=4)
    with pytest.raises(ValueError, match=message):
        logit_gradient_norms(model, input_ids, target_ids, mask, layers=layers, method="exact")
    # the two ends of the range are the first and the last layer
    first = logit_gradient_norms(model, input_ids, target_ids, mask, layers=[-2], matrices=("q_proj",), method="exact")
    assert torch.equal(first, logit_gradient_norms(model, input_ids, target_ids, mask, layers=[0], matrices=("q_proj",), method="exact"))


def test_targets_outside_the_vocabulary_are_refused_where_measured():
    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch(length=4)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    for bad in (-100, -1, vocab_size):  # -100 used to read the logit 100th from the end
        wrong = target_ids.clone()
        wrong[0, 1] = bad
        with pytest.raises(ValueError, match=rf"target_ids must lie in \[0, {vocab_size}\) on measured tokens; found {bad} at \[0, 1\]"):
            logit_gradient_norms(model, input_ids, wrong, mask)
        # the same id where nothing is measured is no error, and changes nothing
        unmeasured = mask.clone()
        unmeasured[0, 1] = False
        expected = logit_gradient_norms(model, input_ids, target_ids, mask, measure_mask=unmeasured.bool())
        assert torch.equal(logit_gradient_norms(model, input_ids, wrong, mask, measure_mask=unmeasured.bool()), expected)
    with pytest.raises(TypeError, match="integer"):
        logit_gradient_norms(model, input_ids, target_ids.float(), mask)


def test_float32_model_agrees_with_its_float64_copy():
    model = tiny_model("qwen3")
    input_ids, target_ids, mask = batch()
    reference = logit_gradient_norms(model, input_ids, target_ids, mask, method="fast")
    single = logit_gradient_norms(model.float(), input_ids, target_ids, mask, method="fast")
    assert single.dtype == torch.float32
    real = mask.bool()
    error = (single[real].double() - reference[real]).abs() / reference[real].abs().clamp(min=1e-3)
    assert float(error.max()) < 1e-3


def test_one_forward_gives_the_logits_and_the_norms():
    """What the engine vendor does in the old-log-prob pass: the model's own forward, unchanged
    logits, and the fast norms measured inside it."""
    from verl_repro.gradients import forward_with_logit_gradient_norms

    model = tiny_model("qwen2")
    input_ids, target_ids, mask = batch()
    logits, norms = forward_with_logit_gradient_norms(model, input_ids, target_ids, mask)
    with torch.no_grad():
        plain = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], plain[real])
    exact = logit_gradient_norms(model, input_ids, target_ids, mask, method="exact")[:, :, 0]
    assert relative_error(norms[real], exact[real]) < 1e-6
    sample = torch.zeros_like(real)
    sample[0, 3] = sample[1, 6] = True
    sampled = logit_gradient_norms(model, input_ids, target_ids, mask, measure_mask=sample, method="exact")[:, :, 0]
    assert (sampled[~sample] == 0).all() and torch.allclose(sampled[sample], exact[sample])
