"""The front end every offline tool shares (``analyze``, ``inversion``, ``demo``, ``evaluate``).

One reading of input rows, one rendering of prompts, one set of default prompts, one model loader
and one grader, so that a row, a prompt or a checkpoint means the same thing to every tool.

Input rows (``.jsonl``, ``.json`` list, ``.parquet``, or a directory of them such as veRL's
``trainer.rollout_data_dir``), field names tried in order:

* prompt: ``prompt`` / ``input`` (rendered text, or a chat message list), ``question`` /
  ``problem`` (a bare question: it becomes the user turn of the chat template);
* response: ``response`` / ``output`` (absent: a prompt to sample from);
* ground truth: ``ground_truth`` / ``gts`` / ``answer`` / ``reward_model.ground_truth``, read by
  :func:`verl_repro.rewards.ground_truth_text`, the rule training uses (several accepted answers: the
  first; blank, NaN, bool or dict: none);
* kept as metadata: ``id``, ``uid``, ``step``, ``score``, ``data_source``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from verl_repro import UsageError
from verl_repro.rewards.ground_truth import ground_truth_text

PROMPT_KEYS = ("prompt", "input", "question", "problem")
QUESTION_KEYS = ("question", "problem")
RESPONSE_KEYS = ("response", "output")
GROUND_TRUTH_KEYS = ("ground_truth", "gts", "answer")
META_KEYS = ("id", "uid", "step", "score", "data_source")
PROMPT_FORMATS = ("auto", "raw", "chat")
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")

SYSTEM_PROMPT = "You are a careful math tutor. Solve the problem step by step, one step per line."
USER_SUFFIX = "\nPut the final answer in \\boxed{}."
BUNDLED_PROBLEMS = "data/demo_problems.jsonl"


# ----------------------------------------------------------------------------- records


@dataclass
class Trajectory:
    """One input row: ``prompt`` is text or a chat message list, read from the field ``prompt_key``;
    ``response`` is None for a prompt to sample from."""

    id: str
    prompt: Any
    response: str | None
    ground_truth: str | None
    meta: dict = field(default_factory=dict)
    prompt_key: str = "prompt"

    @property
    def is_question(self) -> bool:
        """A bare question (``question`` / ``problem``): rendered as the user turn of a chat."""
        return self.prompt_key in QUESTION_KEYS and not isinstance(self.prompt, list)

    @property
    def score(self) -> float | None:
        """The row's outcome ``score`` (veRL's rollout dumps), or None when absent or not finite."""
        try:
            value = float(self.meta.get("score"))
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """numpy containers from parquet → lists / dicts / Python scalars."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _step_of(path: Path) -> tuple[int, str]:
    return (int(path.stem), path.name) if path.stem.isdigit() else (-1, path.name)


