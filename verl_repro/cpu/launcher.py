"""``verl-repro cpu-run``: veRL's stock ``python -m verl.trainer.main_ppo`` on a CPU.

Sets ``VERL_PLATFORM=cpu`` (which makes this package register the CPU platform, engines and the
``hf`` rollout in every process) and prepends the overrides a CPU run needs; any main_ppo
override given on the command line is passed through and wins over the CPU defaults for the
same key. ``--smoke DIR`` adds a tiny checkpoint, dataset and reward (see
:mod:`verl_repro.cpu.smoke`) for a 2-step run; explicit overrides win over those too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from typing import IO, Optional

from verl_repro.cpu.registration import PLATFORM_ENV

# Ray places each veRL worker as a {CPU: 3, GPU: 1} bundle (plus Ray's own actors): declare enough
# logical CPUs and one logical GPU per worker, or placement waits forever.
RAY_LOGICAL_CPUS = 16
RAY_LOGICAL_CPUS_PER_WORKER = 4


def cpu_overrides(num_workers: int = 1) -> list[str]:
    """The main_ppo overrides a CPU run needs (``num_workers`` = trainer ranks, one logical GPU each)."""
    return [
        "trainer.device=cpu",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={num_workers}",
        f"ray_kwargs.ray_init.num_cpus={max(RAY_LOGICAL_CPUS, RAY_LOGICAL_CPUS_PER_WORKER * (num_workers + 1))}",
        f"+ray_kwargs.ray_init.num_gpus={num_workers}",
        # The dashboard's processes compete with training for the few cores.
        "+ray_kwargs.ray_init.include_dashboard=False",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.{PLATFORM_ENV}=cpu",
        # More storage units than cores stalls TransferQueue on a small machine.
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        # No flash-attention on a CPU, hence no padding-free (remove-padding) path either.
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.use_remove_padding=False",
        "+critic.model.override_config.attn_implementation=sdpa",
        "critic.model.use_remove_padding=False",
        # FSDP1 fails on CPU (sync_module_states); FSDP2 runs over gloo.
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "critic.strategy=fsdp2",
        # Compute in fp32: without AMX / AVX512-BF16 a bf16 matmul runs ~60x slower than fp32 on a
        # CPU (0.8 vs 49 GFLOP/s on one core of the CI machine), and fp32 is exact besides.
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
        "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32",
        "+critic.fsdp.mixed_precision.param_dtype=fp32",
        "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "data.dataloader_num_workers=0",
    ]


def override_key(override: str) -> str:
    """The config key an override sets: ``+a.b=1`` / ``++a.b=1`` / ``~a.b`` / ``a.b=1`` → ``a.b``."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(*layers: list[str]) -> list[str]:
    """Later layers win per key; a key keeps the position of its first appearance."""
    merged: dict[str, str] = {}
    for layer in layers:
        for override in layer:
            key = override_key(override)
            if key in merged and merged[key].startswith("+") and not override.startswith(("+", "~")):
                # The key is new to veRL's config: a plain override would fail, keep the "+".
                override = "+" + override
            merged[key] = override
    return list(merged.values())


def _requested_workers(overrides: list[str]) -> int:
    for override in overrides:
        if override_key(override) == "trainer.n_gpus_per_node":
            value = override.split("=", 1)[1]
            try:
                workers = int(value)
            except ValueError:
                workers = 0
            if workers < 1:
                raise SystemExit(f"verl-repro cpu-run: trainer.n_gpus_per_node must be an int >= 1, got {value!r}")
            return workers
    return 1


def build_command(user_overrides: list[str], smoke_dir: str | None = None, prepare: bool = True) -> list[str]:
    """The full ``python -m verl.trainer.main_ppo ...`` command line; ``prepare=False`` only names
    the smoke workspace's paths (for ``--print-command``, which must not write anything)."""
    smoke = []
    if smoke_dir is not None:
        from verl_repro.cpu.smoke import prepare_smoke_workspace, smoke_overrides, smoke_workspace_paths

        smoke = smoke_overrides(prepare_smoke_workspace(smoke_dir) if prepare else smoke_workspace_paths(smoke_dir))
    workers = _requested_workers(user_overrides)
    overrides = merge_overrides(cpu_overrides(workers), smoke, user_overrides)
    return [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]


def cpu_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for main_ppo: ``base`` (default: this process's) with ``VERL_PLATFORM=cpu``."""
    env = dict(os.environ if base is None else base)
    env[PLATFORM_ENV] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


TIMEOUT_EXIT_CODE = 124  # as timeout(1)


class _Terminated(Exception):
    """SIGTERM arrived while main_ppo was running."""


def _raise_terminated(signum, frame):
    raise _Terminated


def end_session(session_id: int) -> int:
    """Kill every process still in ``session_id`` (a session this module created); returns how many.

    main_ppo starts a private Ray instance (GCS, raylet, workers) whose processes stay in the
    session of the main_ppo process we launched; they normally exit with it, but not after a
    timeout or a crash. Only that session is touched: other Ray clusters on the machine live on.
    """
    import psutil

    killed = 0
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getsid(process.pid) == session_id:
                process.kill()
                killed += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return killed


def run_main_ppo(
    command: list[str],
    env: dict[str, str],
    timeout: Optional[float] = None,
    output: Optional[IO] = None,
    cwd: Optional[str] = None,
) -> int:
    """Run ``command`` in its own session, end whatever it leaves running; returns its exit code
    (:data:`TIMEOUT_EXIT_CODE` after ``timeout`` seconds). ``output``: file for stdout+stderr;
    ``cwd``: where Hydra writes its ``outputs/`` folder."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )
    # A SIGTERM (timeout(1), a CI runner cancelling) must not orphan the Ray instance either.
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return TIMEOUT_EXIT_CODE
    except (KeyboardInterrupt, _Terminated) as stop:
        # let main_ppo shut its Ray instance down first
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        end_session(process.pid)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        metavar="DIR",
        help="build a tiny model, dataset and reward under DIR and run 2 GRPO steps on them",
    )
    parser.add_argument("--print-command", action="store_true", help="print the main_ppo command and exit")
    parser.epilog = (
        "Any other argument is a Hydra override for verl.trainer.main_ppo, e.g. trainer.total_training_steps=5"
    )
    parser.set_defaults(accepts_extra_args=True)


def run(args: argparse.Namespace) -> int:
    command = build_command(list(getattr(args, "extra_args", []) or []), smoke_dir=args.smoke, prepare=not args.print_command)
    if args.print_command:
        print(f"{PLATFORM_ENV}=cpu " + " ".join(command))
        return 0
    print(f"verl-repro cpu-run: {PLATFORM_ENV}=cpu {' '.join(command)}", flush=True)
    return run_main_ppo(command, cpu_environment())
