"""Ground-truth scoring through veRL's log-prob path equals J computed directly with the HF model.

The scoring sequences go through veRL's own code from the trainer side of the worker boundary to the
model: ``BatchData.chunk`` / ``concat`` (the DP dispatch), the worker's default keys, the FSDP
engine's ``infer_batch`` (micro-batching, remove-padding packing or padded forward, temperature,
``logprobs_from_logits``), and ``response_from_nested``. Not exercised on CPU: Ray, FSDP sharding,
bf16 autocast and flash-attention (GPU runs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from verl_repro.algorithms import step_boundaries, think_end_token_id
from verl_repro.config import ReproConfig
from verl_repro.verl_ext.scoring import render_answers, reward_model_ground_truth, score_ground_truth
from verl_repro.verl_ext.transport import LogProbBackend


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "reward_model, expected",
    [
        ({"ground_truth": "7"}, "7"),
        ({"ground_truth": "  \\frac{1}{2} "}, "\\frac{1}{2}"),
        ({"ground_truth": 42}, "42"),
        ({"ground_truth": 0.5}, "0.5"),
        ({"ground_truth": ["3", "three"]}, "3"),
        ({"ground_truth": np.array(["9"])}, "9"),
        ({"ground_truth": ""}, None),
        ({"ground_truth": "   "}, None),
        ({"ground_truth": None}, None),
        ({"ground_truth": []}, None),
        ({"ground_truth": float("nan")}, None),
        ({"ground_truth": True}, None),
        ({"ground_truth": {"x": 1}}, None),
        ({"style": "rule"}, None),
        (None, None),
        ("7", None),
    ],
)
def test_reward_model_ground_truth(reward_model, expected):
    assert reward_model_ground_truth(reward_model) == expected


def test_render_answers_template_truncation_and_counts(tiny_tokenizer):
    config = ReproConfig(max_answer_tokens=6).validate()
    long_answer = "12345678901234567890"
    answers = render_answers(
        tiny_tokenizer,
        [{"ground_truth": "7"}, {"ground_truth": long_answer}, {"ground_truth": ""}, {}, {"ground_truth": "7"}],
        config,
    )
    boxed_seven = tiny_tokenizer("\\boxed{7}", add_special_tokens=False)["input_ids"]
    assert len(boxed_seven) <= 6, "test premise: the short answer fits"
    assert answers.token_ids[0].tolist() == boxed_seven == answers.token_ids[4].tolist()
    full_long = tiny_tokenizer("\\boxed{" + long_answer + "}", add_special_tokens=False)["input_ids"]
    assert len(full_long) > 6 and answers.token_ids[1].tolist() == full_long[:6]
    assert answers.valid.tolist() == [True, True, False, False, True]
    assert answers.missing_ground_truth == 2 and answers.truncated == 1
    assert answers.token_ids[2].numel() == 0 and answers.token_ids[3].numel() == 0


def test_render_answers_custom_template(tiny_tokenizer):
    config = ReproConfig(answer_template="The answer is {ground_truth}.").validate()
    answers = render_answers(tiny_tokenizer, [{"ground_truth": "7"}], config)
    assert tiny_tokenizer.decode(answers.token_ids[0]) == "The answer is 7."


def _with_bos(tokenizer, bos: str):
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.bos_token = bos
    return tokenizer


def test_answer_bos_puts_the_tokenizers_bos_first_and_counts_it(tiny_tokenizer):
    """repro.answer_bos: the authors' tokenization of J's answer (docs/repro.md); off by default."""
    bos_tokenizer = _with_bos(tiny_tokenizer, "<|im_start|>")
    bos = bos_tokenizer.convert_tokens_to_ids("<|im_start|>")
    plain = tiny_tokenizer("\\boxed{7}", add_special_tokens=False)["input_ids"]
    reward_models = [{"ground_truth": "7"}, {}]
    default = render_answers(bos_tokenizer, reward_models, ReproConfig().validate())
    assert default.token_ids[0].tolist() == plain and not ReproConfig().answer_bos
    with_bos = render_answers(bos_tokenizer, reward_models, ReproConfig(answer_bos=True).validate())
    assert with_bos.token_ids[0].tolist() == [bos, *plain]
    assert with_bos.token_ids[1].numel() == 0 and with_bos.valid.tolist() == [True, False]
    # the BOS is one of the answer tokens: it counts against repro.max_answer_tokens
    cut = render_answers(bos_tokenizer, reward_models, ReproConfig(answer_bos=True, max_answer_tokens=len(plain)).validate())
    assert cut.token_ids[0].tolist() == [bos, *plain[:-1]] and cut.truncated == 1
    # a tokenizer without a BOS token (the tiny Qwen2 one, like Qwen's) gets none
    assert tiny_tokenizer.bos_token_id is None
    assert render_answers(tiny_tokenizer, reward_models, ReproConfig(answer_bos=True).validate()).token_ids[0].tolist() == plain


def test_answer_bos_j_averages_over_the_bos_and_the_answer(tiny_model, tiny_tokenizer):
    from verl_repro.scoring import score_j

    bos_tokenizer = _with_bos(tiny_tokenizer, "<|im_start|>")
    prompt = tiny_tokenizer("<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    response = torch.tensor([tiny_tokenizer("<think>\nWe add 3 and 4.\n\nSo 7.\n</think>", add_special_tokens=False)["input_ids"]])
    cuts, cut_mask = torch.tensor([[5, response.shape[1]]]), torch.ones(1, 2, dtype=torch.bool)
    for answer_bos in (False, True):
        (answer,) = ReproConfig(answer_bos=answer_bos).validate().answer_token_ids(bos_tokenizer, ["7"])
        j_base, j_cuts, _ = score_j(tiny_model, [prompt], response, cuts, cut_mask, [answer], mode="naive")
        for j, cut in zip([j_base[0], *j_cuts[0]], [0, *cuts[0].tolist()]):
            ids = torch.tensor([prompt + response[0, :cut].tolist() + answer])
            with torch.no_grad():
                log_probs = torch.log_softmax(tiny_model(ids).logits[0, :-1].double(), dim=-1)
            expected = log_probs[-len(answer):].gather(1, ids[0, -len(answer):, None]).mean()
            assert float(j) == pytest.approx(float(expected), abs=1e-5)
        assert len(answer) == (len(ReproConfig().answer_token_ids(tiny_tokenizer, ["7"])[0]) + answer_bos)


def test_answer_bos_must_be_a_bool():
    from verl_repro.config import ConfigError

    with pytest.raises(ConfigError, match="repro.answer_bos"):
        ReproConfig(answer_bos="yes").validate()


# ----------------------------------------------------------------------------- DP layout


# ----------------------------------------------------------------------------- the whole step


def _direct_j(model, prompt, response, cut, answer, temperature) -> float:
    ids = torch.cat([prompt, response[:cut], answer]).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    log_probs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
    return float(log_probs[-answer.numel():].mean())


@pytest.mark.parametrize("no_think_end", ["skip", "use_end"])
def test_score_ground_truth_matches_direct_hf_forward(tiny_model, tiny_tokenizer, make_worker_group, rollout_batch, no_think_end):
    batch = rollout_batch(tiny_tokenizer)
    config = ReproConfig(num_segments=3, scoring_micro_batch_size=3, no_think_end=no_think_end).validate()
    group = make_worker_group(dp_size=2)
    think_end_id = think_end_token_id(tiny_tokenizer)
    scoring = score_ground_truth(
        input_ids=batch["input_ids"],
        prompt_lengths=batch["prompt_lengths"],
        responses=batch["responses"],
        response_mask=batch["response_mask"],
        entropy=batch["entropy"],
        reward_models=batch["reward_models"],
        padding=batch["padding"],
        tokenizer=tiny_tokenizer,
        config=config,
        boundaries=step_boundaries(tiny_tokenizer, tuple(config.boundary_patterns)),
        think_end_id=think_end_id,
        backend=LogProbBackend(group.compute_ref_log_prob, dp_size=2, temperature=1.0),
    )
    expected_scored = [True, True, no_think_end == "use_end", False, True, False]
    assert scoring.scored.tolist() == expected_scored
    assert scoring.valid.tolist() == [True, True, True, False, True, True]
    assert scoring.padding.tolist() == [False] * 5 + [True]
    assert scoring.has_think_end.tolist() == [True, True, False, True, True, False]

    answers = render_answers(tiny_tokenizer, batch["reward_models"], config).token_ids
    num_sequences = scored_tokens = 0
    for row, scored in enumerate(expected_scored):
        if not scored:
            assert math.isnan(scoring.j_base[row]) and torch.isnan(scoring.j_cuts[row]).all()
            continue
        cuts = scoring.cuts[row][scoring.cut_mask[row]].tolist()
        response = batch["response_list"][row]
        if scoring.has_think_end[row]:
            assert cuts[-1] == response.tolist().index(think_end_id) + 1  # the last cut is e + 1
        else:
            assert cuts[-1] == response.numel()
        if row == 4:  # its only boundary ends the step right before </think>: no cut at c = e
            assert cuts == [cuts[-1]]
        else:
            assert len(cuts) >= 2, "test premise: boundaries exist before </think>"
        num_sequences += len(cuts) + 1
        prompt = batch["prompt_list"][row]
        scored_tokens += sum(prompt.numel() + cut + answers[row].numel() for cut in [0] + cuts)
        expected = [_direct_j(tiny_model, prompt, response, cut, answers[row], 1.0) for cut in [0] + cuts]
        got = [float(scoring.j_base[row])] + scoring.j_cuts[row, : len(cuts)].tolist()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.isnan(scoring.j_cuts[row, len(cuts):]).all()
    assert scoring.stats["num_sequences"] == num_sequences
    assert scoring.stats["scored_tokens"] == scored_tokens  # layout padding is not counted
    assert scoring.stats["missing_ground_truth"] == 1
    (method, sent), = group.received
    assert method == "compute_ref_log_prob"
    assert len(sent) % (2 * sent["micro_batch_size_per_gpu"]) == 0 and len(sent) >= num_sequences
    assert sent["micro_batch_size_per_gpu"] <= config.scoring_micro_batch_size


def test_score_ground_truth_nothing_to_score_makes_no_worker_call(tiny_tokenizer, make_worker_group, rollout_batch):
    batch = rollout_batch(tiny_tokenizer)
    batch["reward_models"] = [{"ground_truth": None}] * len(batch["reward_models"])
    config = ReproConfig().validate()
    group = make_worker_group(dp_size=2)
    scoring = score_ground_truth(
        **{k: batch[k] for k in ("input_ids", "prompt_lengths", "responses", "response_mask", "entropy", "reward_models", "padding")},
        tokenizer=tiny_tokenizer,
        config=config,
        boundaries=step_boundaries(tiny_tokenizer),
        think_end_id=think_end_token_id(tiny_tokenizer),
        backend=LogProbBackend(group.compute_ref_log_prob, dp_size=2, temperature=1.0),
    )
    assert not scoring.scored.any() and torch.isnan(scoring.j_base).all()
    assert group.received == [] and scoring.stats["num_sequences"] == 0
    assert scoring.stats["missing_ground_truth"] == 5  # the padding row is not counted


