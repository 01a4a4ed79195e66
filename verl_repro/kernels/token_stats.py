"""Fused per-token softmax statistics in Triton: log p_y, entropy H, Σp² and g = ||p - onehot(y)||₂.

Two kernels share one online recurrence over the vocabulary (the maths is in ``reference.py``):

(a) ``_logits_stats_fwd_kernel`` reads materialized logits ``[N, V]`` once, one program per row.
(b) ``_hidden_stats_fwd_kernel`` computes the logits tile by tile from hidden states ``[N, H]`` and the
    lm_head weight ``[V, H]`` so the ``[N, V]`` logits never exist in memory; the vocabulary is cut into
    ``num_splits`` ranges run by separate programs whose partial statistics are merged afterwards.

Online recurrence (per row, over vocabulary blocks, with running max ``m``)::

    r = Σ e^{z-m} - 1   t = Σ e^{z-m} (z-m)      q = Σ_{j≠y} e^{2(z-m)}
    s = 1 + r           lse = m + log1p(r)       H = log1p(r) - t/s
    Σp² = p_y² + q/s²   g = sqrt((1 - p_y)² + q/s²),   1 - p_y = -expm1(log p_y)

Precision for confident tokens (p_y → 1, g → 0), where the textbook forms lose everything in
float32: ``r`` leaves out the max element's own ``e^0 = 1`` (so ``log s`` is a ``log1p`` of a small,
fully precise number rather than the log of ``1.000…x``), ``q`` leaves out the label (so ``g`` never
computes ``Σp² - 2p_y + 1``, a difference of numbers near 1), and ``1 - p_y`` is an ``expm1``.

Backward: gradients flow through ``logprob`` and ``entropy`` (``sum_p_squared`` and ``grad_norm`` are
statistics, not differentiable here). For z = x / T::

    ∂logp_y/∂x_j = (δ_jy - p_j) / T          ∂H/∂x_j = -p_j (log p_j + H) / T

Kernel (a)'s backward is a second pass over the logits. Kernel (b)'s backward goes through row
chunks: it recomputes the chunk's logits with a matmul, runs (a)'s backward in place on them and
applies the two weight/hidden matmuls, so its peak extra memory is one ``[chunk, V]`` buffer.

Triton note: under ``TRITON_INTERPRET=1`` a bf16 ``tl.dot`` multiplies raw uint16 bit patterns, so
kernel (b) upcasts its tiles to float32 when interpreting (constexpr ``UPCAST_DOT``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from verl_repro.kernels.reference import TokenStats

# A finite stand-in for -inf as the running max and for columns past the vocabulary:
# `exp(m_old - m_new)` and `s * (m_old - m_new)` stay well defined (0 and 0) before the first block.
_NEG_BIG = tl.constexpr(-3.0e38)


def is_interpreted() -> bool:
    """Whether this module's kernels were built for the Triton interpreter (CPU tensors): Triton
    reads ``TRITON_INTERPRET`` once, when the kernels below are decorated at import."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_logits_stats_fwd_kernel, InterpretedFunction)


@triton.jit
def _log1p(x):
    """log(1 + x) to full relative precision for small x (Goldberg's correction of the rounded 1 + x)."""
    u = 1.0 + x
    d = u - 1.0
    exact = d == 0.0
    return tl.where(exact, x, tl.log(u) * x / tl.where(exact, 1.0, d))


@triton.jit
def _expm1(x):
    """e^x - 1 to full relative precision for small x (Kahan's correction of the rounded e^x)."""
    u = tl.exp(x)
    d = u - 1.0
    exact = d == 0.0
    # u == 0 only where d == -1, which is answered first; the guards keep unused lanes finite.
    log_u = tl.log(tl.where(u > 0.0, u, 0.5))
    return tl.where(d == -1.0, -1.0, tl.where(exact, x, d * x / tl.where(exact, 1.0, log_u)))


