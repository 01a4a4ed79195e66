"""A tiny end-to-end workload for the CPU backend: checkpoint, veRL-format parquet, varying reward.

``verl-repro cpu-run --smoke DIR`` (and the tests) use it to run veRL's real trainer in a couple
of minutes. The reward has to vary between the samples of one prompt, or every GRPO advantage
is zero and a training step proves nothing; a randomly initialised model almost never answers
correctly, so the smoke reward also pays for digits in the response.
"""

from __future__ import annotations

import random
from pathlib import Path

SMOKE_DATA_SOURCE = "verl_repro/cpu_smoke"


def smoke_reward(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1 for a response containing the answer, plus the fraction of its characters that are digits.

    Shape: scalar float in [0, 2]. Signature of veRL's ``custom_reward_function``.
    """
    text = solution_str or ""
    digit_fraction = sum(character.isdigit() for character in text) / max(len(text), 1)
    answered = 1.0 if ground_truth and str(ground_truth) in text else 0.0
    return answered + digit_fraction


def smoke_rows(num_rows: int, split: str, seed: int) -> list[dict]:
    """veRL RL-dataset rows: ``data_source``, chat ``prompt``, ``ability``, ``reward_model``, ``extra_info``."""
    rng = random.Random(seed)
    rows = []
    for index in range(num_rows):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            {
                "data_source": SMOKE_DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"What is {a} plus {b}? Please reason step by step."}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": split, "index": index},
            }
        )
    return rows


def write_smoke_dataset(directory: str | Path, num_train: int = 16, num_val: int = 4) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``val.parquet`` under ``directory``; returns their paths."""
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_path, val_path = directory / "train.parquet", directory / "val.parquet"
    pd.DataFrame(smoke_rows(num_train, "train", seed=0)).to_parquet(train_path)
    pd.DataFrame(smoke_rows(num_val, "test", seed=1)).to_parquet(val_path)
    return train_path, val_path


def prepare_smoke_workspace(directory: str | Path) -> dict[str, Path]:
    """Tiny checkpoint + data under ``directory`` (checkpoint reused when present); returns the paths,
    including where veRL's file logger writes the metrics (``metrics.jsonl``, one line per step)."""
    from verl_repro.models.tiny import build_tiny_checkpoint

    workspace = smoke_workspace_paths(directory)
    if not (workspace["model"] / "config.json").exists():
        build_tiny_checkpoint(workspace["model"])
    write_smoke_dataset(workspace["train"].parent)
    return workspace


def smoke_workspace_paths(directory: str | Path) -> dict[str, Path]:
    """Where :func:`prepare_smoke_workspace` puts each file under ``directory``; writes nothing."""
    directory = Path(directory).resolve()
    return {
        "model": directory / "model",
        "train": directory / "data" / "train.parquet",
        "val": directory / "data" / "val.parquet",
        "checkpoints": directory / "checkpoints",
        "metrics": directory / "metrics.jsonl",
    }


# Micro-batches by tokens, as the recipes run them: 16 sequences of <= 96 tokens make a few per rank.
SMOKE_MAX_TOKENS_PER_GPU = 512


def smoke_overrides(workspace: dict[str, Path]) -> list[str]:
    """main_ppo overrides for a 2-step GRPO run on the smoke workspace (KL loss on: exercises the ref).

    The data path is the recipes' (``recipes/paper_defaults.yaml``): padding-free packed sequences
    (``use_remove_padding=True``) in token-budgeted micro-batches (``use_dynamic_bsz=True``; the
    log-prob passes inherit it). Pass ``actor_rollout_ref.model.use_remove_padding=False
    actor_rollout_ref.actor.use_dynamic_bsz=False`` for the padded layout.
    """
    return [
        f"data.train_files={workspace['train']}",
        f"data.val_files={workspace['val']}",
        "data.train_batch_size=4",
        "data.max_prompt_length=64",
        "data.max_response_length=32",
        f"actor_rollout_ref.model.path={workspace['model']}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={SMOKE_MAX_TOKENS_PER_GPU}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "algorithm.adv_estimator=grpo",
        f"reward.custom_reward_function.path={Path(__file__).resolve()}",
        "reward.custom_reward_function.name=smoke_reward",
        "trainer.total_training_steps=2",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console,file]",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={workspace['metrics']}",
        "trainer.project_name=verl_repro_cpu_smoke",
        "trainer.experiment_name=smoke",
        f"trainer.default_local_dir={workspace['checkpoints']}",
    ]
