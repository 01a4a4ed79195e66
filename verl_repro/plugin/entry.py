"""veRL plugin entry point (``[project.entry-points."verl.plugins"]``).

veRL imports this module on every ``import verl``, in the driver and in every Ray worker, and
swallows import errors at DEBUG level. So this module stays light, never raises, and logs any
registration failure at WARNING with its traceback; :func:`registration_report` lets tests and
``verl-repro info`` assert what actually landed in veRL's registries.

Light means: nothing here imports a heavy veRL module. Each registration module either registers
at once into a registry that ``import verl`` has already loaded, or waits, through
:func:`verl_repro.plugin.import_hooks.when_imported`, until veRL itself imports the module that holds the
registry (``core_algos`` for estimators, the v1 trainer, the reward-loop managers, the FSDP engine,
Hydra's ConfigStore) — which veRL does right before it looks a name up there.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("verl_repro")

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
_failures: dict[str, str] = {}


def record_failure(module_name: str, error: BaseException) -> None:
    """Log a failed registration (also one deferred until veRL imports a registry) and keep it for the report."""
    _failures[module_name] = f"{type(error).__name__}: {error}"
    logger.warning("verl-repro: registering %s failed: %s", module_name, error, exc_info=error)


def register_all() -> dict[str, list[str]]:
    """Register everything this package adds to veRL; safe to call any number of times."""
    for module_name in REGISTRATION_MODULES:
        if module_name in _registered:
            continue
        try:
            module = importlib.import_module(module_name)
            _registered[module_name] = list(module.register())
            _failures.pop(module_name, None)
        except Exception as exc:  # a plugin failure must be visible, never fatal to `import verl`
            record_failure(module_name, exc)
    return dict(_registered)


def registration_report() -> dict[str, object]:
    """What this process registered into veRL, and what failed (module -> error)."""
    return {
        "registered": sorted(name for names in _registered.values() for name in names),
        "failures": dict(_failures),
    }


register_all()
