"""``verl-repro cpu-run``: veRL's stock ``python -m verl.trainer.main_ppo`` on a CPU.

Sets ``VERL_PLATFORM=cpu`` (which makes this package register the CPU platform, engines and the
``hf`` rollout in every process) and prepends the overrides a CPU run needs; any main_ppo
override given on the command line is passed through and wins over the CPU defaults for the
same key. ``--smoke DIR`` adds a tiny checkpoint, dataset and reward (see
:mod:`verl_repro.cpu.smoke`) for a 2-step run; explicit overrides win over those too.

Each run writes into a run directory of its own (never reused): veRL's console output
(``verl.log``), its per-step metrics (``metrics.jsonl``), Hydra's folder and the checkpoints. The
terminal gets one line per step (:mod:`verl_repro.cpu.progress`); ``--verbose`` shows everything.
main_ppo and its Ray instance never outlive the launcher (:mod:`verl_repro.cpu.watchdog`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from verl_repro import UsageError
from verl_repro.cli import claim_output_dir
from verl_repro.cpu import watchdog as watchdog_module
from verl_repro.cpu.registration import PLATFORM_ENV
from verl_repro.cpu.watchdog import end_session

# Ray places each veRL worker as a {CPU: 3, GPU: 1} bundle (plus Ray's own actors): declare enough
# logical CPUs and one logical GPU per worker, or placement waits forever.
RAY_LOGICAL_CPUS = 16
RAY_LOGICAL_CPUS_PER_WORKER = 4


def ray_resources(num_workers: int = 1) -> dict[str, int]:
    """The logical resources a CPU run's Ray cluster declares: ``num_cpus``, ``num_gpus``."""
    return {"num_cpus": max(RAY_LOGICAL_CPUS, RAY_LOGICAL_CPUS_PER_WORKER * (num_workers + 1)), "num_gpus": num_workers}


def ray_cluster_overrides(num_workers: int = 1, ray_address: str | None = None) -> list[str]:
    """main_ppo starts its own Ray cluster with :func:`ray_resources`, or joins ``ray_address``
    (a cluster from :func:`shared_ray_cluster`, which declared them already)."""
    if ray_address is not None:
        return ["ray_kwargs.ray_init.num_cpus=null", f"+ray_kwargs.ray_init.address={ray_address}"]
    resources = ray_resources(num_workers)
    return [
        f"ray_kwargs.ray_init.num_cpus={resources['num_cpus']}",
        f"+ray_kwargs.ray_init.num_gpus={resources['num_gpus']}",
        # The dashboard's processes compete with training for the few cores.
        "+ray_kwargs.ray_init.include_dashboard=False",
    ]


