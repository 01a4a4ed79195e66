"""Start-up checks in the driver: what a worker would refuse is refused before Ray starts, naming the key.

First the checks on composed configs (cheap), then veRL's real ``python -m verl.trainer.main_ppo``
as ``verl-repro cpu-run`` starts it: a bad setting must end the run in the driver, before the
``ray init kwargs`` line veRL prints right before ``ray.init`` — seconds, not a loaded model.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
from omegaconf import OmegaConf, open_dict

from verl_repro.config import ConfigError
from verl_repro.rewards import MathRewardConfig, RewardConfigError
from verl_repro.verl_ext import preflight
from verl_repro.verl_ext.preflight import validate_repro_setup
from verl_repro.verl_ext.trainer import build_trainer_class


@pytest.fixture(scope="module")
def base_config():
    import verl  # noqa: F401  -- the plugin: estimators, the repro group, the validate_config extension
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=["+repro=default", "algorithm.adv_estimator=repro_grpo",
                                                 "actor_rollout_ref.actor.use_kl_loss=True",
                                                 "reward.reward_manager.name=repro_math"])


def make_config(base_config, **updates):
    config = copy.deepcopy(base_config)
    with open_dict(config):
        for key, value in updates.items():
            OmegaConf.update(config, key, value, force_add=True)
    return config


def test_a_valid_setup_passes(base_config):
    preflight.run_checks(base_config)
    assert preflight.check_reward_options(base_config).startswith("repro_math: timeout 5 s")


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"repro.alpha": float("inf")}, r"^repro\.alpha must be a finite number, got inf$"),
        ({"repro.j_base_eps": float("inf")}, r"^repro\.j_base_eps must be a finite number, got inf$"),
        ({"repro.stability_weight": float("nan")}, r"^repro\.stability_weight must be a finite number, got nan$"),
        ({"repro.corr.coef": float("inf")}, r"^repro\.corr\.coef must be a finite number, got inf$"),
        ({"repro.corr.outcome_weight": float("inf")}, r"^repro\.corr\.outcome_weight must be a finite number, got inf$"),
        ({"trainer.v1.trainer_mode": "sync"},
         r"^algorithm\.adv_estimator=repro_grpo needs trainer\.v1\.trainer_mode=repro_sync, got sync: add \+repro=default"),
        ({"trainer.use_v1": False}, r"needs veRL's v1 trainer: set trainer\.use_v1=True"),
        ({"actor_rollout_ref.actor.use_kl_loss": False}, r"repro\.scorer=ref .* reference model"),
    ],
)
def test_repro_settings_are_refused_naming_the_key(base_config, updates, message):
    with pytest.raises(ConfigError, match=message):
        preflight.run_checks(make_config(base_config, **updates))


@pytest.mark.parametrize("key, value", [("trainer.n_gpus_per_node", "two"), ("trainer.n_gpus_per_node", 0), ("trainer.nnodes", 1.5)])
def test_cluster_size_must_be_positive_ints(base_config, key, value):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')} must be an int >= 1, got {value!r}$"):
        preflight.run_checks(make_config(base_config, **{key: value}))


def test_our_estimator_without_the_repro_group_names_the_option(base_config):
    config = make_config(base_config)
    with open_dict(config):
        del config["repro"]
    with pytest.raises(ConfigError, match=r"needs the repro group: add \+repro=default"):
        preflight.run_checks(config)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_s": 0}, r"reward\.reward_kwargs\.timeout_s must be >= 0\.1 s .*, got 0"),
        ({"timeout_s": float("inf")}, r"reward\.reward_kwargs\.timeout_s must be a finite number, got inf"),
        ({"correct_reward": float("nan")}, r"reward\.reward_kwargs\.correct_reward must be a finite number, got nan"),
        ({"timeout_seconds": 3}, r"reward\.reward_kwargs\.timeout_seconds is not a known key"),
    ],
)
def test_reward_options_are_refused_with_the_workers_message(base_config, kwargs, message):
    config = make_config(base_config, **{f"reward.reward_kwargs.{k}": v for k, v in kwargs.items()})
    with pytest.raises(RewardConfigError, match=message) as in_driver:
        preflight.run_checks(config)
    with pytest.raises(RewardConfigError) as in_worker:  # what the reward manager's __init__ runs
        MathRewardConfig.from_mapping(config.reward.reward_kwargs)
    assert str(in_driver.value) == str(in_worker.value)


def test_any_reward_manager_gets_no_infinite_option(base_config):
    config = make_config(base_config, **{"reward.reward_manager.name": "naive", "reward.reward_kwargs.scale": float("inf")})
    with pytest.raises(RewardConfigError, match=r"^reward\.reward_kwargs\.scale must be a finite number, got inf$"):
        preflight.check_reward_options(config)


def test_veRLs_own_estimators_need_no_repro_group(base_config):
    config = make_config(base_config, **{"algorithm.adv_estimator": "grpo", "trainer.v1.trainer_mode": "sync"})
    with open_dict(config):
        del config["repro"]
    preflight.run_checks(config)


def test_validate_config_of_veRL_runs_the_checks_first(base_config):
    from verl.utils import config as verl_config

    assert verl_config.validate_config._verl_repro_preflight
    with pytest.raises(ConfigError, match=r"repro\.alpha must be a finite number"):
        verl_config.validate_config(config=make_config(base_config, **{"repro.alpha": float("inf")}),
                                    use_reference_policy=True, use_critic=False)


# ----------------------------------------------------------------------------- the repro group and the estimator's needs

VENDOR = {"ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR": "repro"}


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"repro.scorer": "critic"}, r"repro\.scorer must be one of \('ref', 'actor'\), got 'critic'"),
        ({"repro.num_segments": 0}, r"repro\.num_segments must be a positive int, got 0"),
        ({"repro.alpha": -0.1}, r"repro\.alpha must be >= 0, got -0\.1"),
        ({"repro.stability_weight": 1.5}, r"repro\.stability_weight must be in \[0, 1\]"),
        ({"repro.no_think_end": "drop"}, r"repro\.no_think_end must be one of"),
        ({"repro.answer_template": "\\boxed{}"}, r"repro\.answer_template must contain \{ground_truth\}"),
        ({"repro.max_answer_tokens": 0}, r"repro\.max_answer_tokens must be > 0"),
        ({"repro.scoring_micro_batch_size": 0}, r"repro\.scoring_micro_batch_size must be > 0"),
        ({"repro.boundary_patterns": []}, r"repro\.boundary_patterns must be a non-empty list"),
        ({"repro.unknown_key": 1}, r"repro\.unknown_key is not a known key"),
        (
            {"actor_rollout_ref.actor.use_kl_loss": False},
            r"repro\.scorer=ref .*actor_rollout_ref\.actor\.use_kl_loss=True.*or set repro\.scorer=actor",
        ),
        ({"algorithm.rollout_correction.bypass_mode": True}, r"algorithm\.rollout_correction\.bypass_mode=True"),
        ({"algorithm.adv_estimator": "repro_ppo"}, r"repro_ppo runs GAE on the critic's values: set critic\.enable=True"),
        (
            {"algorithm.adv_estimator": "corrpo", "repro.corr.signal": "softmax_grad"},
            r"actor_rollout_ref\.actor\.calculate_sum_pi_squared=True",
        ),
        (
            {
                "algorithm.adv_estimator": "corrpo",
                "repro.corr.signal": "softmax_grad",
                "actor_rollout_ref.actor.calculate_sum_pi_squared": True,
                "actor_rollout_ref.model.use_fused_kernels": True,
            },
            r"use_fused_kernels=True",
        ),
        ({"algorithm.adv_estimator": "corrpo"}, r"repro\.corr\.signal=param_grad .*VERL_ENGINE_VENDOR=repro"),
        (
            {"algorithm.adv_estimator": "corrpo", **VENDOR, "repro.corr.layers": [0]},
            r"repro\.corr\.layers=\[0\]: in training .* last decoder layer only",
        ),
        (
            {"algorithm.adv_estimator": "corrpo", **VENDOR, "actor_rollout_ref.actor.ulysses_sequence_parallel_size": 2},
            r"ulysses_sequence_parallel_size",
        ),
        (
            {"algorithm.adv_estimator": "corrpo", **VENDOR, "actor_rollout_ref.model.use_fused_kernels": True},
            r"repro\.corr\.signal=param_grad needs the unfused forward",
        ),
        ({"algorithm.adv_estimator": "corrpo", "repro.corr.signal": "logits"}, r"repro\.corr\.signal must be one of"),
        ({"algorithm.adv_estimator": "corrpo", "repro.corr.norm": "l1"}, r"repro\.corr\.norm must be one of"),
        ({"algorithm.adv_estimator": "corrpo", "repro.corr.matrices": ["w_proj"]}, r"repro\.corr\.matrices must be"),
        (
            {"algorithm.adv_estimator": "corrpo", "repro.corr.matrices": ["k_proj"], "repro.corr.method": "fast"},
            r"repro\.corr\.method .*need method=exact",
        ),
    ],
)
def test_each_bad_setting_names_its_key(base_config, updates, message):
    config = make_config(base_config, **updates)
    with pytest.raises(ConfigError, match=message):
        validate_repro_setup(config)
    with pytest.raises(ConfigError, match=message):
        build_trainer_class()(config)  # before any worker exists


def test_param_grad_on_an_unknown_architecture_names_the_method_key(base_config, tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    updates = {"algorithm.adv_estimator": "corrpo", **VENDOR, "actor_rollout_ref.model.path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"repro\.corr\.method=auto: the fast parameter-gradient signal knows .*GPT2LMHeadModel"):
        validate_repro_setup(make_config(base_config, **updates))
    validate_repro_setup(make_config(base_config, **updates, **{"repro.corr.method": "exact"}))  # asked for explicitly


@pytest.mark.parametrize(
    "updates",
    [
        {},
        {"actor_rollout_ref.actor.use_kl_loss": False, "repro.scorer": "actor"},
        {"actor_rollout_ref.actor.use_kl_loss": False, "algorithm.use_kl_in_reward": True},
        {"algorithm.adv_estimator": "repro_ppo", "critic.enable": True},
        {"algorithm.adv_estimator": "corrpo", "repro.corr.signal": "softmax_grad", "actor_rollout_ref.actor.calculate_sum_pi_squared": True},
        {"algorithm.adv_estimator": "corrpo", **VENDOR},
        {"algorithm.adv_estimator": "corrpo", **VENDOR, "repro.corr.matrices": ["k_proj"], "repro.corr.method": "exact"},
        {"algorithm.adv_estimator": "grpo", "actor_rollout_ref.actor.use_kl_loss": False},  # not ours: nothing to check
    ],
)
def test_good_settings_pass(base_config, updates):
    updates = {key.lstrip("+"): value for key, value in updates.items()}
    validate_repro_setup(make_config(base_config, **updates))


def test_prefix_shared_without_the_engine_vendor_is_refused_at_start_up(base_config):
    with pytest.raises(ConfigError, match=r"repro\.scoring_mode=prefix_shared runs inside the repro engine vendor"):
        validate_repro_setup(make_config(base_config, **{"repro.scoring_mode": "prefix_shared"}))
    with_vendor = make_config(
        base_config,
        **{"repro.scoring_mode": "prefix_shared", "ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR": "repro"},
    )
    assert validate_repro_setup(with_vendor).scoring_mode == "prefix_shared"


# ----------------------------------------------------------------------------- the real entry point


@pytest.fixture(scope="module")
def smoke_workspace(tmp_path_factory):
    from verl_repro.cpu.smoke import prepare_smoke_workspace

    directory = tmp_path_factory.mktemp("preflight_smoke")
    prepare_smoke_workspace(directory)
    return directory


@pytest.mark.parametrize(
    "overrides, message",
    [
        # a bad reward option used to load the model, run step 1 and die with a replay-buffer error
        (["reward.reward_manager.name=repro_math", "reward.custom_reward_function.path=null",
          "+reward.reward_kwargs.timeout_s=0"], "reward.reward_kwargs.timeout_s must be >= 0.1 s"),
        # an infinite alpha used to train with NaN losses and exit 0
        (["+repro=default", "algorithm.adv_estimator=repro_grpo", "repro.alpha=inf"], "repro.alpha must be a finite number, got inf"),
        # our estimator under the stock trainer used to fail only after a full rollout
        (["algorithm.adv_estimator=repro_grpo"],
         "algorithm.adv_estimator=repro_grpo needs trainer.v1.trainer_mode=repro_sync, got sync: add +repro=default"),
    ],
    ids=["reward_option", "infinite_alpha", "estimator_without_trainer"],
)
def test_main_ppo_refuses_before_ray_starts(smoke_workspace, overrides, message):
    from verl_repro.cpu.launcher import build_command, cpu_environment

    command = build_command(overrides, smoke_dir=str(smoke_workspace))
    # A run that got past the checks would start Ray and train: the timeout bounds the test then.
    result = subprocess.run(command, env=cpu_environment(), capture_output=True, text=True, timeout=300, cwd=smoke_workspace)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert "ray init kwargs" not in output  # veRL prints it right before ray.init
