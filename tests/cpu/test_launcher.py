"""cpu-run: the overrides a CPU run needs, user overrides winning per key, the CLI pass-through."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time

import psutil

from verl_repro.cpu.launcher import build_command, cpu_overrides, merge_overrides, override_key

# The list of what a CPU run needs (issue 4, deliverable 4).
REQUIRED = {
    "trainer.device": "cpu",
    "ray_kwargs.ray_init.num_cpus": "16",
    "ray_kwargs.ray_init.num_gpus": "1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": "1",
    "actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
    "actor_rollout_ref.model.use_remove_padding": "False",
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.ref.strategy": "fsdp2",
    "actor_rollout_ref.rollout.name": "hf",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": "1",
    "actor_rollout_ref.rollout.agent.num_workers": "1",
    "reward.num_workers": "1",
    "data.dataloader_num_workers": "0",
}


def _as_dict(overrides):
    return {override_key(o): o.split("=", 1)[1] for o in overrides}


def test_cpu_overrides_cover_the_required_list():
    overrides = _as_dict(cpu_overrides())
    for key, value in REQUIRED.items():
        assert overrides[key] == value, key
    assert overrides["ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM"] == "cpu"


def test_override_key_strips_hydra_prefixes():
    assert override_key("+a.b=1") == override_key("++a.b=2") == override_key("a.b=3") == "a.b"
    assert override_key("~a.b") == "a.b"


def test_later_layers_win_and_new_keys_keep_their_plus():
    merged = merge_overrides(["x.y=1", "+new.k=1", "z=0"], ["x.y=2", "new.k=5"])
    assert merged == ["x.y=2", "+new.k=5", "z=0"]


def test_user_overrides_win_and_worker_count_follows_n_gpus():
    command = build_command(
        ["actor_rollout_ref.rollout.name=hf", "trainer.n_gpus_per_node=2", "data.dataloader_num_workers=1"]
    )
    assert command[1:3] == ["-m", "verl.trainer.main_ppo"]
    overrides = _as_dict(command[3:])
    assert overrides["trainer.n_gpus_per_node"] == "2" and overrides["ray_kwargs.ray_init.num_gpus"] == "2"
    assert int(overrides["ray_kwargs.ray_init.num_cpus"]) >= 16
    assert overrides["data.dataloader_num_workers"] == "1"
    assert len(command[3:]) == len(overrides)  # no key twice


def test_cli_passes_hydra_overrides_through(tmp_path):
    from verl_repro.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["cpu-run", "--print-command", "trainer.total_training_steps=3", "+foo.bar=1"]) == 0
    printed = out.getvalue()
    assert printed.startswith("VERL_PLATFORM=cpu ") and "verl.trainer.main_ppo" in printed
    assert " trainer.total_training_steps=3" in printed and " +foo.bar=1" in printed


def test_smoke_workspace_adds_model_data_and_reward(tmp_path):
    overrides = _as_dict(build_command([], smoke_dir=str(tmp_path))[3:])
    assert (tmp_path / "model" / "config.json").exists()
    assert overrides["data.train_files"] == str((tmp_path / "data" / "train.parquet").resolve())
    assert overrides["reward.custom_reward_function.name"] == "smoke_reward"
    assert overrides["algorithm.adv_estimator"] == "grpo"


def test_run_leaves_no_process_of_its_session_behind(tmp_path):
    from verl_repro.cpu.launcher import TIMEOUT_EXIT_CODE, run_main_ppo

    # the command exits at once but leaves a grandchild running, as a Ray instance would
    pid_file = tmp_path / "orphan.pid"
    spawn_orphan = (
        "import subprocess, sys; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    assert run_main_ppo([sys.executable, "-c", spawn_orphan], dict(os.environ)) == 0
    orphan = int(pid_file.read_text())
    _assert_gone(orphan)

    with (tmp_path / "log").open("w") as output:
        started = time.monotonic()
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
        code = run_main_ppo(sleeper, dict(os.environ), timeout=1, output=output)
    assert code == TIMEOUT_EXIT_CODE and time.monotonic() - started < 60


def _assert_gone(pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} is still running")


def test_sigterm_to_the_launcher_ends_the_run_too(tmp_path):
    # timeout(1) or a CI runner stops cpu-run with SIGTERM: main_ppo's session must go with it
    pid_file = tmp_path / "child.pid"
    child = tmp_path / "child.py"
    child.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    launcher_script = tmp_path / "launcher.py"
    launcher_script.write_text(
        "import os, sys\n"
        "from verl_repro.cpu.launcher import run_main_ppo\n"
        f"sys.exit(run_main_ppo([sys.executable, {str(child)!r}], dict(os.environ)))\n"
    )
    launcher = psutil.Popen([sys.executable, str(launcher_script)])
    deadline = time.monotonic() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.2)
    launcher.terminate()
    assert launcher.wait(timeout=60) == 143
    _assert_gone(int(pid_file.read_text()))


def test_cpu_runs_compute_in_fp32():
    overrides = _as_dict(cpu_overrides())
    for engine in ("actor_rollout_ref.actor.fsdp_config", "actor_rollout_ref.ref.fsdp_config", "critic.fsdp"):
        assert overrides[f"{engine}.mixed_precision.param_dtype"] == "fp32"
    assert overrides["actor_rollout_ref.rollout.dtype"] == "float32"
