"""Where verl-repro touches veRL private names, and the pinned-version check that guards it.

veRL's private APIs move between releases, so every monkey-patch names the veRL file and attribute
it replaces, and code relying on private behaviour refuses to run against any veRL other than
:data:`PINNED_VERL_VERSION` — a loud error at start-up instead of a silent misbehaviour later.

The list, in one place (:func:`all_patches`):

* ``verl_ext``: one patch (:data:`VERL_EXT_PATCHES`): ``verl/utils/config.py:validate_config``, which
  ``main_ppo`` calls in the driver right before ``run_ppo`` starts Ray, also runs the start-up checks
  of :mod:`verl_repro.verl_ext.preflight`. Estimators, scoring, the ``repro_sync`` trainer and the
  config group patch nothing: they go through veRL's registries (``register_adv_est``,
  ``register_trainer``) and Hydra's ``ConfigStore``. The engine vendor (``verl_ext/engine.py``,
  ``install_fused_forward``) replaces, with ``use_fused_kernels=True``, the fused forward veRL sets on
  the model class (``verl/models/transformers/dense_common.py``), inside its own engine's
  ``_build_module``. The ``repro_sync`` trainer overrides private methods of veRL's ``PPOTrainer`` in
  a subclass (``_compute_advantage``, ``_compute_old_log_prob``, ``_init_tokenizer``;
  ``verl/trainer/ppo/v1/trainer_base.py``) and reads a worker group's ``_dispatch_info`` as veRL's
  own ``_balance_batch`` does, so it calls :func:`check_verl_version` when it starts.
* ``cpu`` backend: the patches in :data:`verl_repro.cpu.patches.PATCHES`, applied only with
  ``VERL_PLATFORM=cpu`` (each when its veRL module is imported).

A new patch goes into the list of the layer that needs it (``verl_ext`` patches into
:data:`VERL_EXT_PATCHES`, a :class:`VerlExtPatch` with the fields of
:class:`verl_repro.cpu.patches.Patch`). This module is imported on every ``import verl`` (the
plugin installs the patch), so the CPU backend's module is imported only when a name of it is used.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, NamedTuple

__all__ = ["PINNED_VERL_VERSION", "VerlVersionError", "VERL_EXT_PATCHES", "all_patches", "check_verl_version"]

_FROM_CPU_PATCHES = {"PINNED_VERL_VERSION": "PINNED_VERL_VERSION", "VerlVersionError": "VerlVersionError",
                     "CPU_PATCHES": "PATCHES", "Patch": "Patch"}


def __getattr__(name: str):
    # The pinned version and the error live with the CPU patches; imported on first use only.
    if name in _FROM_CPU_PATCHES:
        from verl_repro.cpu import patches as cpu_patches

        return getattr(cpu_patches, _FROM_CPU_PATCHES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class VerlExtPatch(NamedTuple):
    verl_file: str  # path inside the veRL package, for readers
    module: str  # module holding the target
    target: str  # attribute replaced
    reason: str
    apply: Callable[[ModuleType], None]


def _preflight_in_validate_config(module) -> None:
    from verl_repro.verl_ext.preflight import extend_validate_config

    extend_validate_config(module)


VERL_EXT_PATCHES: tuple[VerlExtPatch, ...] = (
    VerlExtPatch(
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


def installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(feature: str) -> None:
    """Raise :class:`VerlVersionError` naming ``feature`` unless veRL is :data:`PINNED_VERL_VERSION`."""
    from verl_repro.cpu.patches import PINNED_VERL_VERSION, VerlVersionError

    found = installed_verl_version()
    if found != PINNED_VERL_VERSION:
        raise VerlVersionError(
            f"{feature} relies on private code of veRL {PINNED_VERL_VERSION} but veRL {found} is installed; "
            f"install verl=={PINNED_VERL_VERSION} (pinned by verl-repro) or revisit verl_repro/verl_ext/patches.py"
        )


def install_verl_ext_patches() -> list[str]:
    """Apply each of :data:`VERL_EXT_PATCHES` when its veRL module is imported (at once if it is);
    the patched function itself refuses another veRL than the pinned one when it is called (the
    check is not done here: this runs in every process on ``import verl``). Returns
    ``"preflight:<file>:<target>"`` entries (not ``patch:``, which the registration report keeps for
    the CPU backend's patches)."""
    from verl_repro.import_hooks import when_imported

    def apply(patch: VerlExtPatch, module) -> None:
        if not hasattr(module, patch.target):
            from verl_repro.cpu.patches import PINNED_VERL_VERSION, VerlVersionError

            raise VerlVersionError(
                f"verl-repro patch target {patch.verl_file}:{patch.target} no longer exists; veRL changed since "
                f"{PINNED_VERL_VERSION}, revisit verl_repro/verl_ext/patches.py"
            )
        patch.apply(module)

    for patch in VERL_EXT_PATCHES:
        when_imported(patch.module, lambda module, patch=patch: apply(patch, module))
    return [f"preflight:{patch.verl_file}:{patch.target}" for patch in VERL_EXT_PATCHES]


def all_patches() -> list[dict[str, str]]:
    """Every monkey-patch of a veRL private name in this package: layer, veRL file, target, reason."""
    from verl_repro.cpu.patches import PATCHES as CPU_PATCHES

    return [
        {"layer": layer, "verl_file": patch.verl_file, "target": f"{patch.module}:{patch.target}", "reason": patch.reason}
        for layer, patches in (("verl_ext", VERL_EXT_PATCHES), ("cpu", CPU_PATCHES))
        for patch in patches
    ]
