"""Recipes: the YAML against the config dataclasses, every launcher's --dry-run, failures naming keys."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from verl_repro.config import CorrConfig, ReproConfig
from verl_repro.rewards import MathRewardConfig

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

# The recipes the issue asks for: (model, estimator).
EXPECTED = {
    "r1_distill_1.5b_repro_grpo": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "repro_grpo"),
    "r1_distill_1.5b_repro_ppo": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "repro_ppo"),
    "r1_distill_1.5b_repro_reinforce_plus_plus": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "repro_reinforce_plus_plus"),
    "r1_distill_1.5b_grpo": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "grpo"),
    "r1_distill_1.5b_corrpo": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "corrpo"),
    "qwen3_1.7b_repro_grpo": ("Qwen/Qwen3-1.7B", "repro_grpo"),
    "qwen3_8b_repro_grpo": ("Qwen/Qwen3-8B", "repro_grpo"),
}


def load_launch_module():
    spec = importlib.util.spec_from_file_location("recipe_launch", RECIPES / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_launcher(recipe: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(["bash", str(RECIPES / f"{recipe}.sh"), *args], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=timeout)


def as_plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=False)


REPRO_RECIPES = [r for r, (_, e) in EXPECTED.items() if e.startswith("repro_")]
# Where the paper setting differs from the repro group's own defaults (docs/repro.md, "Paper setting").
PAPER_OVER_DEFAULTS = {"scorer": "actor", "no_think_end": "use_end"}


@pytest.fixture(scope="module")
def composed():
    """Each recipe as ``main_ppo --config-name=<recipe>`` composes it (no overrides)."""
    launch = load_launch_module()
    return {recipe: launch.compose_recipe(recipe, []) for recipe in EXPECTED}


def test_every_recipe_has_yaml_and_launcher(composed):
    assert load_launch_module().list_recipes() == sorted(EXPECTED)
    for recipe, (model, estimator) in EXPECTED.items():
        config = composed[recipe]
        assert config.actor_rollout_ref.model.path == model
        assert config.algorithm.adv_estimator == estimator
        ours = estimator != "grpo"
        assert config.trainer.v1.trainer_mode == ("repro_sync" if ours else "sync"), recipe
        assert (config.get("repro") is not None) == ours, recipe
        assert os.access(RECIPES / f"{recipe}.sh", os.X_OK)


def test_the_repro_recipes_share_one_repro_block():
    # The block is a defaults entry, so a new RePro setting reaches every recipe through the
    # ReproConfig dataclass (the plugin's `repro` group) and no recipe names a repro key itself.
    for recipe, (_, estimator) in EXPECTED.items():
        raw = OmegaConf.load(RECIPES / f"{recipe}.yaml")
        assert raw.get("repro") is None, recipe
        shared = "repro_paper_setting" if recipe in REPRO_RECIPES else {"repro": "default"}
        expected = ["paper_defaults", "_self_"] if estimator == "grpo" else ["paper_defaults", shared, "_self_"]
        assert as_plain(raw.defaults) == expected, recipe


def test_paper_hyperparameters_are_the_defaults():
    paper = OmegaConf.load(RECIPES / "paper_defaults.yaml")
    actor, rollout = paper.actor_rollout_ref.actor, paper.actor_rollout_ref.rollout
    assert actor.optim.lr == 1e-6
    assert paper.data.train_batch_size == 256 and rollout.n == 8
    assert paper.data.max_response_length == 8192 and rollout.temperature == 1.0
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.001
    assert paper.reward.reward_manager.name == "repro_math"
    # reward_kwargs: every MathRewardConfig field, at its default
    assert as_plain(paper.reward.reward_kwargs) == dataclasses.asdict(MathRewardConfig())


@pytest.mark.parametrize("recipe", REPRO_RECIPES)
def test_composed_repro_group_has_every_key_at_the_paper_setting(composed, recipe):
    from verl_repro.verl_ext.estimators import PAPER_SETTING, paper_setting_differences

    repro = as_plain(composed[recipe].repro)
    assert repro == {**dataclasses.asdict(ReproConfig()), **PAPER_OVER_DEFAULTS}  # alpha 0.1, k 10: the defaults
    parsed = ReproConfig.from_mapping(repro)
    assert (parsed.alpha, parsed.num_segments, parsed.scorer, parsed.no_think_end) == (0.1, 10, "actor", "use_end")
    assert paper_setting_differences(parsed) == []
    assert {key: PAPER_SETTING[key] for key in PAPER_OVER_DEFAULTS} == PAPER_OVER_DEFAULTS


def test_dry_run_notes_an_override_that_leaves_the_paper_setting(capsys):
    launch = load_launch_module()
    # Still a valid run (the recipes keep veRL's reference model: the paper's KL loss), so exit 0.
    assert launch.main(["dry-run", "r1_distill_1.5b_repro_grpo", "repro.no_think_end=skip", "repro.scorer=ref"]) == 0
    out = capsys.readouterr().out
    assert "[note]      repro.no_think_end=skip differs from the paper setting (use_end)" in out
    assert "[note]      repro.scorer=ref differs from the paper setting (actor)" in out
    assert launch.main(["dry-run", "r1_distill_1.5b_repro_grpo"]) == 0
    assert "differs from the paper setting" not in capsys.readouterr().out


def test_composed_corrpo_recipe_has_every_corr_key_at_its_default(composed):
    config = composed["r1_distill_1.5b_corrpo"]
    assert as_plain(config.repro.corr) == dataclasses.asdict(CorrConfig())
    # the parameter-gradient signal is measured by the repro engine vendor in every worker
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR == "repro"
    assert config.repro.corr.signal == "param_grad"


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_dry_run(recipe):
    result = run_launcher(recipe, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert "dry run OK" in out and "[FAIL]" not in out
    model, estimator = EXPECTED[recipe]
    assert f"model       {model}" in out and f"estimator   {estimator}" in out
    assert "[ok]        veRL validate_config" in out and "[ok]        reward manager: repro_math" in out
    assert "lr=1e-06 prompts/step=256 n=8 max_response=8192 T=1.0 clip=0.2/0.28 kl_loss=0.001" in out


def test_dry_run_reports_every_bad_value_by_key():
    result = run_launcher(
        "r1_distill_1.5b_repro_grpo", "--dry-run", "repro.alpha=-1", "reward.reward_kwargs.timeout_s=0",
        "data.max_response_length=32768", "actor_rollout_ref.actor.use_dynamic_bsz=False", env={"N_GPUS": "3", "NNODES": "1", "DATA_DIR": "/nonexistent"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "max_response=32768" in out and "1 node(s) x 3 GPU(s)" in out
    assert "/nonexistent/dapo_math_17k.parquet   (missing" in out
    assert "[FAIL]      veRL validate_config" in out and "divisible" in out  # 256 x 8 samples over 3 GPUs, fixed batch sizes
    assert "repro.alpha must be >= 0" in out
    assert "reward.reward_kwargs.timeout_s must be >= 0.1 s" in out
    assert "dry run FAILED" in out


def test_dry_run_refuses_non_finite_settings_as_the_driver_does(capsys):
    launch = load_launch_module()
    assert launch.main(["dry-run", "r1_distill_1.5b_repro_grpo", "repro.alpha=inf", "reward.reward_kwargs.timeout_s=inf"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL]      repro group: ConfigError: repro.alpha must be a finite number, got inf" in out
    assert "[FAIL]      reward manager: RewardConfigError: reward.reward_kwargs.timeout_s must be a finite number, got inf" in out
    assert "[ok]        veRL validate_config" in out  # veRL's own checks are reported on their own
    assert launch.main(["dry-run", "r1_distill_1.5b_corrpo", "repro.corr.coef=inf"]) == 1
    assert "repro.corr.coef must be a finite number, got inf" in capsys.readouterr().out


@pytest.mark.parametrize(
    "recipe, override, message",
    [
        ("r1_distill_1.5b_repro_grpo", "repro.boundary_patterns=abc", "repro.boundary_patterns must be a list of strings, got the bare string 'abc'"),
        ("r1_distill_1.5b_repro_grpo", "repro.think_end_token=123", "repro.think_end_token must be a string, got 123 (int)"),
        ("r1_distill_1.5b_repro_grpo", "repro.answer_template=null", "repro.answer_template must be a string, got None"),
        ("r1_distill_1.5b_corrpo", "repro.corr.layers=5", "repro.corr.layers must be a list of ints, got 5"),
        ("r1_distill_1.5b_repro_grpo", "reward.reward_kwargs.timeout_s=1e-6", "reward.reward_kwargs.timeout_s must be >= 0.1 s"),
    ],
    ids=["bare_string_list", "int_token", "null_template", "int_layers", "unmeetable_deadline"],
)
def test_dry_run_names_the_key_of_a_wrong_type(capsys, recipe, override, message):
    """Each used to pass the dry run silently or end in a bare TypeError."""
    launch = load_launch_module()
    assert launch.main(["dry-run", recipe, override]) == 1
    out = capsys.readouterr().out
    assert message in out and "dry run FAILED" in out
    assert "TypeError" not in out


def test_dry_run_unknown_key_and_trainer_mode_mismatch():
    launch = load_launch_module()
    assert launch.main(["dry-run", "r1_distill_1.5b_repro_grpo", "repro.bogus=1"]) == 1
    assert launch.main(["dry-run", "r1_distill_1.5b_corrpo", "trainer.v1.trainer_mode=sync"]) == 1
    assert launch.main(["dry-run", "r1_distill_1.5b_grpo", "+repro.alpha=0.2", "trainer.n_gpus_per_node=4"]) == 0


def test_dry_run_messages(capsys):
    launch = load_launch_module()
    launch.main(["dry-run", "r1_distill_1.5b_repro_grpo", "repro.bogus=1"])
    assert "repro.bogus" in capsys.readouterr().out
    launch.main(["dry-run", "r1_distill_1.5b_corrpo", "trainer.v1.trainer_mode=sync"])
    assert "needs trainer.v1.trainer_mode=repro_sync" in capsys.readouterr().out


def test_cpu_smoke_hook(tmp_path):
    result = run_launcher("r1_distill_1.5b_repro_grpo", "--cpu-smoke", "--print-command", "trainer.total_training_steps=1",
                          env={"SMOKE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    command = result.stdout.strip().split(" ")
    assert command[1:5] == ["-m", "verl.trainer.main_ppo", f"--config-path={RECIPES}", "--config-name=r1_distill_1.5b_repro_grpo"]
    assert "algorithm.adv_estimator=repro_grpo" in command and "trainer.v1.trainer_mode=repro_sync" in command
    assert "trainer.device=cpu" in command and "trainer.total_training_steps=1" in command
    assert "repro.no_think_end=use_end" in command
    assert f"actor_rollout_ref.model.path={tmp_path.resolve() / 'model'}" in command
    assert not any(tmp_path.iterdir())  # --print-command runs nothing: no workspace built
