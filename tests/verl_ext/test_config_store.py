"""The ``repro`` Hydra group on veRL's own ``ppo_trainer`` config: ``+repro=default repro.alpha=0.2`` works."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

import verl  # noqa: F401  (the plugin registers the group on import)
from verl_repro.config import ReproConfig


@pytest.fixture(scope="module")
def compose_ppo():
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        yield lambda overrides: compose("ppo_trainer", overrides=list(overrides))


def test_group_is_registered_by_the_plugin():
    from hydra.core.config_store import ConfigStore

    from verl_repro.plugin.entry import registration_report

    assert "config_group:repro" in registration_report()["registered"]
    assert "default.yaml" in ConfigStore.instance().list("repro")


def test_defaults_are_the_dataclass_defaults(compose_ppo):
    config = compose_ppo(["+repro=default"])
    assert ReproConfig.from_mapping(config.repro) == ReproConfig()
    assert config.trainer.v1.trainer_mode == "repro_sync"


def test_overrides_reach_the_group(compose_ppo):
    config = compose_ppo(
        ["+repro=default", "repro.alpha=0.2", "repro.num_segments=7", "repro.scorer=actor", "repro.corr.coef=0.3",
         "repro.boundary_patterns=[x,y]"]
    )
    parsed = ReproConfig.from_mapping(config.repro)
    assert parsed == dataclasses.replace(
        ReproConfig(), alpha=0.2, num_segments=7, scorer="actor", boundary_patterns=["x", "y"],
        corr=dataclasses.replace(ReproConfig().corr, coef=0.3),
    )


def test_explicit_trainer_mode_wins(compose_ppo):
    assert compose_ppo(["+repro=default", "trainer.v1.trainer_mode=sync"]).trainer.v1.trainer_mode == "sync"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+repro=default", "repro.nope=1"], "Could not override 'repro.nope'"),
        (["repro.alpha=0.2"], "Could not override 'repro.alpha'"),  # without the group
    ],
)
def test_hydra_rejects_unknown_keys(compose_ppo, overrides, message):
    with pytest.raises(ConfigCompositionException, match=message.replace(".", r"\.")):
        compose_ppo(overrides)


@pytest.mark.parametrize(
    "override, message",
    [
        ("repro.alpha=abc", "repro.alpha must be a finite number, got 'abc'"),
        ("repro.num_segments=2.5", "repro.num_segments must be an int, got 2.5"),
        ("repro.think_end_token=123", "repro.think_end_token must be a string, got 123"),
        ("repro.boundary_patterns=abc", "repro.boundary_patterns must be a list of strings"),
    ],
)
def test_wrong_types_are_refused_by_key_at_start_up(compose_ppo, override, message):
    """The group is untyped in Hydra, so the start-up check is what must catch a wrong type, by key."""
    from verl_repro.config import ConfigError

    config = compose_ppo(["+repro=default", override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        ReproConfig.from_mapping(config.repro)


def test_composed_config_passes_verls_own_validation(compose_ppo):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = compose_ppo(
        ["+repro=default", "algorithm.adv_estimator=repro_grpo", "actor_rollout_ref.actor.use_kl_loss=True",
         "trainer.n_gpus_per_node=1", "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
         "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
         "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
         "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2", "critic.enable=False"]
    )
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
