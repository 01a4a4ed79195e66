"""veRL's per-step metrics as its file logger writes them, and the figures a reader looks at first.

veRL's ``file`` logger (``trainer.logger=[console,file]``, path from ``VERL_FILE_LOGGER_PATH``)
writes one JSON line per training step: ``{"step": 3, "data": {"critic/score/mean": 0.5, ...}}``.
The same file comes out of a ``cpu-run`` and of a cluster run, so the compact per-step line of
``cpu-run``, the demo's closing table and ``verl-repro plot`` all read it through this module and
name the same figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One headline figure: its label and the metric keys that carry it, first found wins."""

    name: str
    label: str
    keys: tuple[str, ...]
    fmt: str = "{:.3f}"


# The outcome reward of the repro_math grader is 1 for a right and 0 for a wrong answer, so the
# mean score is the accuracy; a reward function paying other values keeps it as the mean score.
FIGURES: tuple[Figure, ...] = (
    Figure("reward", "reward (mean score)", ("critic/score/mean",)),
    Figure("accuracy", "accuracy", ("reward/acc/mean", "critic/acc/mean", "acc/mean")),
    Figure("response_length", "response length (tokens)", ("response_length/mean",), "{:.1f}"),
    Figure("entropy", "entropy (nats / token)", ("actor/entropy",)),
    Figure("process_adv", "repro/process_adv_abs_mean", ("repro/process_adv_abs_mean",)),
    Figure("rho", "corr/rho_mean", ("corr/rho_mean",), "{:+.3f}"),
    Figure("step_time", "step time (s)", ("timing_s/step",), "{:.1f}"),
)
FIGURES_BY_NAME = {figure.name: figure for figure in FIGURES}


def read_metrics(path: str | Path) -> dict[int, dict[str, float]]:
    """``{step: {key: value}}`` of a veRL file-logger jsonl. A half-written last line (the run is
    still going) is skipped; a later line for the same step (a resumed run) replaces the earlier."""
    path = Path(path)
    metrics: dict[int, dict[str, float]] = {}
    if not path.exists():
        return metrics
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
            raise ValueError(f"{path}:{line_number} is not a veRL metrics line ({{'step': N, 'data': {{...}}}})")
        metrics[int(record["step"])] = {
            key: float(value) for key, value in record["data"].items() if isinstance(value, (int, float))
        }
    return metrics


def figure_value(data: dict[str, float], figure: Figure | str) -> float | None:
    """The figure's value in one step's metrics, ``None`` when none of its keys is logged or the
    value is not finite. ``accuracy`` falls back to the mean score when the score is 0/1-valued."""
    figure = FIGURES_BY_NAME[figure] if isinstance(figure, str) else figure
    for key in figure.keys:
        value = data.get(key)
        if value is not None and math.isfinite(value):
            return value
    if figure.name == "accuracy":
        low, high = data.get("critic/score/min"), data.get("critic/score/max")
        if low is not None and high is not None and low >= 0.0 and high <= 1.0:
            return figure_value(data, "reward")
    return None


def series(metrics: dict[int, dict[str, float]], figure: Figure | str) -> tuple[list[int], list[float]]:
    """Steps and values of one figure over a run, steps without the figure left out."""
    steps, values = [], []
    for step in sorted(metrics):
        value = figure_value(metrics[step], figure)
        if value is not None:
            steps.append(step)
            values.append(value)
    return steps, values
