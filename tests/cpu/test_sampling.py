"""The hf rollout's sampler against oracles: full-sequence forwards, a one-prompt greedy loop, hand cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.cpu.sampling import SamplingSettings, filter_top_k_top_p, sample_batch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny matmuls on a shared 2-core machine: OpenMP barriers between 2 threads cost far more
    # than the work (100x slower under load). Ray gives its actors 1 thread for the same reason.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    texts = ["What is 2 plus 3?", "Hi", "Please reason step by step about 17 and 25."]
    return [
        tiny_tokenizer.encode(
            tiny_tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        )
        for text in texts
    ]


def _full_forward_log_probs(model, prompt, response, temperature):
    """Oracle: one forward over prompt+response (no padding, no cache), log_softmax(logits / T)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    log_probs = torch.log_softmax(logits / temperature, dim=-1)[len(prompt) - 1 : -1]
    return log_probs.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def _greedy_one_prompt(model, prompt, max_new_tokens, eos_id):
    ids = list(prompt)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            next_token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(next_token)
        if next_token == eos_id:
            break
    return ids[len(prompt) :]


def test_log_probs_match_a_full_forward_of_the_sampled_sequence(tiny_model, prompts, tiny_tokenizer):
    # Left-padded batch + KV cache must give the same per-token log-probs as veRL's actor would
    # compute on each unpadded sequence: log_softmax(logits / T) at the sampled token.
    generator = torch.Generator().manual_seed(0)
    temperature = 0.7
    sampled = sample_batch(
        tiny_model,
        prompts,
        SamplingSettings(temperature=temperature, top_p=0.9, top_k=50, max_new_tokens=24),
        {tiny_tokenizer.eos_token_id},
        tiny_tokenizer.pad_token_id,
        generator,
    )
    assert len(sampled) == len(prompts)
    for prompt, sequence in zip(prompts, sampled):
        assert 1 <= len(sequence.token_ids) == len(sequence.log_probs) <= 24
        expected = _full_forward_log_probs(tiny_model, prompt, sequence.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(sequence.log_probs), expected, atol=1e-4, rtol=1e-4)


def test_greedy_batch_equals_one_prompt_at_a_time(tiny_model, prompts, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    sampled = sample_batch(
        tiny_model, prompts, SamplingSettings(temperature=0.0, max_new_tokens=20), {eos}, tiny_tokenizer.pad_token_id
    )
    for prompt, sequence in zip(prompts, sampled):
        assert sequence.token_ids == _greedy_one_prompt(tiny_model, prompt, 20, eos)


def test_top_k_one_is_greedy(tiny_model, prompts, tiny_tokenizer):
    eos, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    greedy = sample_batch(tiny_model, prompts, SamplingSettings(temperature=0.0, max_new_tokens=12), eos, pad)
    top1 = sample_batch(
        tiny_model, prompts, SamplingSettings(temperature=1.3, top_k=1, max_new_tokens=12), eos, pad,
        torch.Generator().manual_seed(3),
    )
    assert [s.token_ids for s in greedy] == [s.token_ids for s in top1]


def test_stops_after_end_of_sequence_and_reports_why(tiny_model, prompts, tiny_tokenizer):
    # Make the greedy path's third token an end-of-sequence token: the response must stop there,
    # include it, and say "stop"; a response cut by the budget says "length".
    pad = tiny_tokenizer.pad_token_id
    greedy = sample_batch(tiny_model, prompts[:1], SamplingSettings(temperature=0.0, max_new_tokens=10), {-1}, pad)[0]
    assert greedy.finish_reason == "length" and len(greedy.token_ids) == 10
    stop_token = greedy.token_ids[2]
    first_stop = greedy.token_ids.index(stop_token)
    greedy_10 = SamplingSettings(temperature=0.0, max_new_tokens=10)
    stopped = sample_batch(tiny_model, prompts[:1], greedy_10, {stop_token}, pad)[0]
    assert stopped.token_ids == greedy.token_ids[: first_stop + 1]
    assert stopped.finish_reason == "stop"


def test_rejects_empty_prompts(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        sample_batch(tiny_model, [[1, 2], []], SamplingSettings(), {0}, 0)


def test_filter_hand_computed_case():
    # probs ∝ exp(logits) = [0.5, 0.25, 0.125, 0.125]
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    inf = float("-inf")
    top_k_2 = filter_top_k_top_p(logits, top_k=2, top_p=1.0)
    assert torch.isinf(top_k_2[0, 2:]).all() and torch.isfinite(top_k_2[0, :2]).all()
    # mass before tokens: [0, .5, .75, .875]; top_p=0.7 keeps the first two (0.5 < 0.7), drops the rest
    nucleus = filter_top_k_top_p(logits, top_k=-1, top_p=0.7)
    assert nucleus[0].tolist()[:2] == logits[0].tolist()[:2] and nucleus[0].tolist()[2:] == [inf, inf]
    # top_p=0.5: the most likely token alone reaches it
    assert torch.isfinite(filter_top_k_top_p(logits, top_k=-1, top_p=0.5)[0]).tolist() == [True, False, False, False]
    # both off: unchanged
    torch.testing.assert_close(filter_top_k_top_p(logits, top_k=0, top_p=1.0), logits)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=12),
    top_p=st.floats(0.05, 0.999),
)
def test_nucleus_is_the_smallest_prefix_reaching_top_p(logits, top_p):
    row = torch.tensor([logits], dtype=torch.float64)
    kept = torch.isfinite(filter_top_k_top_p(row, top_k=-1, top_p=top_p))[0]
    probs = torch.softmax(row[0], dim=-1)
    kept_mass = probs[kept].sum().item()
    assert kept.any()
    # every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-12
        # dropping the least likely kept token would fall below top_p (the nucleus is minimal)
        assert kept_mass - probs[kept].min().item() < top_p + 1e-9
        assert kept_mass >= top_p - 1e-9


