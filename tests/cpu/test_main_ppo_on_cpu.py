"""veRL's real ``python -m verl.trainer.main_ppo`` on this CPU: 2 GRPO steps, resume, and the recipes'
data path on two trainer ranks: 2 ``repro_grpo`` steps with prefix-shared scoring and 2 ``corrpo``
steps, both through the ``repro`` engine vendor. Each run takes minutes, hence ``slow``.

veRL's padded layout with fixed micro-batches (the CPU backend's default) is ``make demo``'s: its
GRPO, RePro-GRPO and CorR-PO runs on SmolLM2 check their own metrics (every step, finite, a varying
reward, RePro's process reward, CorR-PO's rho), and CI runs it, so no test repeats that run.

Each run is the command ``verl-repro cpu-run --smoke DIR ...`` builds (tiny random Qwen2, 16
prompts, a reward that varies between samples), in a subprocess bounded by a timeout. Metrics
come from veRL's file logger (one JSON line per step); the hf rollout server prints one line per
weight sync, which shows whether the trained weights reached the sampler.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from verl_repro.cpu.launcher import TIMEOUT_EXIT_CODE, build_command, cpu_environment, run_main_ppo


# A run takes ~1.5 min on a quiet 2-core machine and ~4 min when the cores are shared.
RUN_TIMEOUT_S = 600

SYNC_LINE = re.compile(
    r"\[hf-rollout\] weights synced: replica=(\d+) step=(\d+) tensors=(\d+) changed=(\d+) max_abs_delta=([-+.0-9eE]+)"
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------------------------
# The recipes' data path on two trainer ranks
# ----------------------------------------------------------------------------------------------

# Two trainer ranks (gloo, FSDP2 sharding over both), the repro engine vendor in every worker;
# the smoke workload already packs sequences padding-free into token-budgeted micro-batches.
TWO_RANKS = ("trainer.n_gpus_per_node=2", "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR=repro")
# 16 responses over 2 ranks in micro-batches of at most 3 responses: 3 micro-batches of 3 per rank,
# so our DP layout pads each rank with one repeated response (checked below).
SCORING_MICRO_BATCH = 3
FALLBACK_LOG_LINES = ("falls back to naive", "runs naive in this worker")


def _assert_recipe_path(run: Run) -> None:
    _assert_trained(run, [1, 2])
    for step, metrics in run.metrics.items():
        not_finite = sorted(key for key, value in metrics.items() if isinstance(value, (int, float)) and not math.isfinite(value))
        assert not not_finite, (step, not_finite)
        # the sampler and the actor's packed recomputation see the same fp32 model
        assert metrics["training/rollout_probs_diff_max"] <= 1e-5, (step, metrics["training/rollout_probs_diff_max"])


def test_dp_layout_of_the_two_rank_scoring_run_pads():
    from verl_repro.verl_ext.transport import dp_layout

    _, is_padding, micro_batch = dp_layout(torch.full((16,), 40), dp_size=2, micro_batch_size=SCORING_MICRO_BATCH)
    assert (int(is_padding.sum()), micro_batch) == (2, 3)


@pytest.mark.slow
def test_two_ranks_repro_grpo_prefix_shared_through_the_engine_vendor(workspace):
    run = _run_main_ppo(
        workspace,
        "two_ranks_repro",
        *TWO_RANKS,
        "+repro=default",
        "algorithm.adv_estimator=repro_grpo",
        "repro.no_think_end=use_end",
        "repro.scoring_mode=prefix_shared",
        f"repro.scoring_micro_batch_size={SCORING_MICRO_BATCH}",
    )
    _assert_recipe_path(run)
    # the tree pass ran in the workers: no fallback to naive scoring was logged anywhere
    assert not [line for line in FALLBACK_LOG_LINES if line in run.log], run.explain()
    for metrics in run.metrics.values():
        assert metrics["repro/with_process_reward"] > 0 and metrics["repro/scored_tokens"] > 0, metrics


@pytest.mark.slow
def test_two_ranks_corrpo_through_the_engine_vendor(workspace):
    run = _run_main_ppo(
        workspace, "two_ranks_corrpo", *TWO_RANKS, "+repro=default", "algorithm.adv_estimator=corrpo", "repro.corr.scope=all"
    )
    _assert_recipe_path(run)
    for metrics in run.metrics.values():
        assert "corr/rho_mean" in metrics, sorted(metrics)