def read_rows(path: str | Path, flag: str = "--data") -> list[tuple[str, dict]]:
    """``(source, row)`` pairs from a ``.jsonl`` / ``.json`` / ``.parquet`` file, or from every such
    file of a directory (veRL's ``rollout_data_dir``: ``<step>.jsonl``, read in step order).
    ``flag`` names the option the path came from in error messages."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix in ROW_SUFFIXES), key=_step_of)
        if not files:
            raise FileNotFoundError(f"{flag} {path} holds no .jsonl / .json / .parquet files")
        return [row for file in files for row in read_rows(file, flag)]
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return [(f"{path}:{i}", _plain(row)) for i, row in enumerate(frame.to_dict("records"))]
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return [(f"{path}:{i}", row) for i, row in enumerate(json.loads(text))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{flag} {path}:{number} is not valid JSON: {exc}") from exc
    return rows


def _first(row: dict, keys: Sequence[str]) -> tuple[str | None, Any]:
    return next(((k, row[k]) for k in keys if k in row and row[k] is not None), (None, None))


def to_trajectory(source: str, row: dict, need_response: bool = True) -> Trajectory:
    """One row of any supported schema → :class:`Trajectory` (errors name the row and the keys)."""
    if not isinstance(row, dict):
        raise UsageError(f"{source}: expected a JSON object, got {type(row).__name__}")
    prompt_key, prompt = _first(row, PROMPT_KEYS)
    if prompt is None:
        raise UsageError(f"{source}: no prompt (looked for {', '.join(PROMPT_KEYS)})")
    _, response = _first(row, RESPONSE_KEYS)
    if need_response and not isinstance(response, str):
        raise UsageError(f"{source}: no response text (looked for {', '.join(RESPONSE_KEYS)})")
    _, ground_truth = _first(row, GROUND_TRUTH_KEYS)
    if ground_truth is None and isinstance(row.get("reward_model"), dict):
        ground_truth = row["reward_model"].get("ground_truth")
    meta = {k: row[k] for k in META_KEYS if k in row}
    return Trajectory(
        id=str(row.get("id", row.get("uid", source))), prompt=prompt, response=response if isinstance(response, str) else None,
        ground_truth=ground_truth_text(ground_truth), meta=meta, prompt_key=prompt_key,
    )


def load_trajectories(path: str | Path, *, need_response: bool = True, step: str | None = None, limit: int | None = None,
                      flag: str = "--trajectories") -> list[Trajectory]:
    """Trajectories (or prompts, ``need_response=False``) from ``path``; ``step`` keeps one training
    step of a veRL dump (an int, or ``"last"``)."""
    trajectories = [to_trajectory(source, row, need_response) for source, row in read_rows(path, flag)]
    if step is not None:
        steps = [t.meta.get("step") for t in trajectories]
        if all(s is None for s in steps):
            raise UsageError(f"--step {step}: the rows of {path} have no 'step' field")
        wanted = max(s for s in steps if s is not None) if step == "last" else int(step)
        trajectories = [t for t in trajectories if t.meta.get("step") == wanted]
        if not trajectories:
            raise UsageError(f"--step {step}: no rows of step {wanted} in {path}")
    return trajectories[:limit] if limit else trajectories


def bundled_problems(limit: int | None = None) -> list[Trajectory]:
    """The grade-school problems shipped with the package (``question`` / ``answer``; no responses)."""
    from importlib.resources import files

    text = files("verl_repro").joinpath(BUNDLED_PROBLEMS).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    problems = [to_trajectory(f"demo_problems.jsonl:{i}", row, need_response=False) for i, row in enumerate(rows, start=1)]
    return problems[:limit] if limit else problems


# ----------------------------------------------------------------------------- prompts


def render_prompt(tokenizer, prompt: Any, prompt_format: str, system_prompt: str | None = None, suffix: str = "") -> str:
    """The text the policy sees before its response.

    A message list always goes through the tokenizer's chat template; a string is used as is
    (``raw``: e.g. a veRL dump's decoded prompt) or wrapped as the user message (``chat``), after
    ``system_prompt`` when given and with ``suffix`` appended. A tokenizer without a chat template
    gets the message contents one per line.
    """
    if isinstance(prompt, list):
        messages = [dict(m) for m in prompt]
    elif prompt_format == "chat":
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": str(prompt) + suffix}
        ]
    else:
        return str(prompt)
    if not getattr(tokenizer, "chat_template", None):
        return "\n".join(str(m.get("content", "")) for m in messages) + "\n"
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (rendered prompts carry their own)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, or its end-of-sequence id when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def end_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a response. The checkpoint's generation config knows its end-of-turn tokens;
    a converted tokenizer's ``eos_token`` can be wrong (SmolLM2's GGUF tokenizer says ``<|im_start|>``)."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        return [tokenizer.eos_token_id]
    return [configured] if isinstance(configured, int) else list(configured)


# ----------------------------------------------------------------------------- model


def load_model(path: str | Path | None = None, *, device: str | None = "auto", dtype: str = "auto", progress: bool = True):
    """``(model, tokenizer, path)`` of an HF checkpoint in eval mode; ``path=None``: the embedded
    SmolLM2-135M-Instruct (:mod:`verl_repro.models.smollm2`, converted from its GGUF on first use).

    ``device``: ``auto`` / None (cuda when available, else cpu), ``cpu``, ``cuda[:i]``;
    ``dtype``: ``auto`` (bfloat16 on a GPU, float32 on a CPU) or a torch dtype name.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        from verl_repro.models.smollm2 import smollm2_checkpoint

        if progress:
            print("loading embedded SmolLM2-135M-Instruct (the first run converts the GGUF, ~40 s) ...", flush=True)
        path = smollm2_checkpoint()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else str(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tokenizer, Path(path)


# ----------------------------------------------------------------------------- grading


def grade_responses(
    responses: Sequence[str],
    ground_truths: Sequence[str | None],
    *,
    require_think_end: bool,
    think_end_token: str = "</think>",
    strip_texts: Sequence[str] = (),
    num_processes: int = 2,
) -> list[bool | None]:
    """Correctness by the math reward manager's grader (last ``\\boxed{}`` after ``</think>`` vs the
    ground truth, math-verify, per-sample deadline); None where there is no ground truth."""
    from concurrent.futures import ThreadPoolExecutor

    from verl_repro.rewards import MathRewardConfig, MathVerifier

    todo = [i for i, gt in enumerate(ground_truths) if gt is not None]
    correct: list[bool | None] = [None] * len(responses)
    if not todo:
        return correct
    config = MathRewardConfig(require_think_end=require_think_end, think_end_token=think_end_token, num_processes=num_processes)
    verifier = MathVerifier(config, strip_texts=tuple(strip_texts))
    try:
        with ThreadPoolExecutor(num_processes) as pool:
            scores = list(pool.map(lambda i: verifier.score(responses[i], ground_truths[i]), todo))
    finally:
        verifier.close()
    for i, score in zip(todo, scores):
        correct[i] = bool(score.acc > 0)
    return correct
