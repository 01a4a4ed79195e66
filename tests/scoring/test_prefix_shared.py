"""Prefix-shared RePro scoring against the naive oracle (``hf_scoring.score_cuts``, one sequence per cut).

The layout is checked by hand first (token by token), then J from one packed pass is compared with
the naive J on the tiny checkpoint and on random-weight Qwen2 / Llama configs: many cuts, a cut at
0, adjacent cuts, answers of different lengths, left-padded prompts, random cases (hypothesis).
Then what must not happen: an ``L × L`` mask, a leaked attention implementation, a silent wrong
answer on a model that cannot take the mask (fallback with a logged reason).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_repro.analysis.hf_scoring import score_cuts
from verl_repro.scoring import (
    build_prefix_shared_batch,
    naive_sequences,
    score_cuts_naive,
    score_cuts_prefix_shared,
    tree_copy_mask,
    unsupported_reason,
)
from verl_repro.scoring import prefix_shared as ps

FLOAT32_TOLERANCE = 1e-5


def _random_model(kind: str = "qwen2", seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )
    common.update(overrides)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    if kind == "qwen3":  # q/k RMS norms before rotary
        return Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(attention_bias=True, **common)).eval()


def _assert_same_j(model, prompts, responses, cuts, cut_mask, answers, **kwargs):
    j_base, j_cuts = score_cuts(model, prompts, responses, cuts, cut_mask, answers, micro_batch_size=64)
    shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, answers, **kwargs)
    assert shared.fallback_reason is None
    assert torch.equal(torch.isnan(shared.j_base), torch.isnan(j_base))
    assert torch.equal(torch.isnan(shared.j_cuts), torch.isnan(j_cuts))
    torch.testing.assert_close(shared.j_base, j_base, rtol=0, atol=FLOAT32_TOLERANCE, equal_nan=True)
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE, equal_nan=True)
    # The benchmark's naive baseline (left-padded groups, lm_head on answers only) is the same J too.
    baseline = score_cuts_naive(model, prompts, responses, cuts, cut_mask, answers, max_tokens_per_pass=kwargs.get("max_tokens_per_pass", 64))
    torch.testing.assert_close(baseline.j_base, j_base, rtol=0, atol=FLOAT32_TOLERANCE, equal_nan=True)
    torch.testing.assert_close(baseline.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE, equal_nan=True)
    assert baseline.scored_tokens == shared.naive_tokens
    return shared


# --------------------------------------------------------------------------- layout by hand


def test_layout_hand_case():
    # Row 0: prompt [10, 11], response [20, 21, 22, 23]; cuts 1 and 3; answer [90, 91].
    # Row 1: prompt [12], response [24, 25]; cut 2 only; answer [92].
    batch = build_prefix_shared_batch(
        context_ids=torch.tensor([10, 11, 20, 21, 22, 23, 12, 24, 25]),
        context_offsets=torch.tensor([0, 6, 9]),
        prompt_lengths=torch.tensor([2, 1]),
        cuts=torch.tensor([[1, 3], [2, 0]]),
        slot_valid=torch.tensor([[True, True, True], [True, True, False]]),
        answer_ids=torch.tensor([90, 91, 92]),
        answer_lengths=torch.tensor([2, 1]),
    )
    # Row 0: prefix = prompt + response[:3] (L = 5); copies start at s = P + c - 1 = 1, 2, 4.
    row0 = [10, 11, 20, 21, 22, 11, 90, 91, 20, 90, 91, 22, 90, 91]
    pos0 = [0, 1, 2, 3, 4, 1, 2, 3, 2, 3, 4, 4, 5, 6]
    # Row 1: prefix = [12, 24, 25] (L = 3); copies start at s = 0 (base) and 2.
    row1 = [12, 24, 25, 12, 92, 25, 92]
    pos1 = [0, 1, 2, 0, 1, 2, 3]
    assert batch.input_ids.tolist() == row0 + row1
    assert batch.position_ids.tolist() == pos0 + pos1
    assert batch.prefix_lengths.tolist() == [5, 3]
    assert batch.copy_lengths.tolist() == [3, 2]
    assert batch.copy_starts.tolist() == [1, 2, 4, 0, 2]
    assert batch.copy_slot.tolist() == [0, 1, 2, 0, 1]
    assert batch.copy_row.tolist() == [0, 0, 0, 1, 1]
    # Scored positions: each copy's first A tokens; the labels are the answers.
    assert batch.scored_index.tolist() == [5, 6, 8, 9, 11, 12, 14 + 3, 14 + 5]
    assert batch.labels.tolist() == [90, 91, 90, 91, 90, 91, 92, 92]
    assert batch.scored_copy.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    assert batch.num_tokens == 14 + 7


def test_naive_expansion_hand_case():
    batch = build_prefix_shared_batch(
        context_ids=torch.tensor([10, 11, 20, 21, 22, 23]),
        context_offsets=torch.tensor([0, 6]),
        prompt_lengths=torch.tensor([2]),
        cuts=torch.tensor([[1, 3]]),
        slot_valid=torch.ones(1, 3, dtype=torch.bool),
        answer_ids=torch.tensor([90, 91]),
        answer_lengths=torch.tensor([2]),
    )
    ids, lengths = naive_sequences(batch)
    # prompt + response[:c] + answer, for c = 0, 1, 3.
    assert lengths.tolist() == [4, 5, 7]
    assert ids.tolist() == [10, 11, 90, 91] + [10, 11, 20, 90, 91] + [10, 11, 20, 21, 22, 90, 91]


def test_tree_mask_hand_case():
    # L = 4, copies of 2 tokens starting at positions 1 and 3.
    mask = tree_copy_mask(4, 2, torch.tensor([1, 3])).int()
    expected = torch.tensor(
        [
            # prefix keys  | copy keys
            [1, 0, 0, 0, 1, 0, 0, 0],
            [1, 0, 0, 0, 1, 1, 0, 0],
            [1, 1, 1, 0, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_token_counts():
    # One response: P = 10, response 100, cuts 20 / 50 / 100, answer of 4 tokens.
    prompts, responses = [list(range(1, 11))], torch.randint(1, 90, (1, 100))
    cuts, cut_mask = torch.tensor([[20, 50, 100]]), torch.ones(1, 3, dtype=torch.bool)
    shared = score_cuts_prefix_shared(_random_model(), prompts, responses, cuts, cut_mask, [[5, 6, 7, 8]])
    assert shared.scored_tokens == (10 + 100) + 4 * (4 + 1)
    assert shared.naive_tokens == (10 + 0 + 4) + (10 + 20 + 4) + (10 + 50 + 4) + (10 + 100 + 4)
    assert shared.passes == 1


# --------------------------------------------------------------------------- equality with naive


def _tiny_case(tokenizer, generator: torch.Generator):
    """Prompts / responses written with the tiny tokenizer; cuts from RePro's own selection."""
    from verl_repro.algorithms import boundary_token_ids, select_cuts, think_end_token_id

    steps = ["First, we add 3 and 4 to get 7.\n", "Wait, let me re-check the sum.\n\n", "So the total is 7.\n"]
    texts = [
        "".join(steps[int(i)] for i in torch.randint(0, 3, (n,), generator=generator)) + "</think>\n\nThe answer is 7."
        for n in (2, 7, 20)
    ]
    prompts = [tokenizer("<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n<think>\n")["input_ids"][: 5 + 7 * i] for i in range(3)]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(e) for e in encoded)
    responses = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, ids in enumerate(encoded):
        responses[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    entropy = torch.rand(responses.shape, generator=generator)
    cuts, cut_mask, _ = select_cuts(
        responses, mask, entropy, boundary_token_ids(tokenizer), think_end_token_id(tokenizer), num_segments=30
    )
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ("\\boxed{7}", "\\boxed{12}", "7")]
    return prompts, responses, cuts, cut_mask, answers


