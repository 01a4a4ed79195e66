"""Plain-torch per-token softmax statistics: the documentation of the maths, the oracle of the
Triton kernels in ``token_stats.py`` and the CPU fallback of the dispatcher.

For a row of logits ``x`` (one token), its sampled / target token ``y`` and a temperature ``T``::

    z = x / T,   p = softmax(z)
    logprob        = log p_y
    entropy        = H = -Σ_j p_j log p_j                       (nats)
    sum_p_squared  = Σ_j p_j²
    grad_norm      = g = ||p - onehot(y)||₂ = sqrt(Σ p² - 2 p_y + 1)

``g`` is the norm of ∂(-log p_y)/∂z, the logit-gradient norm of docs/corrpo.md. Rows whose label equals
``ignore_index`` give 0 in all four outputs and no gradient, whatever their logits hold.

Non-finite logits (both backends agree, ``tests/kernels/test_token_stats.py``): ``-inf`` entries (a
masked vocabulary) have p = 0 and contribute nothing — the statistics and their gradient stay finite,
and a label at ``-inf`` has ``logprob = -inf``. A row with a NaN or ``+inf`` logit, or with no finite
logit at all, has no distribution: all four statistics are NaN, and so is its gradient.

Everything is computed in float32 whatever the logits' dtype (bf16 logits are upcast before the
division by ``T``), and is differentiable by autograd in ``logprob`` and ``entropy`` (the oracle of
the kernels' backward; ``gradcheck`` runs it in float64).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Rows per chunk are chosen so one [rows, V] float32 temporary stays near this many elements
# (256 MiB): the CPU fallback must not materialize several [N, V] float32 copies at once.
_CHUNK_ELEMENTS = 1 << 26


class TokenStats(NamedTuple):
    """Per-token statistics of ``softmax(logits / temperature)``; every field is float32 with the
    leading shape of the labels (``[N]`` for 2-D logits)."""

    logprob: torch.Tensor
    """log p_y — log-probability of the label token."""
    entropy: torch.Tensor
    """H = -Σ p log p, in nats."""
    sum_p_squared: torch.Tensor
    """Σ p² (the collision probability)."""
    grad_norm: torch.Tensor
    """g = ||p - onehot(y)||₂ — the logit-gradient norm; no autograd gradient flows through it."""


def _rows_per_chunk(vocab_size: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(vocab_size, 1))


def _stats_of_rows(
    logits: torch.Tensor, labels: torch.Tensor, inv_temperature: torch.Tensor, ignore_index: int
) -> TokenStats:
    """The maths, written the obvious way. logits: [n, V]; labels: [n] int; inv_temperature: [n]."""
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    valid = labels != ignore_index
    z = logits.to(compute_dtype) * inv_temperature.to(compute_dtype).unsqueeze(-1)
    # An ignored row's logits never reach the maths: no gradient flows into it whatever they hold.
    z = torch.where(valid.unsqueeze(-1), z, torch.zeros((), dtype=compute_dtype, device=z.device))
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))

    logprob = log_p.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    # p log p -> 0 where p is exactly 0 (a logit at -inf: log p = -inf). The zero goes into log p,
    # not around the product, so its gradient is 0 rather than 0·(-inf) = NaN; a NaN p (a row
    # holding NaN or +inf, or no finite logit) still makes the entropy NaN.
    entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
    with torch.no_grad():
        sum_p_squared = (p * p).sum(-1)
        one_hot = torch.nn.functional.one_hot(safe_labels, num_classes=z.shape[-1]).to(compute_dtype)
        grad_norm = torch.linalg.vector_norm(p - one_hot, dim=-1)

    zero = torch.zeros((), dtype=compute_dtype, device=logits.device)
    return TokenStats(
        logprob=torch.where(valid, logprob, zero),
        entropy=torch.where(valid, entropy, zero),
        sum_p_squared=torch.where(valid, sum_p_squared, zero),
        grad_norm=torch.where(valid, grad_norm, zero),
    )


def token_stats_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    ignore_index: int = -100,
) -> TokenStats:
    """Reference statistics from materialized logits.

    Args:
        logits: [N, V] float (any float dtype; computed in float32, float64 stays float64).
        labels: [N] int64 — target token per row, or ``ignore_index``.
        inv_temperature: [N] float — 1 / temperature per row.
        ignore_index: label value marking rows to skip (all outputs 0).

    Returns:
        TokenStats of [N] float32 (float64 for float64 logits) tensors.
    """
    num_rows, vocab_size = logits.shape
    step = _rows_per_chunk(vocab_size)
    if num_rows <= step:
        return _stats_of_rows(logits, labels, inv_temperature, ignore_index)
    chunks = [
        _stats_of_rows(logits[i : i + step], labels[i : i + step], inv_temperature[i : i + step], ignore_index)
        for i in range(0, num_rows, step)
    ]
    return TokenStats(*(torch.cat(parts) for parts in zip(*chunks)))


def token_stats_from_hidden_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    inv_temperature: torch.Tensor,
    ignore_index: int = -100,
) -> TokenStats:
    """Reference statistics of ``logits = hidden @ weight.T`` (computed in float32, row chunks).

    Args:
        hidden: [N, H] float — last hidden states.
        weight: [V, H] float — lm_head weight.
        labels, inv_temperature, ignore_index: as in :func:`token_stats_reference`.
    """
    compute_dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    weight_t = weight.to(compute_dtype).t()
    step = _rows_per_chunk(weight.shape[0])
    chunks = [
        _stats_of_rows(
            hidden[i : i + step].to(compute_dtype) @ weight_t,
            labels[i : i + step],
            inv_temperature[i : i + step],
            ignore_index,
        )
        for i in range(0, max(hidden.shape[0], 1), step)
    ]
    return TokenStats(*(torch.cat(parts) for parts in zip(*chunks)))
