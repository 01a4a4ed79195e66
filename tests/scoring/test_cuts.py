"""J at the cuts, prefix-shared and naive, against the plain oracle (``reference.score_cuts_oracle``).

J from one packed pass is compared with the oracle on the tiny checkpoint and on random-weight
Qwen2 / Llama / Qwen3 configs: many cuts, a cut at 0, adjacent cuts, answers of different lengths,
left-padded prompts, random cases (hypothesis). A model that cannot take the mask is scored the
naive way with a logged reason, never silently wrong.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_repro.scoring import attention
from verl_repro.scoring import cuts as scoring_cuts
from verl_repro.models.support import attention_support_error
from verl_repro.scoring import score_cuts_naive, score_cuts_prefix_shared
from verl_repro.scoring.layout import build_prefix_shared_batch
from verl_repro.scoring.reference import score_cuts_oracle

FLOAT32_TOLERANCE = 1e-5


def _assert_same_j(model, prompts, responses, cuts, cut_mask, answers, **kwargs):
    j_base, j_cuts = score_cuts_oracle(model, prompts, responses, cuts, cut_mask, answers, micro_batch_size=64)
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


def _tiny_case(tokenizer, generator: torch.Generator):
    """Prompts / responses written with the tiny tokenizer; cuts from RePro's own selection."""
    from verl_repro.algorithms import step_boundaries, select_cuts, think_end_token_id

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
        responses, mask, entropy, step_boundaries(tokenizer), think_end_token_id(tokenizer), num_segments=30
    )
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ("\\boxed{7}", "\\boxed{12}", "7")]
    return prompts, responses, cuts, cut_mask, answers


def test_token_counts(random_causal_lm):
    # One response: P = 10, response 100, cuts 20 / 50 / 100, answer of 4 tokens.
    prompts, responses = [list(range(1, 11))], torch.randint(1, 90, (1, 100))
    cuts, cut_mask = torch.tensor([[20, 50, 100]]), torch.ones(1, 3, dtype=torch.bool)
    shared = score_cuts_prefix_shared(random_causal_lm(), prompts, responses, cuts, cut_mask, [[5, 6, 7, 8]])
    assert shared.scored_tokens == (10 + 100) + 4 * (4 + 1)
    assert shared.naive_tokens == (10 + 0 + 4) + (10 + 20 + 4) + (10 + 50 + 4) + (10 + 100 + 4)
    assert shared.passes == 1


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
def test_equals_naive_on_random_configs(kind, attn_implementation, random_causal_lm):
    model = random_causal_lm(kind, seed=1)
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


def test_left_padded_prompts_equal_unpadded(random_causal_lm):
    model = random_causal_lm("llama", seed=2)
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
def test_random_cases_equal_naive(data, random_causal_lm):
    model = _PROPERTY_MODEL.setdefault("model", random_causal_lm("qwen2", seed=4))
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


