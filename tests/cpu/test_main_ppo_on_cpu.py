"""veRL's real ``python -m verl.trainer.main_ppo`` on this CPU: 2 GRPO steps, resume, 2 repro_grpo steps.

Each run is the command ``verl-repro cpu-run --smoke DIR ...`` builds (tiny random Qwen2, 16
prompts, a reward that varies between samples), in a subprocess bounded by a timeout. Metrics
come from veRL's file logger (one JSON line per step); the hf rollout server prints one line per
weight sync, which shows whether the trained weights reached the sampler.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from verl_repro.cpu.launcher import TIMEOUT_EXIT_CODE, build_command, cpu_environment, run_main_ppo

# A run takes ~1.5 min on a quiet 2-core machine and ~4 min when the cores are shared.
RUN_TIMEOUT_S = 600

SYNC_LINE = re.compile(
    r"\[hf-rollout\] weights synced: replica=(\d+) step=(\S+) tensors=(\d+) changed=(\d+) max_abs_delta=(\S+)"
)


@dataclass
class Run:
    returncode: int
    log: str
    metrics: dict[int, dict[str, float]]  # step -> metrics
    weight_syncs: list[dict]  # in order: step, tensors, changed, max_abs_delta

    def explain(self) -> str:
        return f"exit {self.returncode}; log tail:\n{self.log[-4000:]}"


def _run_main_ppo(workspace: Path, name: str, *overrides: str) -> Run:
    metrics_path = workspace / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    # each run checkpoints into its own folder: resume_mode=auto must not pick up another run's
    overrides = (f"trainer.default_local_dir={workspace / name / 'checkpoints'}", *overrides)
    command = build_command(list(overrides), smoke_dir=str(workspace))
    log_path = workspace / f"{name}.log"
    with log_path.open("w") as output:
        # own session, killed afterwards: no Ray process outlives the run, other clusters untouched
        returncode = run_main_ppo(command, cpu_environment(), timeout=RUN_TIMEOUT_S, output=output, cwd=str(workspace))
    log = log_path.read_text(errors="replace")
    if returncode == TIMEOUT_EXIT_CODE:
        log += f"\n[test] main_ppo timed out after {RUN_TIMEOUT_S}s"
    metrics = {}
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            metrics[int(record["step"])] = record["data"]
    syncs = [
        {"step": step, "tensors": int(tensors), "changed": int(changed), "max_abs_delta": float(delta)}
        for _, step, tensors, changed, delta in SYNC_LINE.findall(log)
    ]
    return Run(returncode, log, metrics, syncs)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    directory = tmp_path_factory.mktemp("cpu_smoke")
    shutil.copytree(tiny_model_dir, directory / "model")
    return directory


@pytest.fixture(scope="module")
def grpo_run(workspace):
    # save_freq=1 leaves a step-1 checkpoint for the resume test
    return _run_main_ppo(workspace, "grpo", "trainer.save_freq=1")


def _assert_trained(run: Run, steps: list[int]):
    assert run.returncode == 0, run.explain()
    assert sorted(run.metrics) == steps, run.explain()
    for step in steps:
        metrics = run.metrics[step]
        assert metrics["actor/grad_norm"] > 0, (step, metrics)
        # a varying reward gives non-zero group-normalized advantages of both signs
        assert metrics["critic/score/max"] > metrics["critic/score/min"], (step, metrics)
        assert metrics["critic/advantages/max"] > 0 > metrics["critic/advantages/min"], (step, metrics)
        # the hf sampler's log-probs agree with the actor's recomputation of the same tokens
        assert metrics["training/rollout_probs_diff_max"] < 0.05, (step, metrics)


def test_grpo_two_steps_train_and_sync_the_rollout(grpo_run):
    _assert_trained(grpo_run, [1, 2])
    assert "step:2" in grpo_run.log
    # one sync at start-up (initial weights, nothing changes), then one after each step
    syncs = grpo_run.weight_syncs
    assert [sync["step"] for sync in syncs] == ["0", "1", "2"], grpo_run.explain()
    assert syncs[0]["changed"] == 0
    for sync in syncs[1:]:
        assert sync["changed"] > 0 and sync["max_abs_delta"] > 0, syncs
    assert 0 < grpo_run.metrics[2]["actor/perf/max_memory_allocated_gb"] < 16


def test_resume_from_the_step_1_checkpoint_reaches_step_2(workspace, grpo_run):
    assert grpo_run.returncode == 0, grpo_run.explain()
    checkpoint = workspace / "grpo" / "checkpoints" / "global_step_1"
    assert (checkpoint / "actor").is_dir()
    resumed = _run_main_ppo(
        workspace, "resume", "trainer.resume_mode=resume_path", f"trainer.resume_from_path={checkpoint}"
    )
    _assert_trained(resumed, [2])
    assert f"Resuming from {checkpoint}" in resumed.log
    # the first sync after loading already carries the step-1 weights, not the initial checkpoint's
    first = resumed.weight_syncs[0]
    assert first["step"] == "1" and first["changed"] > 0, resumed.weight_syncs
    # ... and they are the weights the uninterrupted run synced after its step 1
    assert first == grpo_run.weight_syncs[1]


def test_repro_grpo_two_steps_log_process_reward_metrics(workspace):
    # The random model never closes its thought; repro.no_think_end=use_end scores up to the
    # response end instead of skipping, so the RePro scoring through the ref worker really runs.
    run = _run_main_ppo(
        workspace,
        "repro_grpo",
        "+repro=default",
        "algorithm.adv_estimator=repro_grpo",
        "repro.no_think_end=use_end",
    )
    _assert_trained(run, [1, 2])
    for step in (1, 2):
        metrics = run.metrics[step]
        assert metrics["repro/with_process_reward"] > 0, metrics
        assert metrics["repro/scored_sequences"] > 0 and metrics["repro/process_adv_abs_mean"] > 0, metrics
        assert "timing_s/repro_scoring" in metrics
