"""Every monkey-patch of a veRL private name, in one list, behind a check of the pinned veRL version.

veRL's private APIs move between releases, so each patch names the veRL file it targets and the
attribute it replaces, and :func:`apply_patches` refuses to run against any veRL other than
:data:`PINNED_VERL_VERSION` — a loud error at start-up instead of a silent misbehaviour later.
Code that overrides veRL private *methods* in a subclass (the ``repro_sync`` trainer) calls
:func:`check_verl_version` for the same reason.

To add a patch: write ``_apply_<name>()`` (idempotent: applying twice is a no-op) and append a
:class:`Patch` to :data:`PATCHES`. Patches are applied only where a feature asks for them
(``apply_patches(["name", ...])``), never on ``import verl``.

Current list — RePro/CorR-PO glue (``verl_ext``): none needed; the trainer, estimators and config
group go through veRL's registries (``register_trainer``, ``register_adv_est``) and Hydra's
``ConfigStore``. The CPU backend (``verl_repro/cpu``) appends its own entries here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

PINNED_VERL_VERSION = "0.9.1"


class VerlVersionError(RuntimeError):
    """The installed veRL is not the version the private-API glue was written against."""


def installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(feature: str) -> None:
    """Raise :class:`VerlVersionError` naming ``feature`` unless veRL is :data:`PINNED_VERL_VERSION`."""
    found = installed_verl_version()
    if found != PINNED_VERL_VERSION:
        raise VerlVersionError(
            f"{feature} relies on private code of veRL {PINNED_VERL_VERSION} but veRL {found} is installed; "
            f"install verl=={PINNED_VERL_VERSION} (pinned by verl-repro) or update verl_repro/verl_ext/patches.py"
        )


@dataclass(frozen=True)
class Patch:
    name: str
    """Short id used by :func:`apply_patches`."""
    target_file: str
    """The veRL file that defines the patched name, relative to site-packages (``verl/...``)."""
    target: str
    """``module:attribute`` that is replaced."""
    reason: str
    """Why the stock behaviour does not work for us."""
    apply: Callable[[], None]
    """Idempotent: a second call changes nothing."""


# In application order. Each entry: Patch(name, target_file, target, reason, apply).
PATCHES: list[Patch] = []

_applied: set[str] = set()


def patch_names() -> list[str]:
    return [patch.name for patch in PATCHES]


def apply_patches(names: Optional[Iterable[str]] = None) -> list[str]:
    """Apply the named patches (all when ``names`` is None) after the version check; returns the applied names."""
    wanted = patch_names() if names is None else list(names)
    known = {patch.name: patch for patch in PATCHES}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise KeyError(f"unknown veRL patch(es) {unknown}; known: {sorted(known)}")
    if not wanted:
        return []
    check_verl_version(f"veRL patches {wanted}")
    for name in wanted:
        if name not in _applied:
            known[name].apply()
            _applied.add(name)
    return wanted


def applied_patches() -> list[str]:
    return sorted(_applied)
