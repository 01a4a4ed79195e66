"""The record of what failed to register into veRL, and the one way to defer a registration.

veRL swallows the errors of a plugin's import at DEBUG level, and a registration deferred until
veRL imports a registry runs inside that import, where an exception would break veRL itself. So
every registration of this package either runs in :func:`verl_repro.plugin.entry.register_all` or
through :func:`register_when_imported`; both log a failure at WARNING with its traceback and keep
it here, where ``registration_report()`` and ``verl-repro info`` show it (``info`` then exits 1).

A patch of a veRL private name is not a registration: it is applied with ``when_imported`` and a
missing target raises (:mod:`verl_repro.plugin.patching`), because running on without it would be
silently wrong.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Callable

from verl_repro.plugin.import_hooks import when_imported

logger = logging.getLogger("verl_repro")

_failures: dict[str, str] = {}


def record_failure(owner: str, error: BaseException, when: str = "") -> None:
    """Log a failed registration of ``owner`` (a module of this package) and keep it for the report."""
    _failures[owner] = f"{type(error).__name__}: {error}" + (f" ({when})" if when else "")
    logger.warning("verl-repro: registering %s failed%s: %s", owner, f" ({when})" if when else "", error, exc_info=error)


def forget_failure(owner: str) -> None:
    _failures.pop(owner, None)


def recorded_failures() -> dict[str, str]:
    """``owner -> "ErrorType: message (when)"`` for every registration that failed in this process."""
    return dict(_failures)


def register_when_imported(owner: str, module_name: str, register: Callable[[ModuleType], object]) -> None:
    """Run ``register(module)`` once this process imports ``module_name`` (at once if it has), as
    ``owner``'s registration: a failure is recorded, never raised into veRL's own import."""

    def guarded(module: ModuleType) -> None:
        try:
            register(module)
        except Exception as error:  # a plugin failure must be visible, never fatal to veRL's import
            record_failure(owner, error, when=f"when veRL imported {module_name}")

    when_imported(module_name, guarded)
