"""when_imported: callbacks run after the module body, once, without importing it early."""

from __future__ import annotations

import importlib
import sys

from verl_repro.plugin.import_hooks import when_imported


def test_callback_runs_after_import_and_only_then(tmp_path, monkeypatch):
    package = tmp_path / "deferred_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "late.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("deferred_pkg.late", lambda module: seen.append(module.VALUE + 1))
    assert seen == [] and "deferred_pkg.late" not in sys.modules
    module = importlib.import_module("deferred_pkg.late")
    assert seen == [42]
    assert module.__loader__.get_source("deferred_pkg.late") == "VALUE = 41\n"  # real loader still reachable
    importlib.reload(module)
    assert seen == [42]  # once per registration, not per reload
    sys.modules.pop("deferred_pkg.late")
    sys.modules.pop("deferred_pkg")


def test_already_imported_module_runs_now():
    seen = []
    when_imported("json", lambda module: seen.append(module.__name__))
    assert seen == ["json"]
