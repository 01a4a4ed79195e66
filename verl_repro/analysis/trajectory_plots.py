"""Figures of ``verl-repro analyze``: one run (J̃ curves, RePro scores, backtracking) and a comparison.

Drawn from the records and summaries of :mod:`verl_repro.analysis.trajectories`, on the headless
helpers of :mod:`verl_repro.analysis.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from verl_repro.analysis.plots import GROUP_COLORS, histogram_by_group, new_figure, save_figure
from verl_repro.analysis.trajectories import GROUPS, curve_on_grid, group_records


def _subplots(nrows: int, ncols: int, width: float, height: float):
    figure, _ = new_figure(width, height)
    figure.clf()
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def _draw_j_curves(ax, summary: dict, records: Sequence[dict] | None = None, *, label: str = "", linestyle="-", color=None) -> None:
    grid = np.asarray(summary["grid"])
    groups = GROUPS if summary["num_graded"] else ("all",)
    for name in groups:
        curve = summary["groups"][name]["j_curve"]
        if not curve["count"]:
            continue
        tint = color or GROUP_COLORS.get(name, GROUP_COLORS["unknown"])
        style = linestyle if color is None else ("-" if name != "incorrect" else "--")
        if records is not None and len(records) <= 100:
            for r in group_records(records)[name]:
                if r["j_curve"] is not None:
                    ax.plot(grid, curve_on_grid(r["j_curve"], grid), color=tint, alpha=0.15, linewidth=0.8)
        mean, std = np.asarray(curve["mean"]), np.asarray(curve["std"])
        ax.plot(grid, mean, color=tint, linestyle=style, linewidth=2, label=f"{label}{name} (n={curve['count']})")
        ax.fill_between(grid, mean - std, mean + std, color=tint, alpha=0.18, linewidth=0)
    ax.set_xlabel("normalized step position (0: no reasoning, 1: after </think> or the response end)")
    ax.set_ylabel("J̃: mean log-prob of the ground-truth answer")
    ax.legend(loc="best", fontsize=8)


def _values(records: Sequence[dict], key: str) -> dict[str, list[float]]:
    groups = group_records(records)
    names = GROUPS if any(r["correct"] is not None for r in records) else ("all",)
    return {name if name != "all" else "unknown": [r[key] for r in groups[name] if r[key] is not None] for name in names}


def plot_run(records: Sequence[dict], summary: dict, output_dir: Path, title: str = "") -> list[Path]:
    """``j_curves.png``, ``scores.png`` (final magnitude / stability by correctness) and
    ``backtracking.png`` (per response, and against length) in ``output_dir``."""
    paths = []
    figure, ax = new_figure(7.0, 4.5)
    _draw_j_curves(ax, summary, records)
    ax.set_title(f"{title}J̃ along the reasoning (mean ± 1 s.d.)")
    paths.append(save_figure(figure, output_dir / "j_curves.png"))

    figure, axes = _subplots(1, 2, 10.0, 4.0)
    for ax, key, name in ((axes[0, 0], "final_magnitude", "magnitude S_magn"), (axes[0, 1], "final_stability", "stability S_stab")):
        histogram_by_group(ax, _values(records, key), bins=20, value_range=(0.0, 1.0))
        ax.set_xlabel(f"final {name} (at e+1, top-k cuts)")
        ax.set_ylabel("responses")
    figure.suptitle(f"{title}RePro scores by correctness")
    paths.append(save_figure(figure, output_dir / "scores.png"))

    figure, axes = _subplots(1, 2, 10.0, 4.0)
    counts = _values(records, "backtracking")
    highest = max([max(v) for v in counts.values() if v] + [1])
    histogram_by_group(axes[0, 0], counts, bins=np.arange(highest + 2) - 0.5, value_range=None)
    axes[0, 0].set_xlabel("backtracking phrases per response")
    axes[0, 0].set_ylabel("responses")
    lengths = _values(records, "response_tokens")
    for name, values in counts.items():
        axes[0, 1].scatter(lengths[name], values, s=14, alpha=0.6, color=GROUP_COLORS.get(name), label=name)
    axes[0, 1].set_xlabel("response tokens")
    axes[0, 1].set_ylabel("backtracking phrases")
    axes[0, 1].legend(loc="best", fontsize=8)
    figure.suptitle(f"{title}backtracking per response")
    paths.append(save_figure(figure, output_dir / "backtracking.png"))
    return paths


def plot_compare(runs: Sequence[tuple[str, dict, list[dict]]], path: Path) -> Path:
    """One figure: J̃ curves of both runs, final magnitude / stability, backtracking, length, accuracy."""
    colors = ["tab:blue", "tab:orange", "tab:purple", "tab:brown"]
    figure, axes = _subplots(2, 3, 16.0, 8.5)
    for (label, summary, _), color in zip(runs, colors):
        _draw_j_curves(axes[0, 0], summary, None, label=f"{label} ", color=color)
    axes[0, 0].set_title("J̃ vs normalized step (solid: correct, dashed: incorrect)")

    def grouped_boxes(ax, key, ylabel):
        data, ticks = [], []
        for label, _, records in runs:
            for name, values in _values(records, key).items():
                data.append(values or [np.nan])
                ticks.append(f"{label}\n{name}")
        ax.boxplot(data, tick_labels=ticks)
        ax.set_ylabel(ylabel)

    grouped_boxes(axes[0, 1], "final_magnitude", "final magnitude S_magn")
    grouped_boxes(axes[0, 2], "final_stability", "final stability S_stab")

    def grouped_bars(ax, key, ylabel):
        width = 0.8 / len(runs)
        for i, ((label, summary, _), color) in enumerate(zip(runs, colors)):
            names = GROUPS if summary["num_graded"] else ("all",)
            means = [summary["groups"][n][key] or 0.0 for n in names]
            ax.bar(np.arange(len(names)) + i * width, means, width, color=color, label=label)
            ax.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)

    grouped_bars(axes[1, 0], "backtracking_mean", "backtracking phrases / response")
    grouped_bars(axes[1, 1], "response_tokens_mean", "response tokens")
    labels = [label for label, _, _ in runs]
    bars = axes[1, 2].bar(labels, [s["accuracy"] or 0.0 for _, s, _ in runs], color=colors[: len(runs)])
    axes[1, 2].bar_label(bars, fmt="%.2f")
    axes[1, 2].set_ylim(0, 1)
    axes[1, 2].set_ylabel("accuracy")
    return save_figure(figure, path)