@contextmanager
def shared_ray_cluster(num_workers: int = 1) -> Iterator[str]:
    """A local Ray cluster that several main_ppo runs in a row join (the demo's three), instead of
    each starting its own: ``ray.init`` took 17 s on the loaded 2-core machine. Yields its address;
    the cluster stops with the block (and with this process, whatever ends it). Each run still
    brings its own job: its workers, runtime environment and metrics file."""
    import ray

    ray.init(**ray_resources(num_workers), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def compute_threads(num_workers: int = 1) -> int:
    """Torch threads per worker process: this machine's usable cores shared among the trainer ranks.

    Ray starts an actor that asks for no CPUs with ``OMP_NUM_THREADS=1``, so without this every
    veRL worker computes on one core: on the 2-core machine a step of the demo then took 1.8x as
    long. The phases of a step run one after another (rollout, log-probs, update), so the threads of
    one phase do not compete with another's."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, num_workers))


def cpu_overrides(num_workers: int = 1, ray_address: str | None = None) -> list[str]:
    """The main_ppo overrides a CPU run needs (``num_workers`` = trainer ranks, one logical GPU each;
    ``ray_address``: join that cluster instead of starting one)."""
    return [
        "trainer.device=cpu",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={num_workers}",
        *ray_cluster_overrides(num_workers, ray_address),
        f"+ray_kwargs.ray_init.runtime_env.env_vars.{PLATFORM_ENV}=cpu",
        # quoted: Ray takes environment variables as strings only
        f"+ray_kwargs.ray_init.runtime_env.env_vars.OMP_NUM_THREADS='{compute_threads(num_workers)}'",
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


def run_overrides(run_dir: str | Path) -> list[str]:
    """Where a run writes, all inside ``run_dir``: Hydra's output folder, veRL's per-step metrics
    (file logger, one JSON line per step) and the checkpoints."""
    run_dir = Path(run_dir).resolve()
    return [
        f"hydra.run.dir={run_dir / 'hydra'}",
        "trainer.logger=[console,file]",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={run_dir / METRICS_FILE}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
    ]


def build_command(
    user_overrides: list[str], smoke_dir: str | None = None, prepare: bool = True, run_dir: str | Path | None = None,
    ray_address: str | None = None,
) -> list[str]:
    """The full ``python -m verl.trainer.main_ppo ...`` command line. Layers, later winning per key:
    the CPU overrides, the smoke workload (``smoke_dir``), the run directory's paths (``run_dir``),
    the user's overrides. ``prepare=False`` only names the smoke workspace's paths (for
    ``--print-command``, which must not write anything); ``ray_address`` joins a running cluster."""
    smoke = []
    if smoke_dir is not None:
        from verl_repro.cpu.smoke import prepare_smoke_workspace, smoke_overrides, smoke_workspace_paths

        smoke = smoke_overrides(prepare_smoke_workspace(smoke_dir) if prepare else smoke_workspace_paths(smoke_dir))
    workers = _requested_workers(user_overrides)
    paths = run_overrides(run_dir) if run_dir is not None else []
    overrides = merge_overrides(cpu_overrides(workers, ray_address), smoke, paths, user_overrides)
    return [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]


def cpu_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for main_ppo: ``base`` (default: this process's) with ``VERL_PLATFORM=cpu``."""
    env = dict(os.environ if base is None else base)
    env[PLATFORM_ENV] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ----------------------------------------------------------------------------- run directories

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "verl.log"


# ----------------------------------------------------------------------------- running main_ppo

TIMEOUT_EXIT_CODE = 124  # as timeout(1)


class _Terminated(Exception):
    """SIGTERM arrived while main_ppo was running."""


def _raise_terminated(signum, frame):
    raise _Terminated


def _start_watchdog(session_id: int) -> tuple[subprocess.Popen, int]:
    """The watchdog of :mod:`verl_repro.cpu.watchdog` for ``session_id``, and the write end of its pipe."""
    read_end, write_end = os.pipe()  # not inheritable: main_ppo and Ray never hold the write end
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "verl_repro.cpu.watchdog", str(session_id)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # neither Ctrl-C in the terminal nor the run's end reach it
        )
    finally:
        os.close(read_end)
    return watchdog, write_end