@triton.jit
def _online_update(m, r, t, q, z, at_label, AXIS: tl.constexpr):
    """Fold a block of scaled logits ``z`` into the running (m, r, t, q) along ``AXIS``."""
    block_max = tl.max(z, axis=AXIS)
    m_new = tl.maximum(m, block_max)
    rescale = tl.exp(m - m_new)
    if AXIS == 0:
        shifted = z - m_new
        at_max = z == block_max
    else:
        shifted = z - m_new[:, None]
        at_max = z == block_max[:, None]
    e = tl.exp(shifted)
    t = rescale * (t + (r + 1.0) * (m - m_new)) + tl.sum(tl.where(e > 0, e * shifted, 0.0), axis=AXIS)
    q = rescale * rescale * q + tl.sum(tl.where(at_label, 0.0, e * e), axis=AXIS)
    # Elements equal to the block max each carry e_max = e^{block_max - m_new}; the rest are summed.
    # If this block holds the new max, one e_max = 1 becomes the implicit "1" of s = 1 + r and the
    # old implicit 1 is rescaled into r; otherwise the block only adds to r.
    below_max = tl.sum(tl.where(at_max, 0.0, e), axis=AXIS)
    num_at_max = tl.sum(at_max.to(tl.float32), axis=AXIS)
    r = tl.where(
        block_max >= m,
        rescale * (r + 1.0) + below_max + (num_at_max - 1.0),
        r + below_max + num_at_max * tl.exp(tl.minimum(block_max - m, 0.0)),
    )
    return m_new, r, t, q


@triton.jit
def _finish_stats(m, r, t, q, z_label):
    """Turn the merged recurrence (m, r, t, q) and the label logit into the four statistics."""
    s = 1.0 + r
    log_s = _log1p(r)
    logprob = (z_label - m) - log_s
    entropy = log_s - t / s
    p_label = tl.exp(logprob)
    others_sq = q / (s * s)
    sum_p_squared = p_label * p_label + others_sq
    one_minus_p = -_expm1(logprob)
    grad_norm = tl.sqrt(one_minus_p * one_minus_p + others_sq)
    # A row without a distribution has no statistics (all NaN, as in the torch reference; the NaN
    # lse makes its gradient NaN too): a NaN logit (NaN r or t), a +inf one (m - m is NaN) or no
    # finite one (m never rose above the -inf stand-in).
    defined = (m > _NEG_BIG) & ((m - m) == 0.0) & (r == r) & (t == t)
    nan = float("nan")
    return (
        tl.where(defined, logprob, nan),
        tl.where(defined, entropy, nan),
        tl.where(defined, sum_p_squared, nan),
        tl.where(defined, grad_norm, nan),
        tl.where(defined, m + log_s, nan),
    )


