"""Start-up checks: every check across settings lives here, and runs in the driver before Ray starts.

veRL's ``main_ppo`` composes the config, calls ``validate_config`` and then ``run_ppo``, which
starts Ray; our trainer's ``__init__`` and the reward manager run much later, inside Ray actors,
after the model has loaded (a bad reward option used to surface after step 1 as a misleading
replay-buffer error, an infinite ``repro.alpha`` as NaN losses in a run that exits 0). So the
same checks run here, in the driver, with the workers' own functions and therefore the workers'
messages:

* :func:`check_cluster_size` — ``trainer.nnodes`` / ``trainer.n_gpus_per_node`` are positive ints;
* :func:`check_estimator_pairing` — an estimator of this package needs the ``repro_sync`` trainer
  (the stock one passes none of its inputs) and the ``repro`` group: ``+repro=default`` adds both;
* :func:`check_repro_group` — the ``repro`` group's keys, types, ranges and finiteness, and what the
  estimator needs (reference model, critic, gradient norms, the engine vendor):
  :func:`validate_repro_setup`, which the ``repro_sync`` trainer's ``__init__`` runs again in its
  Ray actor, before any worker starts;
* :func:`check_reward_options` — ``reward.reward_kwargs.*`` of ``repro_math`` exactly as its workers
  build them (``MathRewardConfig.from_mapping``), and for any reward manager no ``inf`` / ``nan``.

:func:`run_checks` runs them all. Two callers: veRL's ``validate_config`` in the driver, extended
by the one patch of the glue, :data:`VALIDATE_CONFIG_PATCH` (installed by :func:`register` on
``import verl``; listed in :data:`verl_repro.verl_ext.patches.VERL_EXT_PATCHES`), and the recipes'
``--dry-run`` (``recipes/launch.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

from verl_repro.config import ConfigError, ReproConfig, setting
from verl_repro.models.support import LLAMA_LAYOUT_ARCHITECTURES
from verl_repro.plugin.patching import Patch, apply_patch, check_verl_version
from verl_repro.verl_ext.estimator_registry import estimator_needs, load_estimators
from verl_repro.verl_ext.switches import ENGINE_VENDOR_OVERRIDE, TRAINER_MODE, engine_vendor_requested


def check_estimator_pairing(config: Any) -> str:
    """Our estimators run only under the ``repro_sync`` v1 trainer with a ``repro`` group."""
    estimator = str(setting(config, "algorithm.adv_estimator", ""))
    mode = str(setting(config, "trainer.v1.trainer_mode", "sync"))
    if estimator not in load_estimators():
        return f"{estimator} (veRL's own) under trainer mode {mode}"
    if not setting(config, "trainer.use_v1", True):
        raise ConfigError(f"algorithm.adv_estimator={estimator} needs veRL's v1 trainer: set trainer.use_v1=True")
    if mode != TRAINER_MODE:
        raise ConfigError(
            f"algorithm.adv_estimator={estimator} needs trainer.v1.trainer_mode={TRAINER_MODE}, got {mode}: "
            "add +repro=default (it adds the repro group and selects that trainer)"
        )
    if config.get("repro") is None:
        raise ConfigError(f"algorithm.adv_estimator={estimator} needs the repro group: add +repro=default")
    return f"{estimator} under trainer mode {mode}"


def check_repro_group(config: Any) -> ReproConfig | None:
    """The ``repro`` group as the ``repro_sync`` trainer validates it (None when absent and unused)."""
    if str(setting(config, "algorithm.adv_estimator", "")) in load_estimators():
        return validate_repro_setup(config)
    return ReproConfig.from_mapping(config.get("repro")) if config.get("repro") is not None else None


# ----------------------------------------------------------------------------- the repro group and the estimator's needs

def validate_param_grad_setup(config: Any, repro: ReproConfig, estimator: str) -> None:
    """What ``repro.corr.signal=param_grad`` needs, checked in the driver (docs/corrpo.md)."""
    corr = repro.corr
    if not engine_vendor_requested(config):
        raise ConfigError(
            f"repro.corr.signal=param_grad ({estimator}) is measured inside the repro engine vendor: add "
            f"{ENGINE_VENDOR_OVERRIDE}, or set repro.corr.signal=softmax_grad"
        )
    if list(corr.layers) != [-1]:
        raise ConfigError(
            f"repro.corr.layers={list(corr.layers)}: in training the parameter-gradient signal covers the last "
            "decoder layer only ([-1]); deeper layers are for the offline `verl-repro inversion` tool"
        )
    if int(setting(config, "actor_rollout_ref.actor.ulysses_sequence_parallel_size", 1)) > 1:
        raise ConfigError(
            "repro.corr.signal=param_grad does not support actor_rollout_ref.actor.ulysses_sequence_parallel_size > 1"
        )
    if setting(config, "actor_rollout_ref.model.use_fused_kernels", False):
        raise ConfigError(
            "repro.corr.signal=param_grad needs the unfused forward: set actor_rollout_ref.model.use_fused_kernels=False"
        )
    if corr.method != "exact":
        architectures = model_architectures(setting(config, "actor_rollout_ref.model.path"))
        if architectures is not None and not set(architectures) & set(LLAMA_LAYOUT_ARCHITECTURES):
            raise ConfigError(
                f"repro.corr.method={corr.method}: the fast parameter-gradient signal knows {list(LLAMA_LAYOUT_ARCHITECTURES)}, "
                f"not {architectures}; set repro.corr.method=exact (one backward of the last layer per token) "
                "or repro.corr.signal=softmax_grad"
            )


def model_architectures(path: Any) -> Optional[list[str]]:
    """``architectures`` of a local checkpoint's config.json; None when it cannot be read here."""
    import json
    from pathlib import Path

    if not path:
        return None
    config_file = Path(str(path)).expanduser() / "config.json"
    try:
        return list(json.loads(config_file.read_text()).get("architectures") or []) or None
    except (OSError, ValueError):
        return None


