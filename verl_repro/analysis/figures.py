"""Every figure of the offline tools, on one convention (matplotlib, headless ``Agg`` backend).

A figure starts with :func:`new_figure`, draws on an ``Axes`` it owns with the helpers below
(non-finite points are dropped before drawing, and the number drawn is in the legend) and ends
with :func:`save_figure`; each tool has one ``plot_*`` function that writes its PNGs into the
output directory and returns their paths:

* ``analyze``: :func:`plot_run` (J̃ curves, RePro scores, backtracking) and :func:`plot_compare`;
* ``inversion``: :func:`plot_inversion` (entropy vs gradient norm, ρ histogram, fingerprint);
* ``demo``: :func:`plot_demo` (J along each response, entropy vs gradient norm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from verl_repro.analysis.summary import GROUPS, curve_on_grid, group_records



GROUP_COLORS = {"correct": "tab:green", "incorrect": "tab:red", "unknown": "tab:gray"}


def new_figure(width: float = 6.0, height: float = 4.5):
    """``(figure, axes)`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG to ``path`` (parents created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def binned_trend(x: Sequence[float], y: Sequence[float], num_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``y`` in ``num_bins`` equal-count bins of ``x`` → ``(bin mean x, bin mean y)``.

    A trend that does not assume linearity (``g`` saturates at both ends of the entropy range).
    """
    x, y = _finite_pairs(x, y)
    if x.size == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(x, kind="stable")
    chunks = [chunk for chunk in np.array_split(order, min(num_bins, x.size)) if chunk.size]
    return np.array([x[c].mean() for c in chunks]), np.array([y[c].mean() for c in chunks])


def scatter_with_trend(
    ax,
    x: Sequence[float],
    y: Sequence[float],
    *,
    label: str | None = None,
    max_points: int = 20000,
    seed: int = 0,
    num_bins: int = 20,
    color: str = "tab:blue",
    point_size: float = 4.0,
) -> None:
    """Scatter ``(x, y)`` (a random subsample of at most ``max_points``), a least-squares line and
    the binned-mean trend (:func:`binned_trend`, over all points)."""
    x, y = _finite_pairs(x, y)
    if x.size > max_points:
        keep = np.random.default_rng(seed).choice(x.size, size=max_points, replace=False)
        shown_x, shown_y = x[keep], y[keep]
    else:
        shown_x, shown_y = x, y
    ax.scatter(shown_x, shown_y, s=point_size, alpha=0.35, color=color, linewidths=0, label=label or f"{x.size} points")
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        line_x = np.array([x.min(), x.max()])
        ax.plot(line_x, slope * line_x + intercept, color="black", linewidth=1.2, label=f"linear fit (slope {slope:.3g})")
        trend_x, trend_y = binned_trend(x, y, num_bins)
        ax.plot(trend_x, trend_y, color="tab:orange", linewidth=1.8, marker="o", markersize=3, label="binned mean")
    ax.legend(loc="best", fontsize=8)


def histogram_by_group(
    ax,
    groups: Mapping[str, Sequence[float]],
    *,
    bins: int | Sequence[float] = 20,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
) -> None:
    """Overlaid histograms, one per named group (colours from :data:`GROUP_COLORS`); empty groups
    are skipped, each legend entry gives the group's size and mean."""
    for name, values in groups.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        ax.hist(
            values, bins=bins, range=value_range, alpha=0.55, color=GROUP_COLORS.get(name),
            label=f"{name} (n={values.size}, mean {values.mean():+.3f})",
        )
    ax.legend(loc="best", fontsize=8)


# ----------------------------------------------------------------------------- analyze


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


# ----------------------------------------------------------------------------- inversion


def plot_entropy_vs_grad_norm(entropy, grad_norm, path: Path, title: str = "entropy vs logit-gradient norm (in-scope tokens)") -> Path:
    """Per-token entropy against logit-gradient norm, with a linear fit and the binned mean."""
    figure, ax = new_figure()
    scatter_with_trend(ax, np.asarray(entropy), np.asarray(grad_norm))
    ax.set_xlabel("token entropy H (nats)")
    ax.set_ylabel("logit-gradient norm g = ||p − onehot(y)||")
    ax.set_title(title)
    return save_figure(figure, path)


def plot_inversion(output_dir: Path, entropy, grad_norm, responses: Sequence[dict], kind: str,
                   fingerprint_points: Sequence[dict], norm: str) -> list[Path]:
    """``entropy_vs_grad_norm.png``, ``rho_histogram.png`` and, with a fingerprint,
    ``fingerprint.png`` in ``output_dir``."""
    paths = [plot_entropy_vs_grad_norm(entropy, grad_norm, output_dir / "entropy_vs_grad_norm.png")]

    figure, ax = new_figure()
    groups = {"correct": [], "incorrect": [], "unknown": []}
    for r in responses:
        if r[f"rho_{kind}"] is not None:
            groups[{True: "correct", False: "incorrect", None: "unknown"}[r["correct"]]].append(r[f"rho_{kind}"])
    histogram_by_group(ax, groups, bins=20, value_range=(-1.0, 1.0))
    ax.set_xlabel(f"per-response ρ(H, g) ({kind})")
    ax.set_ylabel("responses")
    ax.set_title("per-response entropy–gradient correlation")
    paths.append(save_figure(figure, output_dir / "rho_histogram.png"))

    if fingerprint_points:
        figure, ax = new_figure()
        xs = [p["entropy"] for p in fingerprint_points]
        ys = [p["param_grad_norm"] for p in fingerprint_points]
        scatter_with_trend(ax, xs, ys, num_bins=8, point_size=14, label=f"{len(xs)} unique tokens")
        ax.set_xlabel("token entropy H at the occurrence (nats)")
        ax.set_ylabel(f"||∂z_y/∂θ|| ({norm})")
        ax.set_title("parameter-gradient fingerprint")
        paths.append(save_figure(figure, output_dir / "fingerprint.png"))
    return paths


# ----------------------------------------------------------------------------- demo


def plot_demo(rows: Sequence[dict], entropy, grad_norm, output_dir: Path) -> list[Path]:
    """``j_curves.png`` (J along each response by correctness) and ``entropy_vs_grad_norm.png``
    (all response tokens) in ``output_dir``.

    The curve joins J_b and J at the step boundaries (line ends); the last point, J after the
    response's final token, is drawn apart (a cross, no line to it): without ``</think>`` the
    answer is appended right after the response's own ending — mid-line, or after its own
    ``\\boxed{}`` — where a second answer is unlikely whatever the reasoning was worth.
    """
    from matplotlib.lines import Line2D

    figure, ax = new_figure(6.5, 4.2)
    counts = {"correct": 0, "incorrect": 0}
    for r in rows:
        group = "correct" if r["correct"] else "incorrect"
        counts[group] += 1
        curve = r["j_curve"]
        xs = [i / max(len(curve) - 1, 1) for i in range(len(curve))]
        color = GROUP_COLORS[group]
        ax.plot(xs[:-1], curve[:-1], color=color, alpha=0.6, marker="o", markersize=3)
        ax.plot(xs[-1:], curve[-1:], color=color, alpha=0.8, marker="x", markersize=6, linestyle="none")
    handles = [Line2D([], [], color=GROUP_COLORS[g], marker="o", markersize=3, label=f"{g} (n={n})") for g, n in counts.items()]
    handles.append(Line2D([], [], color="black", marker="x", linestyle="none",
                          label="after the last token (answer appended after the response's own ending)"))
    ax.legend(handles=handles, fontsize=8)
    ax.set_xlabel("normalized step position (0 = no reasoning; boundaries = line ends)")
    ax.set_ylabel("J: mean log-prob of the ground-truth answer")
    ax.set_title("RePro J along each response")
    curves = save_figure(figure, output_dir / "j_curves.png")
    scatter = plot_entropy_vs_grad_norm(entropy, grad_norm, output_dir / "entropy_vs_grad_norm.png",
                                        "entropy vs gradient norm, all response tokens")
    return [curves, scatter]
