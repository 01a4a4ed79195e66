"""``repro_math`` inside veRL's own reward loop (RewardLoopWorker, without Ray) on tokenized responses."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def verl_config(tiny_model_dir):
    import verl  # noqa: F401  -- runs the verl.plugins entry point
    from hydra import compose, initialize_config_module

    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={tiny_model_dir}",
                "reward.reward_manager.name=repro_math",
                "+reward.reward_kwargs.timeout_s=2",
                "+reward.reward_kwargs.num_processes=1",
                "+reward.reward_kwargs.no_think_end_reward=-0.5",
            ],
        )


def make_batch(tokenizer, prompts: list[str], responses: list[str], ground_truths: list[str], response_length: int = 48):
    """A batch as veRL's agent loop hands it to the reward loop: left-padded prompts, right-padded responses."""
    from verl import DataProto

    pad = tokenizer.pad_token_id
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
    assert max(map(len, response_ids)) <= response_length
    prompt_length = max(map(len, prompt_ids))
    batch = len(prompts)
    prompt_tensor = torch.full((batch, prompt_length), pad)
    response_tensor = torch.full((batch, response_length), pad)
    attention = torch.zeros((batch, prompt_length + response_length), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        prompt_tensor[i, prompt_length - len(p):] = torch.tensor(p)
        response_tensor[i, : len(r)] = torch.tensor(r)
        attention[i, prompt_length - len(p): prompt_length + len(r)] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompt_tensor, "responses": response_tensor, "attention_mask": attention},
        non_tensors={
            "data_source": np.array(["aime_2024"] * batch, dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": gt} for gt in ground_truths], dtype=object),
        },
    )


def test_registered_through_the_verl_plugin(verl_config):
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    from verl_repro.plugin.entry import registration_report
    from verl_repro.verl_ext import reward_managers

    assert "reward_manager:repro_math" in registration_report()["registered"]
    assert get_reward_manager_cls("repro_math") is reward_managers.ReproMathRewardManager
    assert reward_managers.register() == ["reward_manager:repro_math"]  # idempotent


def test_plugin_does_not_import_verls_reward_managers_eagerly():
    """The plugin runs in every Ray process: the ~2 s reward-manager package loads only when veRL needs it."""
    import subprocess
    import sys

    code = (
        "import sys, verl\n"
        "assert 'verl.experimental.reward_loop.reward_manager' not in sys.modules\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "print(get_reward_manager_cls('repro_math').__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ReproMathRewardManager"


def test_scores_through_verls_reward_loop_worker(verl_config, tiny_tokenizer):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from verl_repro.verl_ext.reward_managers import ReproMathRewardManager

    worker = RewardLoopWorker(verl_config)
    assert isinstance(worker.reward_manager, ReproMathRewardManager)
    prompt = "<|im_start|>user\nWhat is 7 plus 5?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    responses = [
        "First, we add 7 and 5 to get 12.\n</think>\n\nThe answer is \\boxed{12}.",  # correct
        "So the total is 13.\n</think>\n\nThe answer is \\boxed{13}.",  # wrong
        "Therefore the answer is \\boxed{12}.\n</think>\n\nThe answer is 12.",  # boxed only while thinking
        "Let me think about 7 and 5",  # truncated: no </think>
    ]
    data = make_batch(tiny_tokenizer, [prompt] * 4, responses, ["12"] * 4)
    outputs = asyncio.run(worker.compute_score_batch(data))
    assert [o["reward_score"] for o in outputs] == [1.0, 0.0, 0.0, -0.5]
    extra = [o["reward_extra_info"] for o in outputs]
    assert [e["acc"] for e in extra] == [1.0, 0.0, 0.0, 0.0]
    assert [e["has_think_end"] for e in extra] == [1.0, 1.0, 1.0, 0.0]
    assert [e["answer_found"] for e in extra] == [1.0, 1.0, 0.0, 0.0]
    assert all(set(e) == {"acc", "has_think_end", "answer_found", "timed_out", "no_ground_truth"} for e in extra)

    # veRL places each score on the last valid response token.
    rm_scores = ReproMathRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    valid = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(-1)
    assert rm_scores[0, valid[0] - 1] == 1.0 and rm_scores[3, valid[3] - 1] == -0.5
    assert rm_scores.sum().item() == 0.5
    worker.reward_manager.verifier.close()


# Ground truths as data sets store them: (value, boxed answer the model writes, reward, text RePro scores).
GROUND_TRUTH_VARIANTS = [
    ("42", "42", 1.0, "42"),
    (["42", "43"], "42", 1.0, "42"),
    (["42", "43"], "43", 1.0, "42"),  # any entry grades correct; RePro scores the first
    (("42",), "42", 1.0, "42"),
    (b"42", "42", 1.0, "42"),
    (["1,000"], "1000", 1.0, "1,000"),
    (np.array(["42"], dtype=object), "42", 1.0, "42"),
    ("\\boxed{42}", "42", 1.0, "42"),  # RePro used to render \boxed{\boxed{42}}
    (42, "42", 1.0, "42"),
    (float("nan"), "nan", 0.0, None),  # used to earn 1.0
    (None, "None", 0.0, None),
    (True, "True", 0.0, None),
    ({"answer": "42"}, "42", 0.0, None),
    ([], "42", 0.0, None),
]


def test_ground_truth_variants_grade_as_repro_scores_them(verl_config, tiny_tokenizer):
    """The reward manager and RePro's answer rendering read every ground-truth shape by the same rule."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from verl_repro.config import ReproConfig
    from verl_repro.verl_ext.scoring import render_answers

    worker = RewardLoopWorker(verl_config)
    prompt = "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    responses = [f"6 times 7.\n</think>\n\n\\boxed{{{answer}}}" for _, answer, _, _ in GROUND_TRUTH_VARIANTS]
    data = make_batch(tiny_tokenizer, [prompt] * len(responses), responses, [v for v, _, _, _ in GROUND_TRUTH_VARIANTS])
    try:
        outputs = asyncio.run(worker.compute_score_batch(data))
    finally:
        worker.reward_manager.verifier.close()
    assert [o["reward_score"] for o in outputs] == [reward for _, _, reward, _ in GROUND_TRUTH_VARIANTS]
    assert [o["reward_extra_info"]["no_ground_truth"] for o in outputs] == [
        float(text is None) for _, _, _, text in GROUND_TRUTH_VARIANTS]

    rendered = render_answers(tiny_tokenizer, list(data.non_tensor_batch["reward_model"]), ReproConfig())
    texts = [tiny_tokenizer.decode(ids) if valid else None for ids, valid in zip(rendered.token_ids, rendered.valid.tolist())]
    assert texts == [None if text is None else f"\\boxed{{{text}}}" for _, _, _, text in GROUND_TRUTH_VARIANTS]
    assert rendered.missing_ground_truth == sum(text is None for _, _, _, text in GROUND_TRUTH_VARIANTS)


def test_bad_reward_kwargs_fail_at_construction_naming_the_key(verl_config, tiny_tokenizer):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import load_reward_manager

    from verl_repro.rewards import RewardConfigError

    config = OmegaConf.create(OmegaConf.to_container(verl_config))
    config.reward.reward_kwargs.timeout_seconds = 3
    with pytest.raises(RewardConfigError, match=r"reward\.reward_kwargs\.timeout_seconds is not a known key"):
        load_reward_manager(config, tiny_tokenizer)
