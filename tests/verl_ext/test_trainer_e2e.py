"""veRL's real ``main_ppo`` with ``repro_grpo`` on a CPU (the CPU backend, ``verl-repro cpu-run``).

Both scorers, in two runs: run A, 2 steps with ``repro.scorer=ref`` (veRL's reference worker),
checkpoint at step 2; run B, ``repro.scorer=actor`` (the paper setting, the recipes' choice) with no
reference model at all (``use_kl_loss=False``), resuming run A's checkpoint for step 3. Both assert
the ``repro/*`` metrics and ``timing_s/repro_scoring`` are logged and finite, that the process
advantages are non-zero and that the policy trains; run A also checks veRL's sync checkpoint layout
(no TransferQueue state).

The tiny random model almost never writes ``</think>`` in 32 tokens, so both runs use
``repro.no_think_end=use_end`` (the response end acts as the end of thinking). Each run takes
about 4-5 minutes on a loaded 2-core machine (Ray and worker start-up dominate), hence ``slow``.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPRO_METRICS = [
    "repro/num_cuts_mean", "repro/j_base_mean", "repro/j_final_mean", "repro/magnitude_mean",
    "repro/stability_mean", "repro/process_adv_abs_mean", "repro/skipped_no_think_end",
    "repro/skipped_no_ground_truth", "repro/skipped_nonfinite", "repro/scored_tokens", "timing_s/repro_scoring",
]


def run_main_ppo(workspace: Path, name: str, overrides: list[str]) -> list[dict]:
    from verl_repro.cpu.launcher import build_command, cpu_environment

    metrics_file = workspace / f"{name}.jsonl"
    command = build_command(
        [
            "+repro=default",
            "algorithm.adv_estimator=repro_grpo",
            "repro.no_think_end=use_end",
            "repro.alpha=0.5",
            "repro.num_segments=3",
            "trainer.logger=[console,file]",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics_file}",
            *overrides,
        ],
        smoke_dir=str(workspace),
    )
    result = subprocess.run(command, env=cpu_environment(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout[-6000:], result.stderr[-6000:])
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]


def check_repro_metrics(records: list[dict], steps: list[int]) -> None:
    assert [record["step"] for record in records] == steps
    for record in records:
        data = record["data"]
        for key in REPRO_METRICS:
            assert key in data and math.isfinite(data[key]), (record["step"], key)
        assert data["repro/with_process_reward"] > 0
        assert data["repro/process_adv_abs_mean"] > 0
        assert data["repro/scored_tokens"] > 0 and data["timing_s/repro_scoring"] > 0
        assert data["actor/grad_norm"] > 0
        assert data["critic/advantages/max"] > 0 > data["critic/advantages/min"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("repro_e2e")


@pytest.fixture(scope="module")
def run_a(workspace):
    records = run_main_ppo(workspace, "ref", ["repro.scorer=ref", "trainer.save_freq=2"])
    return records


def test_repro_grpo_two_steps_scored_by_the_reference_model(workspace, run_a):
    check_repro_metrics(run_a, steps=[1, 2])
    checkpoints = workspace / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert (checkpoints / "global_step_2" / "actor").is_dir()
    assert not (checkpoints / "global_step_2" / "transfer_queue").exists()  # sync mode: no TQ state


def test_repro_grpo_scored_by_the_actor_resumes_the_checkpoint(workspace, run_a):
    records = run_main_ppo(
        workspace,
        "actor",
        [
            "repro.scorer=actor",
            "actor_rollout_ref.actor.use_kl_loss=False",  # no reference model exists in this run
            "trainer.total_training_steps=3",
            "trainer.resume_mode=auto",
        ],
    )
    check_repro_metrics(records, steps=[3])
