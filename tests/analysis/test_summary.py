"""Summary maths of ``verl-repro analyze``: group means and J̃ curves on the normalized grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.analysis.summary import summarize_group


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(-20, 0), min_size=2, max_size=12), min_size=1, max_size=6), st.integers(2, 21))
def test_group_curve_ends_are_mean_j_base_and_mean_j_end(curves, grid_points):
    records = [{"j_curve": c, "correct": True, "response_tokens": 1, "thinking_tokens": 1, "has_think_end": True,
                "backtracking": 0, "boundaries": c[1:], "j_base": c[0], "final_magnitude": None, "final_stability": None,
                "final_score": None} for c in curves]
    curve = summarize_group(records, np.linspace(0, 1, grid_points))["j_curve"]
    assert curve["mean"][0] == pytest.approx(np.mean([c[0] for c in curves]), abs=1e-9)
    assert curve["mean"][-1] == pytest.approx(np.mean([c[-1] for c in curves]), abs=1e-9)
    lows, highs = np.min([min(c) for c in curves]), np.max([max(c) for c in curves])
    assert all(lows - 1e-9 <= v <= highs + 1e-9 for v in curve["mean"])
