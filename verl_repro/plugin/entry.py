"""veRL plugin entry point (``[project.entry-points."verl.plugins"]``).

veRL imports this module on every ``import verl``, in the driver and in every Ray worker, and
swallows import errors at DEBUG level. So this module stays light, never raises, and records any
registration failure, also one deferred until veRL imports a registry
(:mod:`verl_repro.plugin.registrations`); :func:`registration_report` lets tests and
``verl-repro info`` assert what actually landed in veRL's registries, and what did not.

Light means: nothing here imports a heavy veRL module. Each registration module either registers
at once into a registry that ``import verl`` has already loaded, or waits, through
:func:`verl_repro.plugin.registrations.register_when_imported`, until veRL itself imports the module
that holds the registry (``core_algos`` for estimators, the v1 trainer, the reward-loop managers, the FSDP engine,
Hydra's ConfigStore) — which veRL does right before it looks a name up there.
"""

from __future__ import annotations

import importlib

from verl_repro.plugin.registrations import forget_failure, record_failure, recorded_failures

# Each module exposes ``register() -> list[str]`` returning "kind:name" entries it adds to veRL
# (now or when veRL imports the registry). A module is registered at most once per process.
REGISTRATION_MODULES: tuple[str, ...] = (
    "verl_repro.verl_ext.estimator_registry",
    "verl_repro.verl_ext.reward_managers",
    "verl_repro.verl_ext.engine",
    "verl_repro.verl_ext.trainer",
    "verl_repro.verl_ext.config_store",
    "verl_repro.verl_ext.preflight",
    "verl_repro.cpu.registration",
)

_registered: dict[str, list[str]] = {}


def register_all() -> dict[str, list[str]]:
    """Register everything this package adds to veRL; safe to call any number of times."""
    for module_name in REGISTRATION_MODULES:
        if module_name in _registered:
            continue
        try:
            module = importlib.import_module(module_name)
            _registered[module_name] = list(module.register())
            forget_failure(module_name)
        except Exception as exc:  # a plugin failure must be visible, never fatal to `import verl`
            record_failure(module_name, exc)
    return dict(_registered)


def registration_report() -> dict[str, object]:
    """What this process registered into veRL, and what failed (module -> error)."""
    return {
        "registered": sorted(name for names in _registered.values() for name in names),
        "failures": recorded_failures(),
    }


register_all()
