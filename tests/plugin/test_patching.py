"""The pinned veRL release: another one is refused loudly, and so is a patch whose target vanished."""

from __future__ import annotations

import types

import pytest

from verl_repro.plugin.patching import Patch, VerlVersionError, apply_patch, check_verl_version


def test_other_verl_release_is_refused(monkeypatch):
    import verl

    check_verl_version("the CPU backend", "verl_repro/cpu/patches.py")  # the installed one is the pinned one
    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(VerlVersionError, match=r"0\.9\.1.*0\.9\.2|0\.9\.2.*0\.9\.1"):
        check_verl_version("the CPU backend", "verl_repro/cpu/patches.py")


def test_vanished_target_names_file_and_target():
    patch = Patch("verl/x/y.py", "verl.x.y", "gone_function", "a reason long enough to read", lambda m: None)
    with pytest.raises(VerlVersionError, match=r"verl/x/y\.py:gone_function"):
        apply_patch(patch, types.ModuleType("verl.x.y"), "verl_repro/cpu/patches.py")
