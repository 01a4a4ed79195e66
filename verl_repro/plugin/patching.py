"""The veRL release this package is written against, and the record of a patch to one of its private names.

Both layers that touch veRL internals use it: :mod:`verl_repro.verl_ext` (registries, the engine
vendor, the ``repro_sync`` trainer) and the optional CPU backend :mod:`verl_repro.cpu`. veRL's
private APIs move between releases, so code relying on them refuses to run against any veRL other
than :data:`PINNED_VERL_VERSION` — a loud error at start-up instead of a silent misbehaviour later —
and every :class:`Patch` names the veRL file and attribute it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

PINNED_VERL_VERSION = "0.9.1"


class VerlVersionError(RuntimeError):
    """veRL is not the release this package's private-name uses were written against."""


@dataclass(frozen=True)
class Patch:
    """One change to a private name of veRL."""

    verl_file: str
    """Path inside the veRL package, for readers (``verl/utils/model.py``)."""
    module: str
    """Module holding the target (``verl.utils.model``)."""
    target: str
    """Attribute replaced or edited."""
    reason: str
    apply: Callable[[ModuleType], None]


def installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(feature: str, revisit: str) -> None:
    """Raise :class:`VerlVersionError` naming ``feature`` and the file to ``revisit`` unless the
    installed veRL is :data:`PINNED_VERL_VERSION`."""
    found = installed_verl_version()
    if found != PINNED_VERL_VERSION:
        raise VerlVersionError(
            f"{feature} relies on private code of veRL {PINNED_VERL_VERSION} but veRL {found} is installed; "
            f"install verl=={PINNED_VERL_VERSION} (pinned by verl-repro) or revisit {revisit}"
        )


def apply_patch(patch: Patch, module: ModuleType, revisit: str) -> None:
    """Apply one patch to its (imported) module, failing loudly if the target is gone."""
    if not hasattr(module, patch.target):
        raise VerlVersionError(
            f"verl-repro patch target {patch.verl_file}:{patch.target} no longer exists "
            f"(patch reason: {patch.reason}); veRL changed since {PINNED_VERL_VERSION}, revisit {revisit}"
        )
    patch.apply(module)
