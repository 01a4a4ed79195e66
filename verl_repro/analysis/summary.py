"""The statistics of ``verl-repro analyze``: per-group means, J̃ curves on a normalized grid, and
the side-by-side table of two runs.

Normalized step position: the curve ``[J_b, J̃(c_1), .., J̃(c_m)]`` of a trajectory sits at
``j / m`` for ``j = 0..m`` (``c_m = e + 1``), is linearly interpolated onto equally spaced points of
``[0, 1]``, and averaged per group (mean ± one standard deviation).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

GROUPS = ("correct", "incorrect")
FALLBACK_REASONS = ("empty_response", "no_ground_truth", "no_think_end", "nonfinite_j", "j_base_near_zero")


def _mean(values: Iterable[float | None]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def curve_on_grid(curve: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """``[J_b, J̃_1, .., J̃_m]`` placed at ``j / m`` and linearly interpolated at ``grid``."""
    values = np.asarray(curve, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, values.size) if values.size > 1 else np.zeros(1)
    return np.interp(grid, positions, values)


def group_records(records: Sequence[dict]) -> dict[str, list[dict]]:
    """``all`` plus ``correct`` / ``incorrect`` (ungraded records only in ``all``)."""
    return {
        "all": list(records),
        "correct": [r for r in records if r["correct"] is True],
        "incorrect": [r for r in records if r["correct"] is False],
    }


def summarize_group(records: Sequence[dict], grid: np.ndarray) -> dict:
    """Means over one group of records, and its J̃ curve on ``grid`` (mean, std, count)."""
    curves = np.array([curve_on_grid(r["j_curve"], grid) for r in records if r["j_curve"] is not None]).reshape(-1, grid.size)
    tokens = sum(r["response_tokens"] for r in records)
    return {
        "count": len(records),
        "response_tokens_mean": _mean(r["response_tokens"] for r in records),
        "thinking_tokens_mean": _mean(r["thinking_tokens"] for r in records if r["has_think_end"]),
        "think_end_rate": _mean(float(r["has_think_end"]) for r in records),
        "backtracking_mean": _mean(r["backtracking"] for r in records),
        "backtracking_per_1k_tokens": 1000.0 * sum(r["backtracking"] for r in records) / tokens if tokens else None,
        "responses_with_backtracking": _mean(float(r["backtracking"] > 0) for r in records),
        "boundaries_mean": _mean(len(r["boundaries"]) for r in records if r["j_curve"] is not None),
        "j_base_mean": _mean(r["j_base"] for r in records),
        "j_end_mean": _mean(r["j_curve"][-1] for r in records if r["j_curve"] is not None),
        "final_magnitude_mean": _mean(r["final_magnitude"] for r in records),
        "final_stability_mean": _mean(r["final_stability"] for r in records),
        "final_score_mean": _mean(r["final_score"] for r in records),
        "j_curve": {
            "count": int(curves.shape[0]),
            "mean": curves.mean(axis=0).tolist() if curves.shape[0] else None,
            "std": curves.std(axis=0).tolist() if curves.shape[0] else None,
        },
    }


def summarize(records: Sequence[dict], grid_points: int = 11) -> dict:
    """The run's statistics: per group (``all`` / ``correct`` / ``incorrect``), accuracy, fallbacks."""
    grid = np.linspace(0.0, 1.0, grid_points)
    graded = [r for r in records if r["correct"] is not None]
    phrases: dict[str, int] = {}
    for r in records:
        for phrase, n in r["backtracking_by_phrase"].items():
            phrases[phrase] = phrases.get(phrase, 0) + n
    return {
        "num_trajectories": len(records),
        "num_graded": len(graded),
        "accuracy": _mean(float(r["correct"]) for r in graded),
        "grid": grid.tolist(),
        "groups": {name: summarize_group(group, grid) for name, group in group_records(records).items()},
        "backtracking_by_phrase": dict(sorted(phrases.items(), key=lambda kv: -kv[1])),
        "fallbacks": {reason: sum(r["fallback"] == reason for r in records) for reason in FALLBACK_REASONS},
        "answers_truncated": sum(bool(r["answer_truncated"]) for r in records),
    }


COMPARE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "", "accuracy"),
    ("response tokens", "all", "response_tokens_mean"),
    ("response tokens (correct)", "correct", "response_tokens_mean"),
    ("response tokens (incorrect)", "incorrect", "response_tokens_mean"),
    ("</think> rate", "all", "think_end_rate"),
    ("backtracking / response", "all", "backtracking_mean"),
    ("backtracking / response (correct)", "correct", "backtracking_mean"),
    ("backtracking / response (incorrect)", "incorrect", "backtracking_mean"),
    ("backtracking / 1k tokens", "all", "backtracking_per_1k_tokens"),
    ("step boundaries / response", "all", "boundaries_mean"),
    ("J_b", "all", "j_base_mean"),
    ("J̃ at e+1 (correct)", "correct", "j_end_mean"),
    ("J̃ at e+1 (incorrect)", "incorrect", "j_end_mean"),
    ("final magnitude (correct)", "correct", "final_magnitude_mean"),
    ("final magnitude (incorrect)", "incorrect", "final_magnitude_mean"),
    ("final stability (correct)", "correct", "final_stability_mean"),
    ("final stability (incorrect)", "incorrect", "final_stability_mean"),
)


def compare_table(summaries: Sequence[dict]) -> list[dict]:
    """Rows ``{"metric", "values": [one per run], "delta": last - first}`` (None where undefined)."""
    rows = []
    for name, group, key in COMPARE_METRICS:
        values = [s.get(key) if not group else s["groups"][group].get(key) for s in summaries]
        delta = values[-1] - values[0] if values[0] is not None and values[-1] is not None else None
        rows.append({"metric": name, "values": values, "delta": delta})
    return rows


def markdown_table(rows: Sequence[dict], labels: Sequence[str]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    lines = ["| metric | " + " | ".join(labels) + " | Δ |", "|---|" + "---:|" * (len(labels) + 1)]
    for row in rows:
        lines.append(f"| {row['metric']} | " + " | ".join(fmt(v) for v in row["values"]) + f" | {fmt(row['delta'])} |")
    return "\n".join(lines)