def test_temperature_matches_naive_expansion(random_causal_lm):
    model = random_causal_lm("qwen2", seed=5)
    batch = build_prefix_shared_batch(
        torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(5)), torch.tensor([0, 30]), torch.tensor([4]),
        torch.tensor([[3, 17, 26]]), torch.ones(1, 4, dtype=torch.bool), torch.tensor([7, 8, 9]), torch.tensor([3]),
    )
    for temperature in (0.7, 1.3):
        shared = scoring_cuts.prefix_shared_log_probs(model, batch, temperature)
        naive, _ = scoring_cuts._naive_log_probs(model, batch, temperature)
        torch.testing.assert_close(shared, naive, rtol=0, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("temperature", [-1.0, 0.0, float("inf"), float("nan"), "hot"])
@pytest.mark.parametrize("mode", ["naive", "prefix_shared"])
def test_score_j_refuses_a_temperature_without_a_distribution(random_causal_lm, mode, temperature):
    """-1 used to return plausible J of the flipped distribution; inf that of the uniform one."""
    model = random_causal_lm("qwen2", seed=5)
    with pytest.raises(ValueError, match="^temperature must be a finite number > 0, got"):
        scoring_cuts.score_j(model, [[1, 2, 3]], torch.tensor([[4, 5, 6, 7]]), torch.tensor([[2]]), torch.ones(1, 1, dtype=torch.bool),
                             [[8, 9]], mode=mode, temperature=temperature)


def test_sliding_window_model_falls_back_with_reason(caplog, random_causal_lm):
    model = random_causal_lm("qwen2", seed=8, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    reason = attention_support_error(model)
    assert reason is not None and "sliding" in reason
    prompts, responses = [[1, 2, 3]], torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(8))
    cuts, cut_mask = torch.tensor([[2, 9, 16]]), torch.ones(1, 3, dtype=torch.bool)
    with caplog.at_level(logging.WARNING, logger=scoring_cuts.__name__):
        shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, [[4, 5]])
    assert shared.fallback_reason == reason
    assert any("falls back to naive" in record.getMessage() for record in caplog.records)
    j_base, j_cuts = score_cuts_oracle(model, prompts, responses, cuts, cut_mask, [[4, 5]])
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE)
    torch.testing.assert_close(shared.j_base, j_base, rtol=0, atol=FLOAT32_TOLERANCE)
    assert shared.scored_tokens == shared.naive_tokens


def test_probe_catches_an_attention_that_ignores_the_tree(monkeypatch, random_causal_lm):
    """A model whose attention silently does plain causal attention on the packed input is caught."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = random_causal_lm("llama", seed=9)
    # the tree attention's name now runs plain causal attention (restored after the test)
    monkeypatch.setitem(AttentionInterface._global_mapping, attention.ATTENTION_NAME, sdpa_attention_forward)
    monkeypatch.setattr(attention, "prefix_shared_attention", sdpa_attention_forward)
    monkeypatch.setattr(scoring_cuts, "_PROBED", type(scoring_cuts._PROBED)())
    prompts, responses = [[1, 2, 3]], torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(9))
    cuts, cut_mask = torch.tensor([[4, 12]]), torch.ones(1, 2, dtype=torch.bool)
    shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, [[7, 8, 9]])
    assert shared.fallback_reason is not None and "probe disagrees" in shared.fallback_reason
    j_base, j_cuts = score_cuts_oracle(model, prompts, responses, cuts, cut_mask, [[7, 8, 9]])
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=FLOAT32_TOLERANCE)


# --------------------------------------------------------------------------- GPU, bf16


BF16_TOLERANCE = 0.05
"""|J_shared − J_naive| in bf16: both round activations to 8 mantissa bits along different kernels."""


@pytest.mark.gpu
def test_bf16_on_gpu_within_tolerance(random_causal_lm):
    model = random_causal_lm("qwen2", seed=10, hidden_size=256, num_attention_heads=8, num_key_value_heads=2, intermediate_size=512)
    model = model.to("cuda", torch.bfloat16)
    generator = torch.Generator().manual_seed(10)
    prompts = [list(range(1, 30)), list(range(1, 5))]
    responses = torch.randint(0, 97, (2, 1500), generator=generator)
    cuts = torch.sort(torch.randint(1, 1500, (2, 12), generator=generator), dim=1).values
    cut_mask = torch.ones_like(cuts, dtype=torch.bool)
    answers = [[5, 6, 7, 8, 9], [10, 11]]
    j_base, j_cuts = score_cuts_oracle(model, prompts, responses, cuts, cut_mask, answers)
    shared = score_cuts_prefix_shared(model, prompts, responses, cuts, cut_mask, answers)
    assert shared.fallback_reason is None
    torch.testing.assert_close(shared.j_cuts, j_cuts, rtol=0, atol=BF16_TOLERANCE)
    torch.testing.assert_close(shared.j_base, j_base, rtol=0, atol=BF16_TOLERANCE)
