"""The fused token-statistics kernels against float64 oracles written out here, and the dispatcher.

On a CPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
before triton is imported; set again here for a standalone run). On a CUDA machine run with
``TRITON_INTERPRET=0`` and the same tests exercise the compiled kernels, plus the ``gpu`` ones.

Tolerances: outputs are float32 accumulations over at most a few thousand terms, compared with a
float64 oracle fed the very same (dtype-rounded) inputs, so absolute 2e-5 on logprob / entropy
(values up to log V ≈ 7) and 1e-5 on Σp² / g (values in [0, √2]) hold for every input dtype;
kernel (b) adds the float32 GEMM's own summation order, so 5e-5. Gradients: 2e-5 absolute.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from verl_repro.kernels import (  # noqa: E402
    TokenStats,
    resolve_backend,
    token_stats_from_hidden,
    token_stats_from_logits,
)
from verl_repro.kernels import token_stats as ts  # noqa: E402
from verl_repro.kernels.reference import token_stats_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not ts.is_interpreted() else "cpu"
STAT_TOL = {"logprob": 2e-5, "entropy": 2e-5, "sum_p_squared": 1e-5, "grad_norm": 1e-5}


def oracle(logits: torch.Tensor, labels: torch.Tensor, temperature=1.0) -> TokenStats:
    """float64, straight from the definitions: p = softmax(z/T), g = ||p - onehot(y)||."""
    z = logits.double()
    if isinstance(temperature, torch.Tensor):
        z = z / temperature.double().to(z.device).reshape(*labels.shape, 1)
    else:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    log_p = torch.log_softmax(z, dim=-1)
    one_hot = torch.nn.functional.one_hot(labels, z.shape[-1]).double()
    return TokenStats(
        logprob=log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1),
        entropy=-torch.nan_to_num(p * log_p).sum(-1),
        sum_p_squared=(p * p).sum(-1),
        grad_norm=(p - one_hot).norm(dim=-1),
    )


def assert_stats_close(actual: TokenStats, expected: TokenStats, scale: float = 1.0) -> None:
    for name in TokenStats._fields:
        got, want = getattr(actual, name), getattr(expected, name)
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(
            got.double().cpu(), want.double().cpu(), atol=STAT_TOL[name] * scale, rtol=1e-5, msg=name
        )


def inv_temp(n: int, temperature: float = 1.0) -> torch.Tensor:
    return torch.full((n,), 1.0 / temperature, dtype=torch.float32, device=DEVICE)


# ----------------------------------------------------------------------------------------------
# A hand-computed case
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hand_computed_three_token_vocabulary(backend):
    # logits [0, ln 2, ln 3] -> p = [1/6, 2/6, 3/6]; label 2 (p_y = 1/2).
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]], device=DEVICE)
    labels = torch.tensor([2], device=DEVICE)
    stats = token_stats_from_logits(logits, labels, backend=backend)
    p = [1 / 6, 2 / 6, 3 / 6]
    assert stats.logprob.item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert stats.entropy.item() == pytest.approx(-sum(x * math.log(x) for x in p), abs=1e-6)  # 1.011404
    assert stats.sum_p_squared.item() == pytest.approx(14 / 36, abs=1e-6)
    # g² = Σp² - 2 p_y + 1 = 14/36 - 1 + 1; also (1/6)² + (2/6)² + (1/2)² written out.
    assert stats.grad_norm.item() == pytest.approx(math.sqrt(14 / 36), abs=1e-6)
    assert stats.grad_norm.item() == pytest.approx(math.sqrt((1 / 6) ** 2 + (2 / 6) ** 2 + 0.5**2), abs=1e-6)

    # Temperature 2 halves the logits: p ∝ [1, √2, √3].
    stats_t = token_stats_from_logits(logits, labels, temperature=2.0, backend=backend)
    weights = [1.0, math.sqrt(2.0), math.sqrt(3.0)]
    p_t = [w / sum(weights) for w in weights]
    assert stats_t.logprob.item() == pytest.approx(math.log(p_t[2]), abs=1e-6)
    assert stats_t.sum_p_squared.item() == pytest.approx(sum(x * x for x in p_t), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Kernel (a): logits [N, V]
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab_size, block_v", [(1, 16), (37, 16), (300, 64), (1000, 256)])
def test_logits_kernel_matches_oracle(dtype, vocab_size, block_v):
    # block_v smaller than V (and not dividing it) exercises the online merge across blocks.
    generator = torch.Generator().manual_seed(vocab_size)
    n = 6
    logits = (4 * torch.randn(n, vocab_size, generator=generator)).to(dtype).to(DEVICE)
    labels = torch.randint(0, vocab_size, (n,), generator=generator).to(DEVICE)
    temperature = 0.7
    stats, lse = ts.logits_stats_forward(logits, labels, inv_temp(n, temperature), -100, block_v=block_v)
    assert_stats_close(stats, oracle(logits, labels, temperature))
    expected_lse = torch.logsumexp(logits.double() / temperature, dim=-1)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=1e-6)


def test_logits_extreme_equal_and_one_hot_rows():
    vocab_size = 500
    rows = torch.zeros(5, vocab_size)
    rows[0] = torch.where(torch.arange(vocab_size) % 3 == 0, 1e4, -1e4)  # extreme logits
    # rows[1]: all equal -> max entropy log V, Σp² = 1/V, g = sqrt(1 - 1/V)
    rows[2, 7] = 1e4  # one-hot at the label: g -> 0
    rows[3, 7] = 12.0  # confident, not one-hot
    rows[4] = torch.linspace(-1e4, 1e4, vocab_size)
    labels = torch.tensor([3, 11, 7, 7, vocab_size - 1])
    logits, labels = rows.to(DEVICE), labels.to(DEVICE)
    stats, _ = ts.logits_stats_forward(logits, labels, inv_temp(5), -100, block_v=128)
    expected = oracle(logits, labels)
    assert_stats_close(stats, expected)
    assert torch.isfinite(torch.stack(list(stats))).all()
    assert stats.entropy[1].item() == pytest.approx(math.log(vocab_size), abs=1e-5)
    assert stats.sum_p_squared[1].item() == pytest.approx(1 / vocab_size, abs=1e-7)
    assert stats.grad_norm[1].item() == pytest.approx(math.sqrt(1 - 1 / vocab_size), abs=1e-6)
    assert stats.logprob[1].item() == pytest.approx(-math.log(vocab_size), abs=1e-5)
    assert stats.grad_norm[2].item() == pytest.approx(0.0, abs=1e-7)
    assert stats.entropy[2].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("label_logit", [12.0, 20.0, 30.0])
def test_confident_rows_keep_relative_precision(label_logit):
    # One logit c at the label, V-1 zeros: with ε = (V-1)e^{-c}, log p_y = -log1p(ε),
    # 1 - p_y = ε/(1+ε), g = sqrt((1-p_y)² + (V-1)(e^{-c}/(1+ε))²). For c = 30, g ≈ 4.7e-11: the
    # textbook float32 forms (log Σe^z, sqrt(Σp² - 2p_y + 1)) return 0 or noise of order 1e-4.
    vocab_size = 500
    logits = torch.zeros(1, vocab_size)
    logits[0, 7] = label_logit
    labels = torch.tensor([7])
    stats, _ = ts.logits_stats_forward(logits.to(DEVICE), labels.to(DEVICE), inv_temp(1), -100, block_v=128)
    tail = math.exp(-label_logit)
    eps = (vocab_size - 1) * tail
    expected_g = math.sqrt((eps / (1 + eps)) ** 2 + (vocab_size - 1) * (tail / (1 + eps)) ** 2)
    assert stats.logprob.item() == pytest.approx(-math.log1p(eps), rel=1e-5)
    assert stats.grad_norm.item() == pytest.approx(expected_g, rel=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter: 0·(-inf), discarded
def test_logits_negative_infinity_entries_and_ignored_rows():
    vocab_size = 200
    logits = torch.randn(4, vocab_size)
    logits[0, 50:] = float("-inf")  # a masked vocabulary (e.g. by a logits processor)
    labels = torch.tensor([3, -100, 5, -100])
    logits, labels = logits.to(DEVICE), labels.to(DEVICE)
    stats, _ = ts.logits_stats_forward(logits, labels, inv_temp(4), -100, block_v=64)
    kept = torch.tensor([0, 2], device=DEVICE)
    expected = oracle(logits[kept], labels[kept])
    assert_stats_close(TokenStats(*(f[kept] for f in stats)), expected)
    for field in stats:
        assert field[1].item() == 0.0 and field[3].item() == 0.0


# Rows of an 8-token vocabulary with non-finite logits (the rest drawn at random), the label, and
# whether the row has a distribution. -inf entries are a masked vocabulary (p = 0); NaN, +inf or
# no finite logit leave no distribution: every statistic NaN, gradient NaN.
NON_FINITE_ROWS = {
    "-inf entries": ({5: "-inf", 6: "-inf", 7: "-inf"}, 1, True),
    "label at -inf": ({5: "-inf", 6: "-inf", 7: "-inf"}, 6, True),
    "one finite logit": ({i: "-inf" for i in range(1, 8)}, 0, True),
    "all -inf": ({i: "-inf" for i in range(8)}, 1, False),
    "nan entry": ({3: "nan"}, 1, False),
    "nan at label": ({3: "nan"}, 3, False),
    "+inf entry": ({3: "inf"}, 1, False),
    "+inf at label": ({3: "inf"}, 3, False),
    "+inf and -inf": ({3: "inf", 4: "-inf"}, 1, False),
}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter arithmetic on inf
@pytest.mark.parametrize("name", sorted(NON_FINITE_ROWS))
def test_non_finite_logits_agree_across_backends(name):
    entries, label, has_distribution = NON_FINITE_ROWS[name]
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 8, generator=generator)
    for column, value in entries.items():
        logits[0, column] = float(value)
    logits[2] = logits[0]  # the same row again, ignored: 0 and no gradient whatever it holds
    labels = torch.tensor([label, 4, -100])
    d_logprob, d_entropy = torch.tensor([0.7, -1.1, 2.0]), torch.tensor([-0.4, 0.9, 3.0])
    results = {}
    for backend in ("torch", "triton"):
        leaf = logits.clone().to(DEVICE).requires_grad_(True)
        stats = token_stats_from_logits(leaf, labels.to(DEVICE), backend=backend)
        ((stats.logprob * d_logprob.to(DEVICE)).sum() + (stats.entropy * d_entropy.to(DEVICE)).sum()).backward()
        results[backend] = (TokenStats(*(f.detach().cpu() for f in stats)), leaf.grad.cpu())
    (torch_stats, torch_grad), (triton_stats, triton_grad) = results["torch"], results["triton"]

    for field in TokenStats._fields:
        torch.testing.assert_close(getattr(triton_stats, field), getattr(torch_stats, field), atol=2e-5, rtol=1e-5,
                                   equal_nan=True, msg=f"{name}: {field}, triton vs torch")
    torch.testing.assert_close(triton_grad, torch_grad, atol=2e-5, rtol=1e-5, equal_nan=True,
                               msg=f"{name}: gradient, triton vs torch")
    assert all(getattr(torch_stats, f)[2].item() == 0.0 for f in TokenStats._fields) and (torch_grad[2] == 0).all()
    first_row = torch.stack([getattr(torch_stats, f)[0] for f in TokenStats._fields])
    if not has_distribution:
        assert first_row.isnan().all() and torch_grad[0].isnan().all()
        return
    # A masked vocabulary is the distribution over the finite logits: the float64 oracle on those.
    finite = torch.isfinite(logits[0])
    kept_label = int(finite[:label].sum()) if finite[label] else None
    # ∂/∂z_j of log p_y is δ_jy - p_j: 0 at a masked entry, except d_logprob · 1 at a masked label
    masked_gradient = torch.where(torch.arange(8) == label, d_logprob[0], 0.0)[~finite]
    assert torch_grad[0].isfinite().all() and torch.equal(torch_grad[0][~finite], masked_gradient)
    if kept_label is None:
        assert torch_stats.logprob[0].item() == float("-inf")
    else:
        expected = oracle(logits[0, finite].unsqueeze(0), torch.tensor([kept_label]))
        assert torch_stats.logprob[0].item() == pytest.approx(expected.logprob.item(), abs=2e-5)
    only_finite = oracle(logits[0, finite].unsqueeze(0), torch.tensor([0]))
    assert torch_stats.entropy[0].item() == pytest.approx(only_finite.entropy.item(), abs=2e-5)
    assert torch_stats.sum_p_squared[0].item() == pytest.approx(only_finite.sum_p_squared.item(), abs=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_hidden_states_agree_across_backends():
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(4, 16, generator=generator)
    hidden[0, 3], hidden[1, 5] = float("nan"), float("inf")
    weight = torch.randn(40, 16, generator=generator) / 4
    labels = torch.tensor([1, 2, 3, 4])
    results = {}
    for backend in ("torch", "triton"):
        h, w = hidden.clone().to(DEVICE).requires_grad_(True), weight.clone().to(DEVICE).requires_grad_(True)
        stats = token_stats_from_hidden(h, w, labels.to(DEVICE), backend=backend)
        (stats.logprob.sum() + stats.entropy.sum()).backward()
        results[backend] = (torch.stack([f.detach().cpu() for f in stats]), h.grad.cpu())
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=5e-5, rtol=1e-5, equal_nan=True)
    stats, grad_hidden = results["torch"]
    assert stats[:, :2].isnan().all() and stats[:, 2:].isfinite().all()  # rows 0, 1: no distribution
    assert grad_hidden[:2].isnan().all() and grad_hidden[2:].isfinite().all()
    assert results["triton"][1][:2].isnan().all() and results["triton"][1][2:].isfinite().all()


@settings(max_examples=15, deadline=None)
@given(
    vocab_size=st.integers(2, 300),
    num_rows=st.integers(1, 4),
    scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
    temperature=st.sampled_from([0.3, 1.0, 1.7]),
    seed=st.integers(0, 2**16),
)
def test_logits_kernel_properties(vocab_size, num_rows, scale, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(num_rows, vocab_size, generator=generator)).to(DEVICE)
    labels = torch.randint(0, vocab_size, (num_rows,), generator=generator).to(DEVICE)
    stats, _ = ts.logits_stats_forward(logits, labels, inv_temp(num_rows, temperature), -100, block_v=64)
    assert_stats_close(stats, oracle(logits, labels, temperature))
    p_label = stats.logprob.double().exp()
    assert (stats.entropy >= -1e-5).all() and (stats.entropy <= math.log(vocab_size) + 1e-5).all()
    assert (stats.sum_p_squared >= 1 / vocab_size - 1e-6).all() and (stats.sum_p_squared <= 1 + 1e-6).all()
    assert (stats.grad_norm <= math.sqrt(2) + 1e-6).all()
    torch.testing.assert_close(
        stats.grad_norm.double() ** 2, stats.sum_p_squared.double() - 2 * p_label + 1, atol=2e-5, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_backward_matches_reference_autograd(dtype):
    generator = torch.Generator().manual_seed(1)
    n, vocab_size = 5, 130
    logits = (3 * torch.randn(n, vocab_size, generator=generator)).to(dtype).to(DEVICE)
    labels = torch.randint(0, vocab_size, (n,), generator=generator).to(DEVICE)
    labels[2] = -100
    d_logprob = torch.randn(n, generator=generator).to(DEVICE)
    d_entropy = torch.randn(n, generator=generator).to(DEVICE)
    temperature = 0.8

    fused = logits.clone().requires_grad_()
    stats = ts.LogitsTokenStats.apply(fused, labels, inv_temp(n, temperature), -100, 64)
    ((stats[0] * d_logprob).sum() + (stats[1] * d_entropy).sum()).backward()

    reference = logits.double().requires_grad_()
    expected = token_stats_reference(reference, labels, inv_temp(n, temperature), -100)
    ((expected.logprob * d_logprob).sum() + (expected.entropy * d_entropy).sum()).backward()

    assert fused.grad.dtype == dtype
    bf16_rounding = 1e-2 if dtype == torch.bfloat16 else 0.0  # the gradient is stored in bf16
    torch.testing.assert_close(fused.grad.double(), reference.grad, atol=2e-5, rtol=bf16_rounding)
    assert (fused.grad[2] == 0).all()


def test_logits_backward_only_through_logprob():
    logits = torch.randn(3, 50, device=DEVICE, requires_grad=True)
    labels = torch.tensor([1, 2, 3], device=DEVICE)
    stats = token_stats_from_logits(logits, labels, backend="triton")
    assert not stats.grad_norm.requires_grad and not stats.sum_p_squared.requires_grad
    stats.logprob.sum().backward()
    expected = torch.nn.functional.one_hot(labels, 50) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=1e-5)


def test_reference_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 6, -100])
    inv_temperature = torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64)

    def logprob_and_entropy(x):
        stats = token_stats_reference(x, labels, inv_temperature, -100)
        return stats.logprob, stats.entropy

    assert torch.autograd.gradcheck(logprob_and_entropy, (logits,))


# ----------------------------------------------------------------------------------------------
# Kernel (b): hidden [N, H] and lm_head weight [V, H]
# ----------------------------------------------------------------------------------------------


def hidden_case(num_rows: int, vocab_size: int, hidden_size: int, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_rows, hidden_size, generator=generator).to(dtype).to(DEVICE)
    weight = (torch.randn(vocab_size, hidden_size, generator=generator) / math.sqrt(hidden_size) * 3)
    labels = torch.randint(0, vocab_size, (num_rows,), generator=generator).to(DEVICE)
    return hidden, weight.to(dtype).to(DEVICE), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_hidden_kernel_matches_log_softmax_of_matmul(dtype, num_splits):
    # N, V, H all off the block sizes (16, 32, 32): row, column and K masks all matter.
    hidden, weight, labels = hidden_case(37, 301, 40, dtype)
    labels[5] = -100
    temperature = 0.8
    stats, _ = ts.hidden_stats_forward(
        hidden, weight, labels, inv_temp(37, temperature), -100, block_n=16, block_v=32, block_k=32, num_splits=num_splits
    )
    # The oracle multiplies the same dtype-rounded values in float64.
    logits = hidden.double() @ weight.double().t()
    expected = oracle(logits, labels.clamp(min=0), temperature)
    kept = labels != -100
    assert_stats_close(TokenStats(*(f[kept] for f in stats)), TokenStats(*(f[kept] for f in expected)), scale=2.5)
    assert all(f[5].item() == 0.0 for f in stats)
    torch.testing.assert_close(
        stats.logprob[kept].double(),
        torch.log_softmax(logits / temperature, -1).gather(-1, labels.clamp(min=0)[:, None])[kept, 0],
        atol=5e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("num_splits", [1, 4])
def test_hidden_kernel_confident_rows_across_splits(num_splits):
    # weight = c·I: row i of the logits is c at column i, 0 elsewhere; the label's split changes.
    vocab_size = 64
    weight = 25.0 * torch.eye(vocab_size, device=DEVICE)
    hidden = torch.eye(vocab_size, device=DEVICE)[[0, 17, 40, 63]]
    labels = torch.tensor([0, 17, 40, 63], device=DEVICE)
    stats, _ = ts.hidden_stats_forward(
        hidden, weight, labels, inv_temp(4), -100, block_n=16, block_v=16, block_k=16, num_splits=num_splits
    )
    tail = math.exp(-25.0)
    eps = (vocab_size - 1) * tail
    expected_g = math.sqrt((eps / (1 + eps)) ** 2 + (vocab_size - 1) * (tail / (1 + eps)) ** 2)
    torch.testing.assert_close(stats.logprob.double(), torch.full((4,), -math.log1p(eps), dtype=torch.float64, device=DEVICE), rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.grad_norm.double(), torch.full((4,), expected_g, dtype=torch.float64, device=DEVICE), rtol=1e-5, atol=0)


def test_hidden_dispatch_matches_logits_dispatch():
    hidden, weight, labels = hidden_case(20, 257, 24, torch.float32, seed=4)
    from_hidden = token_stats_from_hidden(hidden, weight, labels, temperature=1.3, backend="triton")
    from_logits = token_stats_from_logits(hidden @ weight.t(), labels, temperature=1.3, backend="triton")
    assert_stats_close(from_hidden, from_logits, scale=2.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_backward_matches_reference_autograd(dtype):
    hidden, weight, labels = hidden_case(21, 150, 24, dtype, seed=2)
    labels[0] = -100
    generator = torch.Generator().manual_seed(5)
    d_logprob = torch.randn(21, generator=generator).to(DEVICE)
    d_entropy = torch.randn(21, generator=generator).to(DEVICE)
    temperature = 1.25

    fused_hidden = hidden.clone().requires_grad_()
    fused_weight = weight.clone().requires_grad_()
    stats = ts.HiddenTokenStats.apply(fused_hidden, fused_weight, labels, inv_temp(21, temperature), -100)
    ((stats[0] * d_logprob).sum() + (stats[1] * d_entropy).sum()).backward()

    ref_hidden = hidden.double().requires_grad_()
    ref_weight = weight.double().requires_grad_()
    expected = token_stats_reference(ref_hidden @ ref_weight.t(), labels, inv_temp(21, temperature), -100)
    ((expected.logprob * d_logprob).sum() + (expected.entropy * d_entropy).sum()).backward()

    assert fused_hidden.grad.dtype == dtype and fused_weight.grad.dtype == dtype
    # bf16: the backward recomputes the logits as a bf16 matmul and stores bf16 gradients.
    atol, rtol = (2e-5, 1e-5) if dtype == torch.float32 else (3e-2, 3e-2)
    torch.testing.assert_close(fused_hidden.grad.double(), ref_hidden.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(fused_weight.grad.double(), ref_weight.grad, atol=atol, rtol=rtol)


def test_hidden_backward_row_chunks_add_up():
    hidden, weight, labels = hidden_case(40, 90, 16, torch.float32, seed=6)
    d_logprob = torch.randn(40, device=DEVICE)
    d_entropy = torch.randn(40, device=DEVICE)
    args = (hidden, weight, labels, inv_temp(40, 0.9), d_logprob, d_entropy, -100)
    whole = ts.hidden_stats_backward(*args, chunk_rows=64)
    chunked = ts.hidden_stats_backward(*args, chunk_rows=16)  # 3 chunks, the last one short
    for got, want in zip(chunked, whole):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The dispatcher
# ----------------------------------------------------------------------------------------------


def test_auto_backend_on_cpu_is_the_reference():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    if ts.is_interpreted():
        assert resolve_backend("triton", torch.device("cpu")) == "triton"
    else:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            resolve_backend("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of auto|triton|torch"):
        resolve_backend("cuda", torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dispatch_leading_dims_and_per_token_temperature(backend):
    generator = torch.Generator().manual_seed(8)
    logits = (2 * torch.randn(2, 3, 40, generator=generator)).to(DEVICE)
    labels = torch.randint(0, 40, (2, 3), generator=generator).to(DEVICE)
    temperature = torch.tensor([[0.5, 1.0, 2.0], [1.0, 1.0, 0.7]], device=DEVICE)
    stats = token_stats_from_logits(logits, labels, temperature=temperature, backend=backend)
    assert stats.logprob.shape == (2, 3)
    expected = oracle(logits.reshape(6, 40), labels.reshape(6), temperature.reshape(6))
    assert_stats_close(TokenStats(*(f.reshape(6) for f in stats)), expected)


def test_dispatch_rejects_bad_input():
    logits = torch.randn(3, 10, device=DEVICE)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*found 10"):
        token_stats_from_logits(logits, torch.tensor([0, 10, 1], device=DEVICE))
    with pytest.raises(ValueError, match="found -1"):
        token_stats_from_logits(logits, torch.tensor([0, -1, 1], device=DEVICE))
    with pytest.raises(ValueError, match="leading shape"):
        token_stats_from_logits(logits, torch.tensor([0, 1], device=DEVICE))
    with pytest.raises(TypeError, match="integer"):
        token_stats_from_logits(logits, torch.zeros(3, device=DEVICE))
    labels = torch.tensor([0, 1, 2], device=DEVICE)
    # 0 and negative flip or break the distribution; inf flattens it to uniform; NaN poisons it
    for temperature in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="^temperature must be a finite number > 0, got"):
            token_stats_from_logits(logits, labels, temperature=temperature)
    for bad in (float("nan"), float("inf"), 0.0, -0.5):
        per_token = torch.tensor([1.0, bad, 0.7], device=DEVICE)
        with pytest.raises(ValueError, match=r"^every temperature must be a finite number > 0, got"):
            token_stats_from_logits(logits, labels, temperature=per_token)
        with pytest.raises(ValueError, match=r"^every temperature must be a finite number > 0, got"):
            token_stats_from_hidden(torch.randn(3, 4, device=DEVICE), torch.randn(10, 4, device=DEVICE), labels,
                                    temperature=per_token)
    with pytest.raises(ValueError, match=r"weight must be \[V, H\]"):
        token_stats_from_hidden(torch.randn(3, 4), torch.randn(10, 5), torch.tensor([0, 1, 2]))


def test_empty_batch():
    for backend in ("torch", "triton"):
        stats = token_stats_from_logits(torch.randn(0, 10, device=DEVICE), torch.zeros(0, dtype=torch.long, device=DEVICE), backend=backend)
        assert all(f.shape == (0,) for f in stats)


# ----------------------------------------------------------------------------------------------
# GPU: compiled kernels at the real vocabulary size
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_bf16_at_qwen_vocabulary():
    torch.manual_seed(0)
    n, vocab_size, hidden_size = 2048, 151_936, 1536
    hidden = torch.randn(n, hidden_size, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(vocab_size, hidden_size, device="cuda") / math.sqrt(hidden_size) * 4).bfloat16()
    labels = torch.randint(0, vocab_size, (n,), device="cuda")
    logits = hidden @ weight.t()  # bf16, as an HF lm_head returns them

    from_logits = token_stats_from_logits(logits, labels, temperature=0.9)
    expected = token_stats_from_logits(logits, labels, temperature=0.9, backend="torch")
    assert_stats_close(from_logits, expected, scale=5.0)

    from_hidden = token_stats_from_hidden(hidden, weight, labels, temperature=0.9)
    expected_hidden = token_stats_from_hidden(hidden.float(), weight.float(), labels, temperature=0.9, backend="torch")
    # The kernel accumulates exact bf16 products in float32, as the float32 reference matmul does.
    assert_stats_close(from_hidden, expected_hidden, scale=50.0)


@pytest.mark.gpu
def test_gpu_hidden_backward_bf16():
    torch.manual_seed(1)
    n, vocab_size, hidden_size = 512, 32_000, 1024
    hidden = torch.randn(n, hidden_size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab_size, hidden_size, device="cuda") / 16).bfloat16().requires_grad_()
    labels = torch.randint(0, vocab_size, (n,), device="cuda")
    stats = token_stats_from_hidden(hidden, weight, labels)
    (stats.logprob.sum() + 0.1 * stats.entropy.sum()).backward()
    ref_hidden = hidden.detach().float().requires_grad_()
    ref_weight = weight.detach().float().requires_grad_()
    expected = token_stats_from_hidden(ref_hidden, ref_weight, labels, backend="torch")
    (expected.logprob.sum() + 0.1 * expected.entropy.sum()).backward()
    for got, want in ((hidden.grad, ref_hidden.grad), (weight.grad, ref_weight.grad)):
        relative = (got.float() - want).norm() / want.norm()
        assert relative < 2e-2, relative
