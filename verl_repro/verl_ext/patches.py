"""Where the veRL glue touches veRL private names.

* One patch (:data:`VERL_EXT_PATCHES`): ``verl/utils/config.py:validate_config``, which ``main_ppo``
  calls in the driver right before ``run_ppo`` starts Ray, also runs the start-up checks of
  :mod:`verl_repro.verl_ext.preflight`.
* Estimators, scoring, the ``repro_sync`` trainer and the config group patch nothing: they go
  through veRL's registries (``register_adv_est``, ``register_trainer``) and Hydra's
  ``ConfigStore``. The engine vendor (``verl_ext/engine.py``, ``install_fused_forward``) replaces,
  with ``use_fused_kernels=True``, the fused forward veRL sets on the model class
  (``verl/models/transformers/dense_common.py``), inside its own engine's ``_build_module``.
* The ``repro_sync`` trainer overrides private methods of veRL's ``PPOTrainer`` in a subclass
  (``_compute_advantage``, ``_compute_old_log_prob``, ``_init_tokenizer``;
  ``verl/trainer/ppo/v1/trainer_base.py``) and reads a worker group's ``_dispatch_info`` as veRL's
  own ``_balance_batch`` does, so it calls :func:`check_verl_version` when it starts.

A patch of this layer goes into :data:`VERL_EXT_PATCHES` (a :class:`verl_repro.patching.Patch`,
on the pinned veRL of :mod:`verl_repro.patching`); the CPU backend keeps its own list
(:data:`verl_repro.cpu.patches.PATCHES`), and :func:`verl_repro.info.all_patches` lists both.
This module is imported on every ``import verl`` (the plugin installs the patch); it imports
nothing heavy.
"""

from __future__ import annotations

from verl_repro.patching import Patch, apply_patch
from verl_repro.patching import check_verl_version as _check_pinned

REVISIT = "verl_repro/verl_ext/patches.py"


def _preflight_in_validate_config(module) -> None:
    from verl_repro.verl_ext.preflight import extend_validate_config

    extend_validate_config(module)


VERL_EXT_PATCHES: tuple[Patch, ...] = (
    Patch(
        verl_file="verl/utils/config.py",
        module="verl.utils.config",
        target="validate_config",
        reason=(
            "main_ppo calls it in the driver right before run_ppo starts Ray: the verl-repro start-up checks "
            "(verl_ext/preflight.py: reward options, estimator/trainer pairing, repro group, finiteness) run there"
        ),
        apply=_preflight_in_validate_config,
    ),
)


def check_verl_version(feature: str) -> None:
    """Refuse to run ``feature`` of the glue on any veRL but the pinned one."""
    _check_pinned(feature, REVISIT)


def install_verl_ext_patches() -> list[str]:
    """Apply each of :data:`VERL_EXT_PATCHES` when its veRL module is imported (at once if it is);
    the patched function itself refuses another veRL than the pinned one when it is called (the
    check is not done here: this runs in every process on ``import verl``). Returns
    ``"preflight:<file>:<target>"`` entries (not ``patch:``, which the registration report keeps for
    the CPU backend's patches)."""
    from verl_repro.import_hooks import when_imported

    for patch in VERL_EXT_PATCHES:
        when_imported(patch.module, lambda module, patch=patch: apply_patch(patch, module, REVISIT))
    return [f"preflight:{patch.verl_file}:{patch.target}" for patch in VERL_EXT_PATCHES]