def test_equals_naive_on_tiny_checkpoint(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts, responses, cuts, cut_mask, answers = _tiny_case(tiny_tokenizer, torch.Generator().manual_seed(0))
    assert int(cut_mask.sum(dim=1).max()) >= 15, "the case should have many cuts"
    assert len({len(a) for a in answers}) > 1, "the case should have answers of different lengths"
    shared = _assert_same_j(model, prompts, responses, cuts, cut_mask, answers)
    assert shared.scored_tokens < shared.naive_tokens / 4
    # Several packs (a small budget) give the same values as one.
    smaller = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, answers, max_tokens_per_pass=64)
    assert smaller.passes == 3
    torch.testing.assert_close(smaller.j_cuts, shared.j_cuts, rtol=0, atol=FLOAT32_TOLERANCE, equal_nan=True)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_equals_naive_on_random_configs(kind, attn_implementation):
    model = _random_model(kind, seed=1)
    model.config._attn_implementation = attn_implementation
    generator = torch.Generator().manual_seed(1)
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13], [14, 15]]
    responses = torch.randint(1, 97, (4, 48), generator=generator)
    cuts = torch.tensor(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 48],  # cut 0 and adjacent cuts
            [1, 47, 48, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],      # cuts at the response end
            [5, 9, 30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],        # no valid cut: not scored
        ]
    )
    cut_mask = torch.zeros_like(cuts, dtype=torch.bool)
    cut_mask[0] = True
    cut_mask[1, :3] = True
    cut_mask[2, :3] = True
    answers = [[50, 51, 52, 53, 54, 55, 56], [60], [], [70]]  # row 2: empty answer, not scored
    shared = _assert_same_j(model, prompts, responses, cuts, cut_mask, answers)
    assert torch.isnan(shared.j_base[2:]).all() and torch.isnan(shared.j_cuts[2:]).all()
    assert model.config._attn_implementation == attn_implementation


