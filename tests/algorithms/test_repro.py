"""RePro scores (magnitude, stability, combined) and process rewards (docs/repro.md, "RePro maths", "Bad input")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from verl_repro.algorithms import (
    invalid_j_rows,
    magnitude_scores,
    prefix_kendall_tau,
    process_rewards,
    repro_scores,
    smooth_ema,
)
from verl_repro.algorithms import reference as oracle


F64 = torch.float64


def _t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------- Kendall tau-b


def test_known_tau_for_every_prefix():
    # [J_b, J_1, J_2, J_3] = [-3, -2, -2.5, -1]:
    #   prefix 2: (0,1)+                            -> tau = 1
    #   prefix 3: (0,1)+ (0,2)+ (1,2)-              -> tau = (2-1)/3 = 1/3
    #   prefix 4: + + - and (0,3)+ (1,3)+ (2,3)+     -> tau = (5-1)/6 = 2/3
    tau = prefix_kendall_tau(_t([[-3.0, -2.0, -2.5, -1.0]]), torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(tau, _t([[0.0, 1.0, 1 / 3, 2 / 3]]), rtol=0, atol=1e-12)


def test_tau_b_with_ties_and_all_equal():
    # [-2, -1, -1]: C = 2, D = 0, one tied pair of 3: tau_b = 2 / sqrt(3 * (3 - 1)) = 0.81650
    tau = prefix_kendall_tau(_t([[-2.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]), torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(tau[0, 2], torch.tensor(2 / math.sqrt(6), dtype=F64))
    assert abs(tau[0, 2].item() - kendalltau([-2, -1, -1], [0, 1, 2]).statistic) < 1e-12
    assert tau[1].tolist() == [0.0, 0.0, 0.0]  # all equal: tau defined as 0 (scipy gives NaN)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([-3.0, -2.0, -1.5, -1.0, -0.25]) | st.floats(-5, -0.01), min_size=1, max_size=12),
                     min_size=1, max_size=5))
def test_prefix_tau_matches_scipy(rows):
    width = max(len(r) for r in rows)
    values = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=F64)
    valid = torch.tensor([[i < len(r) for i in range(width)] for r in rows])
    tau = prefix_kendall_tau(values, valid)
    for b, row in enumerate(rows):
        for n in range(len(row)):
            assert abs(tau[b, n].item() - oracle.kendall_tau_b(row[: n + 1])) < 1e-9


# --------------------------------------------------------------------------- scores, hand cases


def test_magnitude_only_w0():
    # S_magn = 1 - tanh(J / J_b): J_b = -2 -> J = -2: 1 - tanh(1) = 0.238406; J = -1: 1 - tanh(0.5) = 0.537883;
    # J = -0.1: 1 - tanh(0.05) = 0.950042 (the answer became almost certain).
    scores = repro_scores(_t([[-2.0, -1.0, -0.1]]), _t([-2.0]), torch.ones(1, 3, dtype=torch.bool), stability_weight=0.0)
    torch.testing.assert_close(scores, _t([[0.238406, 0.537883, 0.950042]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(magnitude_scores(_t([[-2.0, -1.0, -0.1]]), _t([-2.0])), scores)


def test_combined_score_written_out():
    # J_b = -3, J = [-2, -2.5, -1], w = 0.5:
    #   magnitude 1 - tanh(2/3) = 0.417217, 1 - tanh(5/6) = 0.317738, 1 - tanh(1/3) = 0.678487
    #   stability (tau + 1)/2 with tau = 1, 1/3, 2/3: 1, 2/3, 5/6
    #   S = 0.708609, 0.492202, 0.755910
    scores = repro_scores(_t([[-2.0, -2.5, -1.0]]), _t([-3.0]), torch.ones(1, 3, dtype=torch.bool), stability_weight=0.5)
    torch.testing.assert_close(scores, _t([[0.708609, 0.492202, 0.755910]]), rtol=0, atol=1e-6)
    rewards = process_rewards(scores, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(rewards, _t([[0.708609, 0.492202 - 0.708609, 0.755910 - 0.492202]]), rtol=0, atol=1e-6)


def test_monotone_beats_oscillating_at_equal_end_point():
    j_base = _t([-3.0, -3.0])
    monotone = [-2.5, -2.0, -1.5, -1.0]
    oscillating = [-1.0, -2.8, -1.2, -1.0]
    mask = torch.ones(2, 4, dtype=torch.bool)
    stability = repro_scores(_t([monotone, oscillating]), j_base, mask, stability_weight=1.0)
    magnitude = repro_scores(_t([monotone, oscillating]), j_base, mask, stability_weight=0.0)
    assert stability[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert stability[1, -1] < stability[0, -1]
    # [-3, -1, -2.8, -1.2, -1]: C = 7, D = 2 ((1,2), (1,3)), one tie (1,4) of 10 pairs:
    # tau_b = 5 / sqrt(10 * 9) = 0.527046, S_stab = 0.763523
    assert abs(stability[1, -1].item() - (5 / math.sqrt(90) + 1) / 2) < 1e-12
    assert magnitude[0, -1] == magnitude[1, -1]  # same final J: same magnitude


def test_process_rewards_telescope():
    scores = _t([[0.5, 0.7, 0.6, 0.0], [0.3, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    rewards = process_rewards(scores, mask)
    torch.testing.assert_close(rewards, _t([[0.5, 0.2, -0.1, 0.0], [0.3, 0.0, 0.0, 0.0]]), rtol=0, atol=1e-12)


def test_ema_smoothing_written_out_and_it_steadies_an_oscillation():
    # beta = 0.5 over [-4, -2, -3, -1]: -4, -3, -3, -2
    smoothed = smooth_ema(_t([[-4.0, -2.0, -3.0, -1.0]]), torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert smoothed.tolist() == [[-4.0, -3.0, -3.0, -2.0]]
    j, jb, mask = _t([[-2.0, -3.0, -1.0]]), _t([-4.0]), torch.ones(1, 3, dtype=torch.bool)
    plain = repro_scores(j, jb, mask, 1.0)
    smooth = repro_scores(j, jb, mask, 1.0, stability_ema=0.5)
    assert smooth[0, 1] > plain[0, 1]  # the dip at J_2 is damped: a tie instead of a discordant pair
    assert repro_scores(j, jb, mask, 1.0, stability_ema=0.0).equal(plain)
    assert repro_scores(j, jb, mask, 1.0, stability_ema=None).equal(plain)


# --------------------------------------------------------------------------- bad input (docs/repro.md, "Bad input")


def test_nonfinite_j_and_j_base_near_zero_give_zero_scores():
    j = _t([[-1.0, float("nan")], [-1.0, -0.5], [-1.0, -0.5], [float("-inf"), -0.5], [-1.0, float("inf")], [-1.0, -0.5]])
    jb = _t([-2.0, float("nan"), -1e-9, -2.0, -2.0, 0.3])
    mask = torch.tensor([[True, True]] * 5 + [[True, False]])
    scores = repro_scores(j, jb, mask, 0.5)
    assert torch.isfinite(scores).all()
    assert (scores == 0).all()
    nonfinite, near_zero = invalid_j_rows(j, jb, mask)
    assert nonfinite.tolist() == [True, True, False, True, True, False]
    assert near_zero.tolist() == [False, False, True, False, False, True]


def test_nan_in_padding_is_ignored_and_rows_do_not_leak():
    j = _t([[-1.0, float("nan")], [-1.0, -0.5]])
    mask = torch.tensor([[True, False], [True, True]])
    scores = repro_scores(j, _t([-2.0, -2.0]), mask, 0.5, stability_ema=0.3)
    alone = repro_scores(j[1:], _t([-2.0]), mask[1:], 0.5, stability_ema=0.3)
    assert torch.isfinite(scores).all() and scores[0, 0] > 0 and scores[0, 1] == 0
    torch.testing.assert_close(scores[1:], alone)


def test_bad_arguments_name_the_key():
    j, jb, mask = _t([[-1.0]]), _t([-2.0]), torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="repro.stability_weight"):
        repro_scores(j, jb, mask, 1.5)
    with pytest.raises(ValueError, match="repro.stability_ema"):
        repro_scores(j, jb, mask, 0.5, stability_ema=1.0)
    with pytest.raises(ValueError, match="prefix"):
        repro_scores(_t([[-1.0, -1.0]]), jb, torch.tensor([[False, True]]), 0.5)
    with pytest.raises(ValueError, match="j_base"):
        repro_scores(j, _t([-2.0, -1.0]), mask, 0.5)


# --------------------------------------------------------------------------- against the oracle


def _random_j(rng, batch, width, ties, p_bad):
    counts = rng.integers(0, width + 1, size=batch)
    if ties:
        j = rng.choice([-3.0, -2.0, -1.0, -0.5], size=(batch, width))
        jb = rng.choice([-3.0, -2.0, -1.0], size=batch)
    else:
        j = -rng.random((batch, width)) * 4 - 1e-3
        jb = -rng.random(batch) * 4 - 1e-3
    for b in range(batch):
        if rng.random() < p_bad:
            kind = rng.integers(0, 4)
            if kind == 0 and counts[b]:
                j[b, rng.integers(0, counts[b])] = rng.choice([np.nan, np.inf, -np.inf])
            elif kind == 1:
                jb[b] = np.nan
            elif kind == 2:
                jb[b] = -rng.random() * 1e-7
            else:
                j[b, counts[b]:] = np.nan  # garbage in padding only: harmless
    mask = np.arange(width)[None, :] < counts[:, None]
    return j, jb, mask


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 6),
    width=st.integers(1, 12),
    w=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    beta=st.sampled_from([0.0, 0.5, 0.9]),
    ties=st.booleans(),
    p_bad=st.sampled_from([0.0, 0.3]),
)
def test_scores_and_rewards_match_the_oracle(seed, batch, width, w, beta, ties, p_bad):
    j, jb, mask = _random_j(np.random.default_rng(seed), batch, width, ties, p_bad)
    scores = repro_scores(torch.from_numpy(j), torch.from_numpy(jb), torch.from_numpy(mask), w, stability_ema=beta)
    rewards = process_rewards(scores, torch.from_numpy(mask))
    for b in range(batch):
        n = int(mask[b].sum())
        expected = oracle.scores_row(j[b, :n].tolist(), float(jb[b]), w, 1e-6, beta)
        np.testing.assert_allclose(scores[b, :n].numpy(), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rewards[b, :n].numpy(), oracle.rewards_row(expected), rtol=0, atol=1e-6)
        assert (scores[b, n:] == 0).all() and (rewards[b, n:] == 0).all()
    assert scores.dtype == F64


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs_within_stated_tolerance(dtype, tolerance):
    """float32 J: |ΔS| <= 1e-6; bfloat16: <= 1e-2 and float16: <= 2e-3 (input rounding 2^-9 / 2^-11
    relative moves tanh(J/J_b) by at most ~2 ulp of the ratio). J values are spaced 5 % apart so no
    rounding reorders them: stability is then identical. Work is float32 for every non-float64 input."""
    rng = np.random.default_rng(0)
    batch, width = 256, 11
    jb = -(1.0 + 3.0 * rng.random(batch))
    # Distinct levels 5 % apart, shuffled: J rises and falls, ties impossible after rounding.
    levels = jb[:, None] * (0.05 + 0.05 * np.argsort(rng.random((batch, width)), axis=1))
    mask = np.arange(width)[None, :] < rng.integers(1, width + 1, size=batch)[:, None]
    reference = repro_scores(torch.from_numpy(levels), torch.from_numpy(jb), torch.from_numpy(mask), 0.5)
    low = repro_scores(torch.from_numpy(levels).to(dtype), torch.from_numpy(jb).to(dtype), torch.from_numpy(mask), 0.5)
    assert low.dtype == torch.float32
    assert (low.double() - reference).abs().max().item() <= tolerance
    stability_ref = repro_scores(torch.from_numpy(levels), torch.from_numpy(jb), torch.from_numpy(mask), 1.0)
    stability_low = repro_scores(torch.from_numpy(levels).to(dtype), torch.from_numpy(jb).to(dtype), torch.from_numpy(mask), 1.0)
    assert (stability_low.double() - stability_ref).abs().max().item() <= 1e-6