def _stop_watchdog(watchdog: subprocess.Popen, write_end: int) -> None:
    try:
        os.write(write_end, watchdog_module.DONE)
    except OSError:
        pass
    os.close(write_end)
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def _prepare_main_ppo(parent: int) -> None:
    """``preexec_fn`` of main_ppo: it dies with the launcher, and the Ctrl-C the launcher forwards
    reaches it even when the launcher ignores SIGINT, as every background job of a non-interactive
    shell does (a CI script's): without it, main_ppo inherits the ignore and skips its own shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    watchdog_module.die_with_parent(parent)


def run_main_ppo(
    command: list[str],
    env: dict[str, str],
    timeout: Optional[float] = None,
    output: Optional[IO] = None,
    cwd: Optional[str] = None,
    on_start: Optional[Callable[[subprocess.Popen], None]] = None,
) -> int:
    """Run ``command`` in its own session, end whatever it leaves running; returns its exit code
    (:data:`TIMEOUT_EXIT_CODE` after ``timeout`` seconds, 130 after Ctrl-C, 143 after SIGTERM).

    ``output``: file (or ``subprocess.PIPE``) for stdout+stderr; ``cwd``: its working directory;
    ``on_start(process)`` runs once it has started (e.g. a thread reading the pipe). main_ppo dies
    with this process even on SIGKILL (parent-death signal), and a watchdog then ends its session.
    """
    parent = os.getpid()
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        preexec_fn=lambda: _prepare_main_ppo(parent),
    )
    watchdog: Optional[tuple[subprocess.Popen, int]] = None
    previous_handler = None
    # From here on a Ctrl-C or SIGTERM ends main_ppo's session, however early it comes.
    try:
        watchdog = _start_watchdog(process.pid)
        if on_start is not None:
            on_start(process)
        # A SIGTERM (timeout(1), a CI runner cancelling) must not orphan the Ray instance either.
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return TIMEOUT_EXIT_CODE
    except (KeyboardInterrupt, _Terminated) as stop:
        # let main_ppo shut its Ray instance down first; a second Ctrl-C skips the wait
        try:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        end_session(process.pid)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if watchdog is not None:
            _stop_watchdog(*watchdog)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def run_quietly(
    command: list[str],
    run_dir: str | Path,
    *,
    total_steps: Optional[int] = None,
    verbose: bool = False,
    label: str = "",
    timeout: Optional[float] = None,
    heartbeat_s: float = 30.0,
    env: Optional[dict[str, str]] = None,
    stream: Optional[IO] = None,
) -> int:
    """Run main_ppo with its console output in ``run_dir/verl.log`` and one compact line per
    training step (from ``run_dir/metrics.jsonl``) plus a heartbeat line during long phases;
    ``verbose`` also copies the whole console output to ``stream`` (default stdout). On failure
    the log's last lines are shown. Returns main_ppo's exit code."""
    from verl_repro.cpu.progress import RunProgress

    run_dir = Path(run_dir)
    stream = sys.stdout if stream is None else stream
    progress = RunProgress(run_dir / METRICS_FILE, total_steps=total_steps, label=label, stream=stream,
                           heartbeat_s=heartbeat_s, quiet=not verbose, log_path=run_dir / LOG_FILE)
    with (run_dir / LOG_FILE).open("wb") as log:
        copier: list[threading.Thread] = []

        def tee(process: subprocess.Popen) -> None:
            def copy() -> None:
                for line in iter(process.stdout.readline, b""):
                    log.write(line)
                    log.flush()
                    stream.write(line.decode(errors="replace"))
                    stream.flush()

            thread = threading.Thread(target=copy, daemon=True)
            thread.start()
            copier.append(thread)

        progress.start()
        try:
            code = run_main_ppo(
                # the caller's working directory: relative paths in overrides mean what they say
                command, cpu_environment(env), timeout=timeout,
                output=subprocess.PIPE if verbose else log, on_start=tee if verbose else None,
            )
        finally:
            progress.stop()
            for thread in copier:
                thread.join(timeout=10)
    progress.finish(code, run_dir / LOG_FILE)
    return code


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        metavar="DIR",
        help="build a tiny model, dataset and reward under DIR and run 2 GRPO steps on them",
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where the run writes its log, metrics, Hydra folder and checkpoints; must be empty "
        "(default: a new numbered folder under SMOKE_DIR/runs/, or outputs/cpu-run/)",
    )
    parser.add_argument("--verbose", action="store_true", help="show veRL's whole console output (it is always in DIR/verl.log)")
    parser.add_argument("--print-command", action="store_true", help="print the main_ppo command and exit")
    parser.epilog = (
        "Any other argument is a Hydra override for verl.trainer.main_ppo, e.g. trainer.total_training_steps=5"
    )
    parser.set_defaults(accepts_extra_args=True)


def total_steps_of(command: list[str]) -> Optional[int]:
    """``trainer.total_training_steps`` as the command sets it (``None``: veRL derives it)."""
    for override in command:
        if override_key(override) == "trainer.total_training_steps":
            try:
                return int(override.split("=", 1)[1])
            except ValueError:
                return None
    return None


def shell_line(command: list[str]) -> str:
    """``command`` as one line to paste into a shell (quoted where Hydra's own quotes must survive)."""
    return f"{PLATFORM_ENV}=cpu " + shlex.join(command)


def run(args: argparse.Namespace) -> int:
    overrides = list(getattr(args, "extra_args", []) or [])
    if args.smoke and Path(args.smoke).exists() and not Path(args.smoke).is_dir():
        raise UsageError(f"--smoke {args.smoke} is a file: give a folder (created when missing) for the tiny model and data")
    default_parent = Path(args.smoke) / "runs" if args.smoke else Path("outputs") / "cpu-run"
    if args.print_command:
        run_dir = Path(args.run_dir) if args.run_dir else default_parent / "NNN"
        command = build_command(overrides, smoke_dir=args.smoke, prepare=False, run_dir=run_dir)
        print(shell_line(command))
        return 0
    run_dir = claim_output_dir(args.run_dir, default_parent, "--run-dir").resolve()
    command = build_command(overrides, smoke_dir=args.smoke, run_dir=run_dir)
    (run_dir / "command.txt").write_text(shell_line(command) + "\n")
    print(f"verl-repro cpu-run: veRL main_ppo on this CPU; run directory {run_dir}", flush=True)
    print(f"  console output: {run_dir / LOG_FILE}{'' if args.verbose else ' (--verbose shows it here)'}", flush=True)
    return run_quietly(command, run_dir, total_steps=total_steps_of(command), verbose=args.verbose)
