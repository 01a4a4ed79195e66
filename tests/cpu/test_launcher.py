"""cpu-run: the overrides a CPU run needs, user overrides winning per key, the CLI pass-through."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from verl_repro.cpu.launcher import build_command, cpu_overrides, merge_overrides, override_key

# What a CPU run of main_ppo needs, key by key.
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


def test_workers_compute_on_the_cores_they_share(monkeypatch):
    """Ray would start each worker with OMP_NUM_THREADS=1: the runs pass the cores per rank instead."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    threads = lambda n: _as_dict(cpu_overrides(n))["ray_kwargs.ray_init.runtime_env.env_vars.OMP_NUM_THREADS"]  # noqa: E731
    assert [threads(1), threads(2), threads(3), threads(16)] == ["'8'", "'4'", "'2'", "'1'"]


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
    # the recipes' data path: padding-free packing, micro-batches by tokens (winning over the CPU defaults)
    assert overrides["actor_rollout_ref.model.use_remove_padding"] == "True"
    assert overrides["actor_rollout_ref.actor.use_dynamic_bsz"] == "True"


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
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
        code = run_main_ppo(sleeper, dict(os.environ), timeout=1, output=output)
    assert code == TIMEOUT_EXIT_CODE  # the sleeper itself would exit 0, after 300 s


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


def test_cpu_runs_compute_in_fp32():
    overrides = _as_dict(cpu_overrides())
    for engine in ("actor_rollout_ref.actor.fsdp_config", "actor_rollout_ref.ref.fsdp_config", "critic.fsdp"):
        assert overrides[f"{engine}.mixed_precision.param_dtype"] == "fp32"
    assert overrides["actor_rollout_ref.rollout.dtype"] == "float32"


def _launcher_with_grandchild(tmp_path, foreground: bool = True):
    """A launcher process running run_main_ppo on a child that starts a grandchild (as main_ppo
    starts Ray), records both PIDs, and leaves a marker when a Ctrl-C ends it (main_ppo's own
    shutdown); returns (launcher, child pid, grandchild pid, marker).

    The launcher starts with SIGINT ignored, as every background job of a non-interactive shell
    (a CI script) does; ``foreground`` gives it Python's Ctrl-C handler back, as a terminal does."""
    pids = tmp_path / "pids"
    marker = tmp_path / "interrupted"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{grandchild.pid}}')\n"
        f"os.rename({str(pids)!r} + '.tmp', {str(pids)!r})\n"
        "try:\n"
        "    time.sleep(300)\n"
        "except KeyboardInterrupt:\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    sys.exit(130)\n"
    )
    launcher_script = tmp_path / "launcher.py"
    launcher_script.write_text(
        "import os, signal, sys\n"
        + ("signal.signal(signal.SIGINT, signal.default_int_handler)\n" if foreground else "")
        + "from verl_repro.cpu.launcher import run_main_ppo\n"
        # main_ppo's console goes to a log, as in a quiet cpu-run
        f"sys.exit(run_main_ppo([sys.executable, {str(child)!r}], dict(os.environ), output=open({str(tmp_path / 'log')!r}, 'w')))\n"
    )
    launcher = psutil.Popen([sys.executable, str(launcher_script)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not pids.exists():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.2)
    child_pid, grandchild_pid = (int(p) for p in pids.read_text().split())
    return launcher, child_pid, grandchild_pid, marker


def test_sigkill_of_the_launcher_leaves_no_process_behind(tmp_path):
    # nothing in the launcher runs after SIGKILL: the parent-death signal takes main_ppo, the
    # watchdog takes the rest of its session (Ray, here the grandchild)
    launcher, child_pid, grandchild_pid, _ = _launcher_with_grandchild(tmp_path)
    assert psutil.Process(grandchild_pid).is_running()
    launcher.kill()
    launcher.wait(timeout=30)
    _assert_gone(child_pid)
    _assert_gone(grandchild_pid)


def test_ctrl_c_ends_the_run_without_a_traceback(tmp_path):
    launcher, child_pid, grandchild_pid, interrupted = _launcher_with_grandchild(tmp_path)
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=60) == 130
    assert "Traceback" not in launcher.stderr.read()
    assert interrupted.exists(), "main_ppo never got the Ctrl-C: it was killed, not shut down"
    _assert_gone(child_pid)
    _assert_gone(grandchild_pid)


