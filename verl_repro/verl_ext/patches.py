"""Where verl-repro touches veRL private names, and the pinned-version check that guards it.

veRL's private APIs move between releases, so every monkey-patch names the veRL file and attribute
it replaces, and code relying on private behaviour refuses to run against any veRL other than
:data:`PINNED_VERL_VERSION` — a loud error at start-up instead of a silent misbehaviour later.

The list, in one place (:func:`all_patches`):

* ``verl_ext`` estimators, scoring, ``repro_sync`` trainer and config group: **no monkey-patch**.
  They go through veRL's registries (``register_adv_est``, ``register_trainer``) and Hydra's
  ``ConfigStore``. The engine vendor (``verl_ext/engine.py``, ``install_fused_forward``) replaces,
  with ``use_fused_kernels=True``, the fused forward veRL sets on the model class
  (``verl/models/transformers/dense_common.py``), inside its own engine's ``_build_module``.
  The ``repro_sync`` trainer
  overrides private methods of veRL's ``PPOTrainer`` in a subclass (``_compute_advantage``,
  ``_compute_old_log_prob``, ``_init_tokenizer``; ``verl/trainer/ppo/v1/trainer_base.py``) and reads
  a worker group's ``_dispatch_info`` as veRL's own ``_balance_batch`` does, so it calls
  :func:`check_verl_version` when it starts.
* ``cpu`` backend: the patches in :data:`verl_repro.cpu.patches.PATCHES`, applied only with
  ``VERL_PLATFORM=cpu`` (each when its veRL module is imported).

A new patch goes into the list of the layer that needs it (``verl_ext`` patches into
:data:`VERL_EXT_PATCHES`, same :class:`verl_repro.cpu.patches.Patch` record).
"""

from __future__ import annotations

from verl_repro.cpu.patches import PATCHES as CPU_PATCHES
from verl_repro.cpu.patches import PINNED_VERL_VERSION, Patch, VerlVersionError

__all__ = ["PINNED_VERL_VERSION", "VerlVersionError", "VERL_EXT_PATCHES", "all_patches", "check_verl_version"]

VERL_EXT_PATCHES: tuple[Patch, ...] = ()


def installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(feature: str) -> None:
    """Raise :class:`VerlVersionError` naming ``feature`` unless veRL is :data:`PINNED_VERL_VERSION`."""
    found = installed_verl_version()
    if found != PINNED_VERL_VERSION:
        raise VerlVersionError(
            f"{feature} relies on private code of veRL {PINNED_VERL_VERSION} but veRL {found} is installed; "
            f"install verl=={PINNED_VERL_VERSION} (pinned by verl-repro) or revisit verl_repro/verl_ext/patches.py"
        )


def all_patches() -> list[dict[str, str]]:
    """Every monkey-patch of a veRL private name in this package: layer, veRL file, target, reason."""
    return [
        {"layer": layer, "verl_file": patch.verl_file, "target": f"{patch.module}:{patch.target}", "reason": patch.reason}
        for layer, patches in (("verl_ext", VERL_EXT_PATCHES), ("cpu", CPU_PATCHES))
        for patch in patches
    ]