def test_draw_tokens_hand_computed():
    from verl_repro.cpu.sampling import draw_tokens

    probs = torch.tensor([[0.2, 0.5, 0.3]] * 6 + [[0.0, 0.6, 0.0]] * 2)
    uniforms = torch.tensor([0.0, 0.1999, 0.2001, 0.6999, 0.7001, 0.9999, 0.0, 0.99999999])
    # cumulative 0.2 / 0.7 / 1.0: the first token whose cumulative probability exceeds u; an unnormalized
    # row scales u by its total, and a zero-probability token is never drawn, even at its edges
    assert draw_tokens(probs, uniforms).tolist() == [0, 0, 1, 1, 2, 2, 1, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12).filter(lambda ws: sum(ws) > 1e-3))
def test_draw_tokens_on_an_even_grid_of_uniforms_reproduces_the_distribution(weights):
    from verl_repro.cpu.sampling import draw_tokens

    grid = 2000
    probs = torch.tensor(weights, dtype=torch.float64).expand(grid, -1)
    uniforms = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    counts = torch.bincount(draw_tokens(probs, uniforms), minlength=len(weights)).double()
    expected = torch.tensor(weights, dtype=torch.float64) / sum(weights) * grid
    assert (counts - expected).abs().max() <= 1.0 + 1e-9
    assert all(counts[k] == 0 for k, w in enumerate(weights) if w == 0.0)


def test_per_prompt_streams_do_not_depend_on_the_batch(tiny_model, tiny_tokenizer):
    # equal-length prompts, so that no row's padding changes with its neighbours
    eos, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    settings_ = SamplingSettings(temperature=1.0, max_new_tokens=16)

    def streams(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    together = sample_batch(tiny_model, prompts, settings_, eos, pad, streams(1, 2, 3))
    reordered = sample_batch(tiny_model, prompts[::-1], settings_, eos, pad, streams(3, 2, 1))
    alone = [sample_batch(tiny_model, [p], settings_, eos, pad, streams(seed))[0] for p, seed in zip(prompts, (1, 2, 3))]
    assert [s.token_ids for s in together] == [s.token_ids for s in reordered[::-1]] == [s.token_ids for s in alone]
    # the streams matter: other seeds give other responses
    other = sample_batch(tiny_model, prompts, settings_, eos, pad, streams(4, 5, 6))
    assert [s.token_ids for s in other] != [s.token_ids for s in together]
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        sample_batch(tiny_model, prompts, settings_, eos, pad, streams(1, 2))
