"""Masked batched correlations against scipy, hand-computed cases, and the skip rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verl_repro.algorithms import (
    CORRELATION_KINDS,
    average_ranks,
    masked_correlation,
    masked_pearson,
    masked_spearman,
    response_correlation,
    scope_mask,
)

THINK_END = 7


def _scipy_rows(x: np.ndarray, y: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """The oracle: scipy on each row's masked values; undefined rows are 0."""
    out = []
    for xs, ys, ms in zip(x, y, mask):
        xs, ys = xs[ms], ys[ms]
        if len(xs) < 2 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
            out.append(0.0)
            continue
        fn = stats.spearmanr if kind == "spearman" else stats.pearsonr
        out.append(float(fn(xs, ys)[0]))
    return np.array(out)


def test_hand_computed_spearman_with_ties():
    # x ranks: 1, 2.5, 2.5, 4 (tie between the 2s); y ranks: 2, 1, 3.5, 3.5.
    # Pearson of the ranks: centred x = [-1.5, 0, 0, 1.5], y = [-0.5, -1.5, 1, 1];
    # cov = 0.75 + 0 + 0 + 1.5 = 2.25; |x|² = 4.5; |y|² = 0.25 + 2.25 + 1 + 1 = 4.5 → ρ = 0.5.
    x = torch.tensor([[1.0, 2.0, 2.0, 3.0, 99.0]])
    y = torch.tensor([[5.0, 4.0, 6.0, 6.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    ranks = average_ranks(x, mask.bool())
    assert ranks.tolist() == [[1.0, 2.5, 2.5, 4.0, 0.0]]
    assert masked_spearman(x, y, mask).item() == pytest.approx(0.5, abs=1e-7)


def test_hand_computed_pearson():
    # x = [1, 2, 3], y = [2, 4, 5]: centred x = [-1, 0, 1], y = [-5/3, 1/3, 4/3];
    # cov = 3, |x|² = 2, |y|² = 42/9 → r = 3 / sqrt(2 · 42/9) = 0.98198...
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    y = torch.tensor([[2.0, 4.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert masked_pearson(x, y, mask).item() == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-7)


def test_perfect_inversion_is_minus_one():
    entropy = torch.arange(10.0).unsqueeze(0)
    grad_norm = (100 - entropy**2)  # strictly decreasing, non-linear
    mask = torch.ones_like(entropy, dtype=torch.bool)
    assert masked_spearman(entropy, grad_norm, mask).item() == pytest.approx(-1.0)
    assert -1.0 < masked_pearson(entropy, grad_norm, mask).item() < -0.9


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(1, 5),
    length=st.integers(1, 24),
    kind=st.sampled_from(CORRELATION_KINDS),
)
def test_matches_scipy_on_random_masked_batches_with_ties(data, batch, length, kind):
    # Few distinct values force many ties; float64 compares to 1e-6.
    values = st.integers(-3, 3).map(float) | st.floats(-5, 5, allow_nan=False)
    x = np.array(data.draw(st.lists(values, min_size=batch * length, max_size=batch * length))).reshape(batch, length)
    y = np.array(data.draw(st.lists(values, min_size=batch * length, max_size=batch * length))).reshape(batch, length)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length))).reshape(batch, length)
    result = masked_correlation(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), kind=kind)
    assert result.rho.dtype == torch.float64
    np.testing.assert_allclose(result.rho.numpy(), _scipy_rows(x, y, mask, kind), atol=1e-6)
    assert result.num_tokens.tolist() == mask.sum(1).tolist()


def test_matches_scipy_on_long_rows_float32_and_bf16():
    generator = torch.Generator().manual_seed(0)
    entropy = torch.rand(6, 2000, generator=generator) * 3
    grad_norm = 1.2 - 0.3 * entropy + 0.2 * torch.rand(6, 2000, generator=generator)
    mask = torch.rand(6, 2000, generator=generator) > 0.3
    for kind in CORRELATION_KINDS:
        expected = _scipy_rows(entropy.double().numpy(), grad_norm.double().numpy(), mask.numpy(), kind)
        got = masked_correlation(entropy, grad_norm, mask, kind=kind).rho
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
        # bf16 inputs are upcast; the ties created by rounding are ranked like scipy ranks them.
        bf_x, bf_y = entropy.bfloat16(), grad_norm.bfloat16()
        expected_bf = _scipy_rows(bf_x.double().numpy(), bf_y.double().numpy(), mask.numpy(), kind)
        np.testing.assert_allclose(masked_correlation(bf_x, bf_y, mask, kind=kind).rho.numpy(), expected_bf, atol=1e-5)