def validate_repro_setup(config: Any) -> ReproConfig:
    """Check the ``repro`` group and what the configured estimator needs; raise :class:`ConfigError`
    naming the key to change. Runs before any worker or GPU work. Returns the validated group."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    repro = ReproConfig.from_mapping(config.get("repro"))
    estimator = str(config.algorithm.adv_estimator)
    needs = set(estimator_needs(estimator))
    if not needs:
        return repro

    if "repro_scoring" in needs:
        if repro.scorer == "ref" and not need_reference_policy(config):
            raise ConfigError(
                f"repro.scorer=ref ({estimator}) scores the ground truth with veRL's reference model, which veRL "
                "creates only with actor_rollout_ref.actor.use_kl_loss=True (actor_rollout_ref.actor.kl_loss_coef "
                "may be 0) or algorithm.use_kl_in_reward=True; enable one of them, or set repro.scorer=actor"
            )
        if repro.scoring_mode == "prefix_shared" and not engine_vendor_requested(config):
            # The tree-attention forward lives in the repro engine vendor; stock engines can only
            # score naive sequences, which would silently cost (m+1)·T/2 tokens per response.
            raise ConfigError(
                "repro.scoring_mode=prefix_shared runs inside the repro engine vendor: add "
                f"{ENGINE_VENDOR_OVERRIDE}, or set repro.scoring_mode=naive"
            )
    if needs & {"repro_scoring", "entropy"} and setting(config, "algorithm.rollout_correction.bypass_mode", False):
        raise ConfigError(
            f"{estimator} needs the per-token entropy of veRL's old-log-prob pass, which "
            "algorithm.rollout_correction.bypass_mode=True skips; set it to False"
        )
    if "values" in needs:
        if not need_critic(config):
            raise ConfigError(f"{estimator} runs GAE on the critic's values: set critic.enable=True")
        if setting(config, "algorithm.use_pf_ppo", False):
            raise ConfigError(f"{estimator} does not support algorithm.use_pf_ppo=True (it resamples the batch)")
    if "logit_grad_norm" in needs and repro.corr.signal == "param_grad":
        validate_param_grad_setup(config, repro, estimator)
    elif "logit_grad_norm" in needs and not engine_vendor_requested(config):
        if not setting(config, "actor_rollout_ref.actor.calculate_sum_pi_squared", False):
            raise ConfigError(
                f"{estimator} needs per-token logit-gradient norms: run the repro engine vendor "
                f"({ENGINE_VENDOR_OVERRIDE}) or set "
                "actor_rollout_ref.actor.calculate_sum_pi_squared=True"
            )
        if setting(config, "actor_rollout_ref.model.use_fused_kernels", False):
            raise ConfigError(
                "actor_rollout_ref.actor.calculate_sum_pi_squared=True does not work with "
                "actor_rollout_ref.model.use_fused_kernels=True in veRL; use the repro engine vendor "
                f"({ENGINE_VENDOR_OVERRIDE}) instead"
            )
    return repro


def _non_finite(values: Any, prefix: str) -> tuple[str, Any] | None:
    if isinstance(values, Mapping) or hasattr(values, "items"):
        for key, value in values.items():
            found = _non_finite(value, f"{prefix}.{key}")
            if found:
                return found
    elif isinstance(values, (list, tuple)) or type(values).__name__ == "ListConfig":
        for index, value in enumerate(values):
            found = _non_finite(value, f"{prefix}[{index}]")
            if found:
                return found
    elif isinstance(values, float) and not math.isfinite(values):
        return prefix, values
    return None


def check_reward_options(config: Any) -> str:
    """``reward.reward_kwargs.*``: what the reward workers would refuse, with their message."""
    from verl_repro.rewards import MathRewardConfig, RewardConfigError
    from verl_repro.verl_ext.reward_managers import REWARD_MANAGER_NAME, reward_kwargs_of

    name = str(setting(config, "reward.reward_manager.name", ""))
    kwargs = reward_kwargs_of(config)
    if name == REWARD_MANAGER_NAME:
        options = MathRewardConfig.from_mapping(kwargs)
        return f"{name}: timeout {options.timeout_s:g} s, {options.num_processes} grading processes per worker"
    found = _non_finite(kwargs, "reward.reward_kwargs")
    if found:
        raise RewardConfigError(f"{found[0]} must be a finite number, got {found[1]!r}")
    return f"{name}: {len(kwargs)} option(s), all finite"


def check_cluster_size(config: Any) -> str:
    """``trainer.nnodes`` / ``trainer.n_gpus_per_node`` are ints >= 1 (veRL multiplies them unchecked:
    ``n_gpus_per_node=two`` used to end in a bare ``TypeError`` inside ``validate_config``)."""
    sizes = {}
    for key in ("trainer.nnodes", "trainer.n_gpus_per_node"):
        value = setting(config, key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an int >= 1, got {value!r}")
        sizes[key] = value
    return f"{sizes['trainer.nnodes']} node(s) x {sizes['trainer.n_gpus_per_node']} device(s)"


CHECKS = (
    ("cluster size", check_cluster_size),
    ("estimator and trainer", check_estimator_pairing),
    ("repro group", check_repro_group),
    ("reward options", check_reward_options),
)


def run_checks(config: Any) -> None:
    """Every check above, in order; raises ``ConfigError`` / ``RewardConfigError`` naming the key."""
    for _, check in CHECKS:
        check(config)


# ----------------------------------------------------------------------------- the driver hook


def extend_validate_config(module) -> None:
    """Make ``module.validate_config`` (``verl/utils/config.py``) run :func:`run_checks` first.

    ``main_ppo`` binds the name at its import (``from verl.utils.config import validate_config``),
    which happens after ``import verl`` has loaded this plugin, so the binding is the extended one;
    ``main_ppo``'s ``main`` calls it in the driver right before ``run_ppo`` starts Ray.
    """
    original = module.validate_config
    if getattr(original, "_verl_repro_preflight", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        check_verl_version("the verl-repro start-up checks in validate_config (verl_ext/patches.py)", REVISIT)
        run_checks(config)
        return original(config, *args, **kwargs)

    validate_config._verl_repro_preflight = True
    module.validate_config = validate_config


REVISIT = "verl_repro/verl_ext/preflight.py"

VALIDATE_CONFIG_PATCH = Patch(
    verl_file="verl/utils/config.py",
    module="verl.utils.config",
    target="validate_config",
    reason=(
        "main_ppo calls it in the driver right before run_ppo starts Ray: the verl-repro start-up checks "
        "(verl_ext/preflight.py: reward options, estimator/trainer pairing, repro group, finiteness) run there"
    ),
    apply=extend_validate_config,
)


def register() -> list[str]:
    """Plugin hook: apply :data:`VALIDATE_CONFIG_PATCH` when ``verl.utils.config`` is imported (at once
    if it is). The patched function itself refuses another veRL than the pinned one when it is
    called (not here: this runs in every process on ``import verl``). Returns a
    ``"preflight:<file>:<target>"`` entry (not ``patch:``, which the registration report keeps for
    the CPU backend's patches)."""
    from verl_repro.plugin.import_hooks import when_imported

    patch = VALIDATE_CONFIG_PATCH
    when_imported(patch.module, functools.partial(apply_patch, patch, revisit=REVISIT))
    return [f"preflight:{patch.verl_file}:{patch.target}"]
