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

from verl_repro import UsageError


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


class MetricsFileError(UsageError):
    """A metrics file that is not veRL's: the message names the file, the line and what is wrong."""


def _step_number(value, where: str) -> int:
    """A step is a whole number: ``3`` (or ``3.0``). A fractional step would merge with its floor,
    and null, ``Infinity`` or a list are no step at all: each is refused, naming the line."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value != int(value):
        raise MetricsFileError(f"{where}: the step must be a whole number, got {json.dumps(value)}")
    return int(value)


def _metric_value(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an int past float range: as the infinity it is nearest to
        return math.inf if value > 0 else -math.inf


def parse_metrics(path: str | Path) -> tuple[dict[int, dict[str, float]], int]:
    """``({step: {key: value}}, skipped lines)`` of a veRL file-logger jsonl.

    A line that is not JSON (the half-written last line of a running run, or corruption) is
    skipped and counted; a later line for the same step (a resumed run) replaces the earlier. A
    JSON line that is not ``{"step": N, "data": {...}}``, or whose step is not a whole number,
    raises :class:`MetricsFileError`. Non-numeric values are left out; numbers keep their value
    (``1e400`` is ``inf``, which no figure shows).
    """
    path = Path(path)
    metrics: dict[int, dict[str, float]] = {}
    skipped = 0
    if not path.exists():
        return metrics, skipped
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            skipped += 1
            continue
        where = f"{path}:{line_number}"
        if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
            raise MetricsFileError(f"{where} is not a veRL metrics line ({{'step': N, 'data': {{...}}}})")
        metrics[_step_number(record["step"], where)] = {
            key: _metric_value(value) for key, value in record["data"].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    return metrics, skipped


def read_metrics(path: str | Path) -> dict[int, dict[str, float]]:
    """``{step: {key: value}}`` of a veRL file-logger jsonl (:func:`parse_metrics` without the count)."""
    return parse_metrics(path)[0]


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