def test_sigterm_to_a_background_launcher_shuts_main_ppo_down(tmp_path):
    # timeout(1) or a CI runner stops a cpu-run started in the background with SIGTERM: main_ppo
    # gets the forwarded Ctrl-C although it inherited SIGINT ignored, and its session goes with it
    launcher, child_pid, grandchild_pid, interrupted = _launcher_with_grandchild(tmp_path, foreground=False)
    launcher.terminate()
    assert launcher.wait(timeout=60) == 143
    assert interrupted.exists(), "main_ppo inherited SIGINT ignored and was killed, not shut down"
    _assert_gone(child_pid)
    _assert_gone(grandchild_pid)


def test_watchdog_ends_the_session_only_without_the_done_byte(tmp_path):
    from verl_repro.cpu import watchdog

    def session_with_sleeper():
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)

    for done, survives in ((True, True), (False, False)):
        sleeper = session_with_sleeper()
        dog = subprocess.Popen([sys.executable, "-m", "verl_repro.cpu.watchdog", str(sleeper.pid)], stdin=subprocess.PIPE)
        if done:
            dog.stdin.write(watchdog.DONE)
        dog.stdin.close()
        assert dog.wait(timeout=30) == 0
        time.sleep(0.2)
        assert (sleeper.poll() is None) == survives
        sleeper.kill()
        sleeper.wait()


def test_run_dirs_are_fresh_numbered_folders_and_a_used_one_is_refused(tmp_path):
    from verl_repro import UsageError
    from verl_repro.cli import claim_output_dir

    first = claim_output_dir(None, tmp_path / "runs")
    second = claim_output_dir(None, tmp_path / "runs")
    assert (first.name, second.name) == ("001", "002")
    assert (tmp_path / "runs" / "latest").resolve() == second.resolve()
    explicit = claim_output_dir(tmp_path / "mine", tmp_path / "runs", "--run-dir")
    assert explicit.is_dir()
    (explicit / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UsageError, match=r"^--run-dir .*mine is not empty; results never overwrite earlier ones"):
        claim_output_dir(tmp_path / "mine", tmp_path / "runs", "--run-dir")
    assert (explicit / "metrics.jsonl").read_text() == "{}\n"


def test_run_dir_holds_hydra_metrics_and_checkpoints_and_user_overrides_win(tmp_path):
    command = build_command(["trainer.default_local_dir=/elsewhere"], run_dir=tmp_path)
    overrides = _as_dict(command[3:])
    assert overrides["hydra.run.dir"] == str(tmp_path.resolve() / "hydra")
    assert overrides["ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"] == str(tmp_path.resolve() / "metrics.jsonl")
    assert overrides["trainer.logger"] == "[console,file]"
    assert overrides["trainer.default_local_dir"] == "/elsewhere"
    # the run directory's paths win over the smoke workload's
    smoke = _as_dict(build_command([], smoke_dir=str(tmp_path / "ws"), prepare=False, run_dir=tmp_path / "r")[3:])
    assert smoke["trainer.default_local_dir"] == str((tmp_path / "r").resolve() / "checkpoints")


def test_print_command_creates_no_run_dir(tmp_path, monkeypatch):
    from verl_repro.cli import main

    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["cpu-run", "--print-command", "--smoke", str(tmp_path / "ws")]) == 0
    assert list(tmp_path.iterdir()) == []


