"""Plot helpers shared by the offline analysis tools (matplotlib, headless ``Agg`` backend).

Every function draws on an ``Axes`` the caller owns, so a tool composes its figures freely and
saves them with :func:`save_figure`. Inputs are plain sequences / numpy arrays; non-finite points
are dropped before drawing (and the number drawn is in the legend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

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
