"""veRL plugin entry point (``[project.entry-points."verl.plugins"]``).

veRL imports this module on every ``import verl``, in the driver and in every Ray worker, and
swallows import errors at DEBUG level. So this module stays light, never raises, and logs any
registration failure at WARNING with its traceback; :func:`registration_report` lets tests and
``verl-repro info`` assert what actually landed in veRL's registries.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

logger = logging.getLogger("verl_repro")

# Each module exposes ``register() -> list[str]`` returning "kind:name" entries it added to
# veRL. Registration is idempotent per process: a module is registered at most once.
REGISTRATION_MODULES: tuple[str, ...] = (
    "verl_repro.verl_ext.estimators",
    "verl_repro.verl_ext.corrpo",
    "verl_repro.verl_ext.reward_managers",
    "verl_repro.verl_ext.engine",
    "verl_repro.verl_ext.trainer",
    "verl_repro.verl_ext.config_store",
    "verl_repro.cpu.registration",
)

_registered: dict[str, list[str]] = {}
_failures: dict[str, str] = {}


def _module_exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def register_all() -> dict[str, list[str]]:
    """Register everything this package adds to veRL; safe to call any number of times."""
    for module_name in REGISTRATION_MODULES:
        if module_name in _registered or not _module_exists(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
            _registered[module_name] = list(module.register())
            _failures.pop(module_name, None)
        except Exception as exc:  # a plugin failure must be visible, never fatal to `import verl`
            _failures[module_name] = f"{type(exc).__name__}: {exc}"
            logger.warning("verl-repro: registering %s failed: %s", module_name, exc, exc_info=True)
    return dict(_registered)


def registration_report() -> dict[str, object]:
    """What this process registered into veRL, and what failed (module -> error)."""
    return {
        "registered": sorted(name for names in _registered.values() for name in names),
        "failures": dict(_failures),
    }


register_all()