FAKE_MAIN_PPO = """
import json, os, sys, time
metrics = os.environ["FAKE_METRICS"]
print("a config dump line\\n" * 50, flush=True)
time.sleep(1.5)
print("INFO: all initialize finished, ready to fit", flush=True)
time.sleep(1.2)
for step in (1, 2):
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": step, "data": {"critic/score/mean": 0.25 * step, "critic/score/min": 0.0,
                 "critic/score/max": 1.0, "response_length/mean": 30.0 + step, "timing_s/step": 1.5}}) + "\\n")
    print(f"step:{step} - critic/score/mean:{0.25 * step}", flush=True)
    time.sleep(1.2)
if os.environ.get("FAKE_FAIL"):
    print("ValueError: the real reason", flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_quiet_run_prints_one_line_per_step_and_keeps_the_console_in_the_log(tmp_path, fail):
    from verl_repro.cpu.launcher import run_quietly
    from verl_repro.cpu.progress import LOG_TAIL_LINES

    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN_PPO)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = dict(os.environ, FAKE_METRICS=str(run_dir / "metrics.jsonl"), **({"FAKE_FAIL": "1"} if fail else {}))
    shown = io.StringIO()
    code = run_quietly([sys.executable, str(script)], run_dir, total_steps=2, label="grpo", env=env, stream=shown,
                       heartbeat_s=0.5)
    printed = shown.getvalue()
    assert code == (3 if fail else 0)
    log = (run_dir / "verl.log").read_text()
    assert log.count("a config dump line") == 50
    # success: none of the console; failure: only its last lines, where the reason is
    assert printed.count("config dump") == (0 if not fail else LOG_TAIL_LINES - 5)
    step_lines = [line for line in printed.splitlines() if line.startswith("[grpo] step ")]
    assert [line.split()[2] for line in step_lines] == ["1/2", "2/2"]
    assert "reward 0.250" in step_lines[0] and "acc 0.250" in step_lines[0] and "len 31.0" in step_lines[0]
    assert "reward 0.500" in step_lines[1] and "ETA 0:00" in step_lines[1]
    assert "start-up (Ray, workers, model)" in printed and "step 1/2 running" in printed
    if fail:
        assert "failed (exit 3)" in printed and "ValueError: the real reason" in printed
    else:
        assert "[grpo] done: 2 steps" in printed


def test_verbose_run_shows_the_console_and_logs_it(tmp_path):
    from verl_repro.cpu.launcher import run_quietly

    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN_PPO)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shown = io.StringIO()
    env = dict(os.environ, FAKE_METRICS=str(run_dir / "metrics.jsonl"))
    assert run_quietly([sys.executable, str(script)], run_dir, total_steps=2, verbose=True, env=env, stream=shown) == 0
    assert shown.getvalue().count("a config dump line") == 50
    assert (run_dir / "verl.log").read_text().count("a config dump line") == 50


def test_smoke_data_path_is_the_recipes(tmp_path):
    import yaml

    from pathlib import Path

    recipes = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "paper_defaults.yaml").read_text())
    overrides = _as_dict(build_command([], smoke_dir=str(tmp_path))[3:])
    model, actor = recipes["actor_rollout_ref"]["model"], recipes["actor_rollout_ref"]["actor"]
    assert overrides["actor_rollout_ref.model.use_remove_padding"] == str(model["use_remove_padding"]) == "True"
    assert overrides["actor_rollout_ref.actor.use_dynamic_bsz"] == str(actor["use_dynamic_bsz"]) == "True"


def test_runs_join_a_shared_cluster_that_declares_the_resources_of_their_own(tmp_path):
    import json
    import subprocess

    from verl_repro.cpu.launcher import build_command, ray_resources, shared_ray_cluster

    probe = ("import json, ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print('RESOURCES ' + json.dumps(ray.cluster_resources()))")
    with shared_ray_cluster() as address:
        result = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=300)
        command = build_command(["trainer.total_training_steps=1"], ray_address=address)
    line = [row for row in result.stdout.splitlines() if row.startswith("RESOURCES ")]
    assert line, result.stderr[-3000:]
    resources = json.loads(line[0][len("RESOURCES "):])
    assert (resources["CPU"], resources["GPU"]) == (ray_resources(1)["num_cpus"], ray_resources(1)["num_gpus"]) == (16, 1)
    assert f"+ray_kwargs.ray_init.address={address}" in command and "ray_kwargs.ray_init.num_cpus=null" in command
    assert not [arg for arg in command if "num_gpus" in arg or "include_dashboard" in arg]
    # the cluster ended with the block: nothing listens at its address any more
    import socket

    host, port = address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=10).close()