def test_left_padded_prompts_equal_unpadded():
    model = _random_model("llama", seed=2)
    prompts = [[3, 4, 5, 6, 7], [8], [9, 10, 11]]
    width = max(len(p) for p in prompts)
    padded = torch.full((3, width), 0, dtype=torch.long)
    prompt_mask = torch.zeros(3, width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        padded[row, width - len(prompt) :] = torch.tensor(prompt)
        prompt_mask[row, width - len(prompt) :] = 1
    responses = torch.randint(1, 97, (3, 20), generator=torch.Generator().manual_seed(3))
    responses[1, 12:] = 0  # right padding after a shorter response
    cuts = torch.tensor([[0, 4, 5, 20], [2, 12, 0, 0], [19, 20, 0, 0]])
    cut_mask = cuts > 0
    cut_mask[0, 0] = True
    answers = [[40, 41], [42, 43, 44, 45], [46]]
    shared = _assert_same_j(model, prompts, responses, cuts, cut_mask, answers)
    left = score_cuts_prefix_shared(model, padded, responses, cuts, cut_mask, answers, prompt_mask=prompt_mask)
    torch.testing.assert_close(left.j_cuts, shared.j_cuts, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(left.j_base, shared.j_base, rtol=0, atol=0)


_PROPERTY_MODEL = {}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_cases_equal_naive(data):
    model = _PROPERTY_MODEL.setdefault("model", _random_model("qwen2", seed=4))
    batch = data.draw(st.integers(1, 3))
    width = data.draw(st.integers(1, 24))
    prompts = [data.draw(st.lists(st.integers(0, 96), min_size=1, max_size=6)) for _ in range(batch)]
    responses = torch.tensor([data.draw(st.lists(st.integers(0, 96), min_size=width, max_size=width)) for _ in range(batch)])
    rows_cuts = [sorted(data.draw(st.lists(st.integers(0, width), max_size=6))) for _ in range(batch)]
    k = max(1, max(len(c) for c in rows_cuts))
    cuts = torch.zeros(batch, k, dtype=torch.long)
    cut_mask = torch.zeros(batch, k, dtype=torch.bool)
    for row, row_cuts in enumerate(rows_cuts):
        cuts[row, : len(row_cuts)] = torch.tensor(row_cuts, dtype=torch.long)
        cut_mask[row, : len(row_cuts)] = True
    answers = [data.draw(st.lists(st.integers(0, 96), max_size=5)) for _ in range(batch)]
    _assert_same_j(model, prompts, responses, cuts, cut_mask, answers, max_tokens_per_pass=data.draw(st.sampled_from([8, 4096])))


def test_temperature_matches_naive_expansion():
    model = _random_model("qwen2", seed=5)
    batch = build_prefix_shared_batch(
        torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(5)), torch.tensor([0, 30]), torch.tensor([4]),
        torch.tensor([[3, 17, 26]]), torch.ones(1, 4, dtype=torch.bool), torch.tensor([7, 8, 9]), torch.tensor([3]),
    )
    for temperature in (0.7, 1.3):
        shared = ps.prefix_shared_log_probs(model, batch, temperature)
        naive, _ = ps._naive_log_probs(model, batch, temperature)
        torch.testing.assert_close(shared, naive, rtol=0, atol=FLOAT32_TOLERANCE)


# --------------------------------------------------------------------------- what must not happen


def test_no_square_mask_and_logits_only_at_answers(monkeypatch):
    """Attention masks are copies × (prefix + copies); the L-token prefix runs mask-free (causal kernel)."""
    model = _random_model("qwen2", seed=6)
    prefix, answer, cut_count = 2000, 6, 21
    seen_masks, logits_rows = [], []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        seen_masks.append((query.shape[-2], key.shape[-2], None if attn_mask is None else attn_mask.numel(), is_causal))
        return real_sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(ps.F, "scaled_dot_product_attention", recording_sdpa)
    model.lm_head.register_forward_hook(lambda module, args, output: logits_rows.append(output.shape[-2]))
    responses = torch.randint(0, 97, (1, prefix - 2))
    cuts = torch.linspace(1, prefix - 2, cut_count - 1).long().unsqueeze(0)
    batch = build_prefix_shared_batch(
        torch.cat([torch.tensor([1, 2]), responses[0]]), torch.tensor([0, prefix]), torch.tensor([2]), cuts,
        torch.ones(1, cut_count, dtype=torch.bool), torch.arange(answer), torch.tensor([answer]),
    )
    ps._tree_log_probs(model, batch, 1.0)
    copies = cut_count * (answer + 1)
    assert seen_masks == [(prefix, prefix, None, True), (copies, prefix + copies, copies * (prefix + copies), False)] * 2
    assert logits_rows == [cut_count * answer]


def test_attention_implementation_restored_after_error():
    model = _random_model("qwen2", seed=7)
    batch = build_prefix_shared_batch(
        torch.arange(10), torch.tensor([0, 10]), torch.tensor([2]), torch.tensor([[3]]),
        torch.ones(1, 2, dtype=torch.bool), torch.tensor([5]), torch.tensor([1]),
    )
    batch.input_ids[0] = 10_000  # out of the vocabulary: the embedding raises mid-forward
    with pytest.raises(IndexError):
        ps._tree_log_probs(model, batch, 1.0)
    assert model.config._attn_implementation == "sdpa"
    assert ps._ACTIVE_PLAN.get() is None


def test_sliding_window_model_falls_back_with_reason(caplog):
    model = _random_model("qwen2", seed=8, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    reason = unsupported_reason(model)
    assert reason is not None and "sliding" in reason
    prompts, responses = [[1, 2, 3]], torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(8))
    cuts, cut_mask = torch.tensor([[2, 9, 16]]), torch.ones(1, 3, dtype=torch.bool)
    with caplog.at_level(logging.WARNING, logger=ps.__name__):
        shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, [[4, 5]])
    assert shared.fallback_reason == reason
    assert any("falls back to naive" in record.getMessage() for record in caplog.records)
    j_base, j_cuts = score_cuts(model, prompts, responses, cuts, cut_mask, [[4, 5]])
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE)
    torch.testing.assert_close(shared.j_base, j_base, rtol=0, atol=FLOAT32_TOLERANCE)
    assert shared.scored_tokens == shared.naive_tokens