def test_hand_computed_pearson_in_extreme_units():
    # The row of test_hand_computed_pearson in units where its squares overflow (1e20² > 3.4e38)
    # or underflow (1e-25² < 1.4e-45) in float32: r is unchanged, and exactly -r for -y.
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([[2.0, 4.0, 5.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    r = 3 / math.sqrt(2 * 42 / 9)
    for scale in (1e20, 1e-25, 3e37, 1e-38):
        assert masked_pearson(scale * x, y, mask).item() == pytest.approx(r, abs=1e-6), scale
        assert masked_pearson(x, -scale * y, mask).item() == pytest.approx(-r, abs=1e-6), scale
    assert masked_pearson(1e20 * x, -x, mask).item() == pytest.approx(-1.0, abs=1e-6)  # was -0.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    length=st.integers(3, 200),
    x_exponent=st.integers(-30, 30),
    y_exponent=st.integers(-30, 30),
    flip=st.booleans(),
)
def test_pearson_is_scale_invariant_in_float32(seed, length, x_exponent, y_exponent, flip):
    """ρ(a·x, b·y) = sign(ab)·ρ(x, y) for a, b from 1e-30 to 1e30 in float32, against scipy in float64."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, generator=generator)
    y = 0.5 * x + torch.randn(1, length, generator=generator)
    mask = torch.rand(1, length, generator=generator) > 0.1
    x_scale, y_scale = 10.0**x_exponent, (-1.0 if flip else 1.0) * 10.0**y_exponent
    expected = _scipy_rows(x.double().numpy(), y.double().numpy(), mask.numpy(), "pearson") * (-1 if flip else 1)
    got = masked_pearson(x * x_scale, y * y_scale, mask)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)


def test_invariant_under_shuffling_tokens_and_monotone_maps():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, generator=generator, dtype=torch.float64)
    y = x + torch.randn(3, 50, generator=generator, dtype=torch.float64)
    mask = torch.rand(3, 50, generator=generator) > 0.2
    permutation = torch.randperm(50, generator=generator)
    rho = masked_spearman(x, y, mask)
    torch.testing.assert_close(masked_spearman(x[:, permutation], y[:, permutation], mask[:, permutation]), rho)
    torch.testing.assert_close(masked_spearman(torch.exp(x), y * 3 + 1, mask), rho)
    torch.testing.assert_close(masked_spearman(-x, y, mask), -rho)


def test_skip_rules_are_flagged_and_give_zero():
    x = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],  # fine
            [1.0, 2.0, 0.0, 0.0, 0.0],  # two tokens only
            [2.0, 2.0, 2.0, 2.0, 2.0],  # constant x
            [1.0, 2.0, 3.0, 4.0, 5.0],  # constant y
            [0.0, 0.0, 0.0, 0.0, 0.0],  # no tokens at all
        ]
    )
    y = torch.tensor([[5.0, 3.0, 4.0, 1.0, 2.0], [1.0, 2.0, 0, 0, 0], [1.0, 2, 3, 4, 5], [7.0, 7, 7, 7, 7], [0.0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    for kind in CORRELATION_KINDS:
        result = masked_correlation(x, y, mask, kind=kind, min_tokens=3)
        assert result.defined.tolist() == [True, False, False, False, False]
        assert result.too_few_tokens.tolist() == [False, True, False, False, True]
        assert result.zero_variance.tolist() == [False, False, True, True, False]
        assert result.skipped.tolist() == [False, True, True, True, True]
        assert result.rho[1:].tolist() == [0.0, 0.0, 0.0, 0.0]
        assert result.rho[0] < 0
        assert torch.isfinite(result.rho).all()


def test_nonfinite_tokens_are_dropped_and_counted():
    x = torch.tensor([[1.0, float("nan"), 2.0, 3.0, float("inf"), 4.0]], dtype=torch.float64)
    y = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    mask = torch.ones_like(x, dtype=torch.bool)
    result = masked_correlation(x, y, mask, kind="spearman")
    assert result.nonfinite_tokens.tolist() == [2]
    assert result.num_tokens.tolist() == [4]
    assert result.rho.item() == pytest.approx(stats.spearmanr([1, 2, 3, 4], [4, 3, 2, 1])[0])


def test_near_constant_row_is_not_mistaken_for_constant():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0 + 1e-6]])
    y = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    result = masked_correlation(x, y, torch.ones(1, 4, dtype=torch.bool), kind="spearman")
    assert result.defined.item()
    assert result.rho.item() == pytest.approx(stats.spearmanr([1, 1, 1, 2], [1, 2, 3, 4])[0])


def test_bad_arguments_raise():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        masked_spearman(x, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="kind"):
        masked_correlation(x, x, torch.ones(2, 3), kind="kendall")
    with pytest.raises(ValueError, match="min_tokens"):
        masked_correlation(x, x, torch.ones(2, 3), min_tokens=1)


def test_scope_mask_thinking_stops_before_first_think_end():
    responses = torch.tensor([[5, 6, THINK_END, 8, THINK_END, 0], [5, 6, 8, 9, 0, 0], [THINK_END, 5, 6, 0, 0, 0]])
    response_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    thinking, has_end = scope_mask(response_mask, "thinking", responses, THINK_END)
    assert thinking.int().tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert has_end.tolist() == [True, False, True]
    everything, _ = scope_mask(response_mask, "all", responses, THINK_END)
    assert everything.tolist() == response_mask.bool().tolist()
    # A </think> id on a padding position does not end the thinking of a truncated response.
    padded_id = torch.tensor([[5, 6, 8, THINK_END]])
    thinking, has_end = scope_mask(torch.tensor([[1, 1, 1, 0]]), "thinking", padded_id, THINK_END)
    assert thinking.tolist() == [[True, True, True, False]] and not has_end.item()
    with pytest.raises(ValueError, match="repro.corr.scope"):
        scope_mask(response_mask, "answer", responses, THINK_END)
    with pytest.raises(ValueError, match="thinking"):
        scope_mask(response_mask, "thinking")


def test_response_correlation_uses_the_scope():
    # Thinking tokens are perfectly inverted; the answer after </think> is perfectly aligned.
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5, 5.0, 6.0, 7.0, 8.0]])
    grad_norm = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.5, 5.0, 6.0, 7.0, 8.0]])
    responses = torch.tensor([[1, 2, 3, 4, THINK_END, 5, 6, 7, 8]])
    mask = torch.ones_like(responses)
    thinking = response_correlation(entropy, grad_norm, mask, scope="thinking", min_tokens=3, responses=responses, think_end_id=THINK_END)
    assert thinking.rho.item() == pytest.approx(-1.0)
    assert thinking.num_tokens.item() == 4
    everything = response_correlation(entropy, grad_norm, mask, scope="all", min_tokens=3)
    assert everything.rho.item() > 0


def test_unique_token_means_equal_a_per_row_loop():
    from verl_repro.algorithms.correlation import unique_token_means

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (4, 12), generator=generator)
    mask = torch.rand(4, 12, generator=generator) > 0.3
    mask[3] = False  # a row with nothing in scope
    x, y = torch.rand(4, 12, generator=generator, dtype=torch.float64), torch.rand(4, 12, generator=generator, dtype=torch.float64)
    (mx, my), unique_mask = unique_token_means(ids, mask, x, y)
    for row in range(4):
        expected = sorted({int(i) for i, m in zip(ids[row], mask[row]) if m})
        assert int(unique_mask[row].sum()) == len(expected)
        for column, token in enumerate(expected):
            chosen = (ids[row] == token) & mask[row]
            assert math.isclose(float(mx[row, column]), float(x[row][chosen].mean()), rel_tol=1e-12)
            assert math.isclose(float(my[row, column]), float(y[row][chosen].mean()), rel_tol=1e-12)


def test_response_correlation_over_unique_tokens_matches_scipy():
    from verl_repro.algorithms import response_correlation

    ids = torch.tensor([[3, 5, 3, 7, 9, 5, 11, 2, 3, 13]])
    entropy = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.2, 0.7, 0.4, 0.8, 0.2, 0.6]], dtype=torch.float64)
    strength = torch.tensor([[1.0, 0.2, 0.8, 0.5, 1.2, 0.4, 0.7, 0.1, float("nan"), 0.3]], dtype=torch.float64)
    mask = torch.ones_like(ids)
    result = response_correlation(entropy, strength, mask, scope="all", min_tokens=3, responses=ids, unit="unique_tokens")
    # the NaN token is dropped and counted; id 3 then averages its two finite occurrences
    keep = torch.isfinite(strength[0])
    by_id: dict[int, list[tuple[float, float]]] = {}
    for token, h, s in zip(ids[0][keep].tolist(), entropy[0][keep].tolist(), strength[0][keep].tolist()):
        by_id.setdefault(token, []).append((h, s))
    hs = [np.mean([h for h, _ in v]) for _, v in sorted(by_id.items())]
    ss = [np.mean([s for _, s in v]) for _, v in sorted(by_id.items())]
    assert int(result.num_tokens[0]) == len(by_id) == 7
    assert int(result.nonfinite_tokens[0]) == 1
    assert math.isclose(float(result.rho[0]), stats.spearmanr(hs, ss).statistic, rel_tol=1e-9)
    with pytest.raises(ValueError, match="unit"):
        response_correlation(entropy, strength, mask, scope="all", responses=ids, unit="types")


@pytest.mark.parametrize("argmax", [False, True])
def test_softmax_gradient_proxy_is_positively_correlated_with_entropy_by_construction(argmax):
    """Why ``repro.corr.signal=softmax_grad`` is not the default: for tokens drawn from the model's
    own distribution, ||p − onehot(y)|| rises with the entropy of p for *any* model (random logits
    here), so rewarding ρ < 0 on it would reward sampling unlikely tokens where p is confident."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.rand(4000, 1, generator=generator, dtype=torch.float64) * 6
    logits = torch.randn(4000, 50, generator=generator, dtype=torch.float64) * scales
    p = torch.softmax(logits, -1)
    tokens = p.argmax(-1) if argmax else torch.multinomial(p, 1, generator=generator).squeeze(-1)
    entropy = -(p * p.log()).sum(-1)
    proxy = (p - torch.nn.functional.one_hot(tokens, 50).double()).norm(dim=-1)
    rho = stats.spearmanr(entropy.numpy(), proxy.numpy()).statistic
    assert rho > (0.9 if argmax else 0.3), rho
