"""A registration deferred until veRL imports a registry records its failure where ``verl-repro info``
shows it, and never breaks the import that triggered it."""

from __future__ import annotations

import importlib
import subprocess
import sys

from verl_repro.plugin import registrations
from verl_repro.plugin.registrations import recorded_failures, register_when_imported


def test_a_failing_deferred_registration_is_recorded_and_the_import_goes_on(tmp_path, monkeypatch, caplog):
    (tmp_path / "registry_like.py").write_text("NAMES = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registrations, "_failures", {})

    def register(module):
        raise KeyError("name already taken")

    register_when_imported("verl_repro.some_owner", "registry_like", register)
    assert recorded_failures() == {}  # nothing ran yet: the module is not imported
    with caplog.at_level("WARNING", logger="verl_repro"):
        module = importlib.import_module("registry_like")
    assert module.NAMES == {}  # the import itself succeeded
    assert recorded_failures() == {
        "verl_repro.some_owner": "KeyError: 'name already taken' (when veRL imported registry_like)"
    }
    assert any("name already taken" in record.getMessage() for record in caplog.records)


PROVOKE = """
import sys
import verl_repro.verl_ext.trainer as trainer

def refuse():
    raise RuntimeError("provoked by the test")

trainer.build_trainer_class = refuse  # the deferred registration calls it when veRL imports its trainer
import verl  # the plugin: registrations, deferred ones waiting for their veRL module
import verl.trainer.ppo.v1.trainer_sync  # what main_ppo's task runner imports before the lookup
from verl_repro.cli import main
sys.exit(main(["info"]))
"""


def test_verl_repro_info_shows_a_provoked_registration_failure():
    result = subprocess.run([sys.executable, "-c", PROVOKE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    failed = [line.strip() for line in result.stdout.splitlines() if "FAILED" in line]
    assert failed == [
        "FAILED: verl_repro.verl_ext.trainer: RuntimeError: provoked by the test "
        "(when veRL imported verl.trainer.ppo.v1.trainer_sync)"
    ]
    assert "trainer:repro_sync" in result.stdout  # what it meant to register is still listed
