"""``verl-repro plot METRICS.jsonl ...``: training curves of one or more runs, one line per run.

Reads veRL's file-logger metrics (``trainer.logger=[console,file]``; a ``cpu-run`` writes them to
``RUN_DIR/metrics.jsonl``, a cluster run wherever ``VERL_FILE_LOGGER_PATH`` points) and draws
``training_curves.png``: reward, accuracy, response length, entropy, ``repro/process_adv_abs_mean``
and ``corr/rho_mean`` by step. A run that does not log a figure (GRPO has no ``repro/*``) has no
line in that panel; a panel no run logs says so. ``verl-repro demo`` draws its figure with the
same function.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping, Sequence

from verl_repro import UsageError
from verl_repro.run_metrics import FIGURES_BY_NAME, parse_metrics, series

PANELS = ("reward", "accuracy", "response_length", "entropy", "process_adv", "rho")
FIGURE_FILE = "training_curves.png"


def run_label(path: str | Path) -> str:
    """A run's label from its metrics path: the folder name (``.../repro_grpo/metrics.jsonl`` →
    ``repro_grpo``), or the file stem when the file has another name."""
    path = Path(path)
    return path.parent.name if path.name == "metrics.jsonl" and path.parent.name else path.stem


def plot_training_curves(runs: Mapping[str, Mapping[int, Mapping[str, float]]], path: str | Path, title: str = "") -> Path:
    """Draw the :data:`PANELS` of every run (``{label: {step: metrics}}``) into ``path`` (PNG)."""
    from verl_repro.analysis.figures import new_figure, save_figure

    figure, _ = new_figure(12.0, 6.5)
    figure.clf()
    axes = figure.subplots(2, 3, squeeze=False).reshape(-1)
    for ax, name in zip(axes, PANELS):
        drawn = 0
        for index, (label, metrics) in enumerate(runs.items()):
            steps, values = series(metrics, name)
            if steps:  # a run keeps its colour in every panel, also where others have no line
                ax.plot(steps, values, marker="o", markersize=4, label=label, color=f"C{index % 10}")
                drawn += 1
        ax.set_title(FIGURES_BY_NAME[name].label, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metrics", nargs="+", help="veRL metrics files (metrics.jsonl of a cpu-run or a cluster run's file logger)")
    parser.add_argument("--labels", nargs="+", help="one label per file (default: each file's folder name)")
    parser.add_argument("--output", default=FIGURE_FILE, help=f"PNG to write (default: ./{FIGURE_FILE}); an existing one is replaced")
    parser.add_argument("--title", default="")


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, int]]:
    """``({label: metrics}, {label: skipped lines})`` of the files; a missing, empty or foreign file
    is a :class:`~verl_repro.UsageError` naming it."""
    if labels is not None and len(labels) != len(paths):
        raise UsageError(f"{len(labels)} --labels for {len(paths)} metrics files: give one label per file")
    runs: dict[str, dict[int, dict[str, float]]] = {}
    skipped: dict[str, int] = {}
    for index, path in enumerate(paths):
        if Path(path).is_dir():
            hint = f"; did you mean {Path(path) / 'metrics.jsonl'}?" if (Path(path) / "metrics.jsonl").is_file() else ""
            raise UsageError(f"{path} is a folder, not a metrics file{hint}")
        if not Path(path).is_file():
            raise UsageError(f"{path} does not exist")
        metrics, bad_lines = parse_metrics(path)
        if not metrics:
            raise UsageError(f"{path} has no training step" + (f" ({bad_lines} lines are not JSON)" if bad_lines else ""))
        label = labels[index] if labels is not None else run_label(path)
        while label in runs:  # two runs of the same folder name stay apart
            label += "'"
        runs[label] = metrics
        skipped[label] = bad_lines
    return runs, skipped


def run(args: argparse.Namespace) -> int:
    if Path(args.output).suffix.lower() != ".png":
        raise UsageError(f"--output must name a .png file, got {args.output!r}")
    if Path(args.output).is_dir():
        raise UsageError(f"--output {args.output} is a folder: name the .png file to write")
    runs, skipped = load_runs(args.metrics, args.labels)
    path = plot_training_curves(runs, args.output, args.title)
    steps = ", ".join(f"{label}: {len(metrics)} steps" + (f", {skipped[label]} unreadable lines skipped" if skipped[label] else "")
                      for label, metrics in runs.items())
    print(f"wrote {path.resolve()} ({steps})")
    return 0