def test_probe_catches_an_attention_that_ignores_the_tree(monkeypatch):
    """A model whose attention silently does plain causal attention on the packed input is caught."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = _random_model("llama", seed=9)
    monkeypatch.setitem(AttentionInterface._global_mapping, ps.ATTENTION_NAME, sdpa_attention_forward)
    monkeypatch.setattr(ps, "_register_attention", lambda: None)
    monkeypatch.setattr(ps, "_PROBED", type(ps._PROBED)())
    prompts, responses = [[1, 2, 3]], torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(9))
    cuts, cut_mask = torch.tensor([[4, 12]]), torch.ones(1, 2, dtype=torch.bool)
    shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, [[7, 8, 9]])
    assert shared.fallback_reason is not None and "probe disagrees" in shared.fallback_reason
    j_base, j_cuts = score_cuts(model, prompts, responses, cuts, cut_mask, [[7, 8, 9]])
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize(
    "prompt_lengths, cuts, message",
    [
        (torch.tensor([0]), torch.tensor([[2]]), "no prompt token"),
        (torch.tensor([2]), torch.tensor([[9]]), "beyond its 8 response tokens"),
    ],
)
def test_bad_layout_inputs_name_the_row(prompt_lengths, cuts, message):
    with pytest.raises(ValueError, match=message):
        build_prefix_shared_batch(
            torch.arange(10), torch.tensor([0, 10]), prompt_lengths, cuts,
            torch.ones(1, 2, dtype=torch.bool), torch.tensor([5]), torch.tensor([1]),
        )


# --------------------------------------------------------------------------- GPU, bf16


BF16_TOLERANCE = 0.05
"""|J_shared − J_naive| in bf16: both round activations to 8 mantissa bits along different kernels."""


@pytest.mark.gpu
def test_bf16_on_gpu_within_tolerance():
    model = _random_model("qwen2", seed=10, hidden_size=256, num_attention_heads=8, num_key_value_heads=2, intermediate_size=512)
    model = model.to("cuda", torch.bfloat16)
    generator = torch.Generator().manual_seed(10)
    prompts = [list(range(1, 30)), list(range(1, 5))]
    responses = torch.randint(0, 97, (2, 1500), generator=generator)
    cuts = torch.sort(torch.randint(1, 1500, (2, 12), generator=generator), dim=1).values
    cut_mask = torch.ones_like(cuts, dtype=torch.bool)
    answers = [[5, 6, 7, 8, 9], [10, 11]]
    j_base, j_cuts = score_cuts(model, prompts, responses, cuts, cut_mask, answers)
    shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, answers)
    assert shared.fallback_reason is None
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=BF16_TOLERANCE)
    torch.testing.assert_close(shared.j_base, j_base, rtol=0, atol=BF16_TOLERANCE)