@triton.jit
def _logits_stats_fwd_kernel(
    logits_ptr,
    logits_row_stride,
    labels_ptr,
    inv_temperature_ptr,
    logprob_ptr,
    entropy_ptr,
    sum_p_squared_ptr,
    grad_norm_ptr,
    lse_ptr,
    vocab_size,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    ignored = label == ignore_index
    safe_label = tl.where(ignored, 0, label)
    inv_t = tl.load(inv_temperature_ptr + row).to(tl.float32)
    row_ptr = logits_ptr + row * logits_row_stride
    # Ignored rows (prompt tokens, padding) skip the vocabulary entirely.
    num_cols = tl.where(ignored, 0, vocab_size)

    m = tl.full((), _NEG_BIG, tl.float32)
    r = tl.full((), -1.0, tl.float32)
    t = tl.zeros((), tl.float32)
    q = tl.zeros((), tl.float32)
    for start in range(0, num_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_vocab = cols < vocab_size
        z = tl.load(row_ptr + cols, mask=in_vocab, other=0.0).to(tl.float32) * inv_t
        z = tl.where(in_vocab, z, _NEG_BIG)
        m, r, t, q = _online_update(m, r, t, q, z, cols == safe_label, AXIS=0)

    z_label = tl.load(row_ptr + safe_label).to(tl.float32) * inv_t
    # Ignored rows never entered the loop; keep their (discarded) arithmetic finite.
    r = tl.where(ignored, 0.0, r)
    m = tl.where(ignored, 0.0, m)
    logprob, entropy, sum_p_squared, grad_norm, lse = _finish_stats(m, r, t, q, z_label)
    tl.store(logprob_ptr + row, tl.where(ignored, 0.0, logprob))
    tl.store(entropy_ptr + row, tl.where(ignored, 0.0, entropy))
    tl.store(sum_p_squared_ptr + row, tl.where(ignored, 0.0, sum_p_squared))
    tl.store(grad_norm_ptr + row, tl.where(ignored, 0.0, grad_norm))
    tl.store(lse_ptr + row, tl.where(ignored, 0.0, lse))


@triton.jit
def _logits_stats_bwd_kernel(
    logits_ptr,
    logits_row_stride,
    grad_logits_ptr,
    grad_row_stride,
    labels_ptr,
    inv_temperature_ptr,
    lse_ptr,
    entropy_ptr,
    d_logprob_ptr,
    d_entropy_ptr,
    vocab_size,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    # grad_logits_ptr may alias logits_ptr: each element is read, then overwritten, by one program.
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    ignored = label == ignore_index
    inv_t = tl.load(inv_temperature_ptr + row).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    entropy = tl.load(entropy_ptr + row)
    d_logprob = tl.where(ignored, 0.0, tl.load(d_logprob_ptr + row))
    d_entropy = tl.where(ignored, 0.0, tl.load(d_entropy_ptr + row))
    row_ptr = logits_ptr + row * logits_row_stride
    grad_ptr = grad_logits_ptr + row * grad_row_stride
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        in_vocab = cols < vocab_size
        z = tl.load(row_ptr + cols, mask=in_vocab, other=0.0).to(tl.float32) * inv_t
        log_p = z - lse
        p = tl.exp(log_p)
        d_z = d_logprob * (tl.where(cols == label, 1.0, 0.0) - p)
        d_z -= d_entropy * tl.where(p > 0, p * (log_p + entropy), 0.0)
        # An ignored row gets no gradient even when its (unused) logits hold NaN or inf.
        d_z = tl.where(ignored, 0.0, d_z * inv_t)
        tl.store(grad_ptr + cols, d_z.to(grad_logits_ptr.dtype.element_ty), mask=in_vocab)


@triton.jit
def _hidden_stats_fwd_kernel(
    hidden_ptr,
    hidden_row_stride,
    weight_ptr,
    weight_row_stride,
    labels_ptr,
    inv_temperature_ptr,
    part_max_ptr,
    part_rest_ptr,
    part_t_ptr,
    part_q_ptr,
    part_z_label_ptr,
    num_rows,
    vocab_size,
    hidden_size,
    cols_per_split,
    ignore_index,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # axis 0 = vocabulary split, fastest: the programs resident together are the splits of a few
    # row blocks, so their hidden tiles are shared through L2 while each streams its weight slice.
    split = tl.program_id(0)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_rows
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    inv_t = tl.load(inv_temperature_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, vocab_size)
    k_range = tl.arange(0, BLOCK_K)

    m = tl.full((BLOCK_N,), _NEG_BIG, tl.float32)
    r = tl.full((BLOCK_N,), -1.0, tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    q = tl.zeros((BLOCK_N,), tl.float32)
    z_label = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(col_begin, col_end, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        col_ok = cols < col_end
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k in range(0, hidden_size, BLOCK_K):
            ks = k + k_range
            k_ok = ks < hidden_size
            h = tl.load(
                hidden_ptr + rows[:, None] * hidden_row_stride + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            w = tl.load(
                weight_ptr + cols[None, :].to(tl.int64) * weight_row_stride + ks[:, None],
                mask=col_ok[None, :] & k_ok[:, None],
                other=0.0,
            )
            if UPCAST_DOT:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
        z = tl.where(col_ok[None, :], acc * inv_t[:, None], _NEG_BIG)
        is_label = cols[None, :] == labels[:, None]
        z_label += tl.sum(tl.where(is_label, z, 0.0), axis=1)
        m, r, t, q = _online_update(m, r, t, q, z, is_label, AXIS=1)

    out = split * num_rows + rows
    tl.store(part_max_ptr + out, m, mask=row_ok)
    tl.store(part_rest_ptr + out, r, mask=row_ok)
    tl.store(part_t_ptr + out, t, mask=row_ok)
    tl.store(part_q_ptr + out, q, mask=row_ok)
    tl.store(part_z_label_ptr + out, z_label, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_max_ptr,
    part_rest_ptr,
    part_t_ptr,
    part_q_ptr,
    part_z_label_ptr,
    labels_ptr,
    logprob_ptr,
    entropy_ptr,
    sum_p_squared_ptr,
    grad_norm_ptr,
    lse_ptr,
    num_rows,
    num_splits,
    ignore_index,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < num_rows
    m = tl.full((BLOCK,), _NEG_BIG, tl.float32)
    r = tl.full((BLOCK,), -1.0, tl.float32)
    t = tl.zeros((BLOCK,), tl.float32)
    q = tl.zeros((BLOCK,), tl.float32)
    z_label = tl.zeros((BLOCK,), tl.float32)
    for split in range(0, num_splits):
        at = split * num_rows + rows
        m_part = tl.load(part_max_ptr + at, mask=row_ok, other=_NEG_BIG)
        r_part = tl.load(part_rest_ptr + at, mask=row_ok, other=-1.0)
        t_part = tl.load(part_t_ptr + at, mask=row_ok, other=0.0)
        q_part = tl.load(part_q_ptr + at, mask=row_ok, other=0.0)
        m_new = tl.maximum(m, m_part)
        old_scale = tl.exp(m - m_new)
        part_scale = tl.exp(m_part - m_new)
        t = old_scale * (t + (r + 1.0) * (m - m_new)) + part_scale * (t_part + (r_part + 1.0) * (m_part - m_new))
        # The split holding the larger max keeps its implicit 1 (same rule as _online_update).
        r = tl.where(m_part >= m, old_scale * (r + 1.0) + r_part, r + part_scale * (r_part + 1.0))
        q = old_scale * old_scale * q + part_scale * part_scale * q_part
        z_label += tl.load(part_z_label_ptr + at, mask=row_ok, other=0.0)
        m = m_new
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    ignored = labels == ignore_index
    # Rows past the end are never stored; keep their arithmetic finite.
    r = tl.where(row_ok, r, 0.0)
    m = tl.where(row_ok, m, 0.0)
    logprob, entropy, sum_p_squared, grad_norm, lse = _finish_stats(m, r, t, q, z_label)
    tl.store(logprob_ptr + rows, tl.where(ignored, 0.0, logprob), mask=row_ok)
    tl.store(entropy_ptr + rows, tl.where(ignored, 0.0, entropy), mask=row_ok)
    tl.store(sum_p_squared_ptr + rows, tl.where(ignored, 0.0, sum_p_squared), mask=row_ok)
    tl.store(grad_norm_ptr + rows, tl.where(ignored, 0.0, grad_norm), mask=row_ok)
    tl.store(lse_ptr + rows, tl.where(ignored, 0.0, lse), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _default_block_v(vocab_size: int) -> int:
    cap = 1024 if is_interpreted() else 4096
    return min(cap, triton.next_power_of_2(max(vocab_size, 16)))


def _empty_stats(num_rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(num_rows, dtype=torch.float32, device=device) for _ in range(5))


def logits_stats_forward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    ignore_index: int,
    block_v: int | None = None,
) -> tuple[TokenStats, torch.Tensor]:
    """Kernel (a) forward. logits: [N, V] (unit stride along V); labels: [N] int; inv_temperature:
    [N] float32. Returns (TokenStats of [N] float32, lse: [N] float32 of z = logits / T)."""
    num_rows, vocab_size = logits.shape
    logprob, entropy, sum_p_squared, grad_norm, lse = _empty_stats(num_rows, logits.device)
    if num_rows:
        block_v = block_v or _default_block_v(vocab_size)
        _logits_stats_fwd_kernel[(num_rows,)](
            logits,
            logits.stride(0),
            labels,
            inv_temperature,
            logprob,
            entropy,
            sum_p_squared,
            grad_norm,
            lse,
            vocab_size,
            ignore_index,
            BLOCK_V=block_v,
            num_warps=8 if block_v >= 2048 else 4,
        )
    return TokenStats(logprob, entropy, sum_p_squared, grad_norm), lse


def logits_stats_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    d_logprob: torch.Tensor,
    d_entropy: torch.Tensor,
    ignore_index: int,
    out: torch.Tensor | None = None,
    block_v: int | None = None,
) -> torch.Tensor:
    """Kernel (a) backward: ∂loss/∂logits [N, V] in the logits' dtype, written into ``out`` (which may
    be ``logits`` itself) or a new tensor."""
    num_rows, vocab_size = logits.shape
    grad = torch.empty_like(logits) if out is None else out
    if num_rows:
        block_v = block_v or _default_block_v(vocab_size)
        _logits_stats_bwd_kernel[(num_rows,)](
            logits,
            logits.stride(0),
            grad,
            grad.stride(0),
            labels,
            inv_temperature,
            lse,
            entropy,
            d_logprob.contiguous(),
            d_entropy.contiguous(),
            vocab_size,
            ignore_index,
            BLOCK_V=block_v,
            num_warps=8 if block_v >= 2048 else 4,
        )
    return grad


def _num_splits(num_row_blocks: int, vocab_size: int, block_v: int, device: torch.device) -> int:
    """Enough vocabulary splits to give every SM about two programs, never an empty split."""
    if device.type == "cuda":
        target_programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target_programs = 4
    max_splits = triton.cdiv(vocab_size, block_v)
    return max(1, min(max_splits, triton.cdiv(target_programs, num_row_blocks)))


def hidden_stats_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    ignore_index: int,
    block_n: int | None = None,
    block_v: int | None = None,
    block_k: int | None = None,
    num_splits: int | None = None,
) -> tuple[TokenStats, torch.Tensor]:
    """Kernel (b) forward. hidden: [N, H], weight: [V, H] (same dtype, unit stride along H);
    labels: [N] int; inv_temperature: [N] float32. Returns (TokenStats, lse), [N] float32 each."""
    num_rows, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    device = hidden.device
    logprob, entropy, sum_p_squared, grad_norm, lse = _empty_stats(num_rows, device)
    if num_rows == 0:
        return TokenStats(logprob, entropy, sum_p_squared, grad_norm), lse
    interpreted = is_interpreted()
    block_n = block_n or (16 if interpreted else 128)
    block_v = block_v or (32 if interpreted else 128)
    block_k = block_k or (32 if interpreted else 64)
    num_row_blocks = triton.cdiv(num_rows, block_n)
    if num_splits is None:
        num_splits = _num_splits(num_row_blocks, vocab_size, block_v, device)
    cols_per_split = triton.cdiv(triton.cdiv(vocab_size, num_splits), block_v) * block_v
    num_splits = triton.cdiv(vocab_size, cols_per_split)
    partials = torch.empty((5, num_splits, num_rows), dtype=torch.float32, device=device)
    upcast = interpreted and hidden.dtype in (torch.bfloat16, torch.float16)
    precision = "ieee" if (hidden.dtype == torch.float32 or upcast) else "tf32"
    _hidden_stats_fwd_kernel[(num_splits, num_row_blocks)](
        hidden,
        hidden.stride(0),
        weight,
        weight.stride(0),
        labels,
        inv_temperature,
        partials[0],
        partials[1],
        partials[2],
        partials[3],
        partials[4],
        num_rows,
        vocab_size,
        hidden_size,
        cols_per_split,
        ignore_index,
        BLOCK_N=block_n,
        BLOCK_V=block_v,
        BLOCK_K=block_k,
        UPCAST_DOT=upcast,
        DOT_PRECISION=precision,
        num_warps=4 if interpreted else 8,
        num_stages=1 if interpreted else 3,
    )
    merge_block = 128
    _merge_splits_kernel[(triton.cdiv(num_rows, merge_block),)](
        partials[0],
        partials[1],
        partials[2],
        partials[3],
        partials[4],
        labels,
        logprob,
        entropy,
        sum_p_squared,
        grad_norm,
        lse,
        num_rows,
        num_splits,
        ignore_index,
        BLOCK=merge_block,
    )
    return TokenStats(logprob, entropy, sum_p_squared, grad_norm), lse


def _backward_chunk_rows(vocab_size: int, element_size: int) -> int:
    # One [chunk, V] logits buffer of about 1 GiB on a GPU, 64 MiB when interpreting.
    budget = (1 << 26) if is_interpreted() else (1 << 30)
    return max(16, budget // max(vocab_size * element_size, 1))


def hidden_stats_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    d_logprob: torch.Tensor,
    d_entropy: torch.Tensor,
    ignore_index: int,
    need_hidden_grad: bool = True,
    need_weight_grad: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Kernel (b) backward through row chunks. Returns (∂/∂hidden [N, H], ∂/∂weight [V, H]) in the
    inputs' dtypes (None where not needed)."""
    num_rows = hidden.shape[0]
    vocab_size = weight.shape[0]
    chunk_rows = chunk_rows or _backward_chunk_rows(vocab_size, hidden.element_size())
    grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
    # addmm_ accumulates each chunk in float32 and rounds once into the weight's dtype.
    grad_weight = torch.zeros_like(weight) if need_weight_grad else None
    for begin in range(0, num_rows, chunk_rows):
        rows = slice(begin, min(begin + chunk_rows, num_rows))
        hidden_chunk = hidden[rows]
        logits = hidden_chunk @ weight.t()
        # Recompute lse / H from these logits so p is consistent with the rounding they carry.
        stats, lse = logits_stats_forward(logits, labels[rows], inv_temperature[rows], ignore_index)
        d_logits = logits_stats_backward(
            logits,
            labels[rows],
            inv_temperature[rows],
            lse,
            stats.entropy,
            d_logprob[rows],
            d_entropy[rows],
            ignore_index,
            out=logits,
        )
        if grad_hidden is not None:
            torch.matmul(d_logits, weight, out=grad_hidden[rows])
        if grad_weight is not None:
            grad_weight.addmm_(d_logits.t(), hidden_chunk)
        del logits, d_logits
    return grad_hidden, grad_weight


# ----------------------------------------------------------------------------------------------
# Autograd wrappers
# ----------------------------------------------------------------------------------------------


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.to(torch.float32)


class LogitsTokenStats(torch.autograd.Function):
    """Kernel (a) with backward through logprob and entropy into the logits."""

    @staticmethod
    def forward(ctx, logits, labels, inv_temperature, ignore_index, block_v):
        stats, lse = logits_stats_forward(logits, labels, inv_temperature, ignore_index, block_v)
        ctx.save_for_backward(logits, labels, inv_temperature, lse, stats.entropy)
        ctx.ignore_index = ignore_index
        ctx.block_v = block_v
        ctx.mark_non_differentiable(stats.sum_p_squared, stats.grad_norm)
        return tuple(stats)

    @staticmethod
    def backward(ctx, d_logprob, d_entropy, _d_sum_p_squared, _d_grad_norm):
        logits, labels, inv_temperature, lse, entropy = ctx.saved_tensors
        grad_logits = logits_stats_backward(
            logits,
            labels,
            inv_temperature,
            lse,
            entropy,
            _zeros_if_none(d_logprob, lse),
            _zeros_if_none(d_entropy, lse),
            ctx.ignore_index,
            block_v=ctx.block_v,
        )
        return grad_logits, None, None, None, None


class HiddenTokenStats(torch.autograd.Function):
    """Kernel (b) with backward through logprob and entropy into hidden states and lm_head weight."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, inv_temperature, ignore_index):
        stats, _ = hidden_stats_forward(hidden, weight, labels, inv_temperature, ignore_index)
        ctx.save_for_backward(hidden, weight, labels, inv_temperature)
        ctx.ignore_index = ignore_index
        ctx.mark_non_differentiable(stats.sum_p_squared, stats.grad_norm)
        return tuple(stats)

    @staticmethod
    def backward(ctx, d_logprob, d_entropy, _d_sum_p_squared, _d_grad_norm):
        hidden, weight, labels, inv_temperature = ctx.saved_tensors
        like = inv_temperature
        grad_hidden, grad_weight = hidden_stats_backward(
            hidden,
            weight,
            labels,
            inv_temperature,
            _zeros_if_none(d_logprob, like),
            _zeros_if_none(d_entropy, like),
            ctx.ignore_index,
            need_hidden_grad=ctx.needs_input_grad[0],
            need_weight_grad=ctx.needs_input_grad[1],
        )
        return grad_hidden, grad_weight, None, None, None


def token_stats_logits_triton(
    logits: torch.Tensor, labels: torch.Tensor, inv_temperature: torch.Tensor, ignore_index: int
) -> TokenStats:
    """Kernel (a) through autograd when the logits require grad. Shapes as in logits_stats_forward."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return TokenStats(*LogitsTokenStats.apply(logits, labels, inv_temperature, ignore_index, None))
    return logits_stats_forward(logits, labels, inv_temperature, ignore_index)[0]


def token_stats_hidden_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    ignore_index: int,
) -> TokenStats:
    """Kernel (b) through autograd when hidden or weight require grad."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return TokenStats(*HiddenTokenStats.apply(hidden, weight, labels, inv_temperature, ignore_index))
    return hidden_stats_forward(hidden, weight, labels, inv_temperature, ignore_index)[0]


__all__ = [
    "HiddenTokenStats",
    "LogitsTokenStats",
    "hidden_stats_backward",
    "hidden_stats_forward",
    "is_interpreted",
    "logits_stats_backward",
    "logits_stats_forward",
    "token_stats_hidden_triton",
    "token_stats_logits_triton",
]
