"""cpu-run's own arguments: a bad worker count is one line, ``--print-command`` writes nothing."""

from __future__ import annotations

import contextlib
import io

import pytest

from verl_repro.cli import main


def test_non_integer_worker_count_is_one_line_naming_the_key():
    for value in ("two", "0", "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["cpu-run", "--print-command", f"trainer.n_gpus_per_node={value}"])
        assert "trainer.n_gpus_per_node must be an int >= 1" in str(stop.value) and repr(value) in str(stop.value)


def test_print_command_with_smoke_names_the_workspace_without_building_it(tmp_path):
    workspace = tmp_path / "smoke"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["cpu-run", "--print-command", "--smoke", str(workspace)]) == 0
    printed = out.getvalue()
    assert f"data.train_files={workspace.resolve() / 'data' / 'train.parquet'}" in printed
    assert f"actor_rollout_ref.model.path={workspace.resolve() / 'model'}" in printed
    assert not workspace.exists()
