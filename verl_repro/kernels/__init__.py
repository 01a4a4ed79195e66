"""Per-token softmax statistics — log p_y, entropy, Σp² and the logit-gradient norm — with one
dispatcher over a fused Triton kernel and a plain-torch reference (docs/kernel.md).

Backends (``backend=``):

* ``"auto"``   — the Triton kernels for CUDA tensors, the torch reference for anything else.
* ``"triton"`` — the Triton kernels; on CPU tensors this needs the Triton interpreter
  (``TRITON_INTERPRET=1`` set before triton is first imported).
* ``"torch"``  — the torch reference (``reference.py``), everywhere.

The Triton module is imported lazily: a CPU-only process that never asks for it never imports
triton.
"""

from __future__ import annotations

import math

import torch

from verl_repro.kernels.reference import (
    TokenStats,
    token_stats_from_hidden_reference,
    token_stats_reference,
)

BACKENDS = ("auto", "triton", "torch")
IGNORE_INDEX = -100


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend (``"triton"`` or ``"torch"``) for tensors on ``device``.

    Raises:
        ValueError: ``backend`` is not one of ``auto|triton|torch``.
        RuntimeError: ``backend="triton"`` cannot run here (no triton, or CPU tensors without the
            Triton interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {'|'.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if not _triton_available():
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    if device.type != "cuda":
        from verl_repro.kernels import token_stats

        if not token_stats.is_interpreted():
            raise RuntimeError(
                f"backend='triton' on {device.type} tensors needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 before triton is first imported (or use backend='auto'/'torch')"
            )
    return "triton"


def _check_labels(labels: torch.Tensor, leading_shape: torch.Size, vocab_size: int, ignore_index: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != leading_shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the leading shape {tuple(leading_shape)}")
    # One host sync: an out-of-vocabulary label would otherwise read outside the row.
    bad = ((labels < 0) & (labels != ignore_index)) | (labels >= vocab_size)
    if labels.numel() and bool(bad.any()):
        first = labels[bad].flatten()[0].item()
        raise ValueError(
            f"labels must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}; found {first}"
        )


def check_temperature(temperature, name: str = "temperature") -> float:
    """``temperature`` as a float when it is a finite number > 0; otherwise ``ValueError`` naming ``name``.

    The one check of every place that divides logits by a temperature (the kernels, RePro's J
    scoring, sampling in the analysis tools): 0 and negative values break or flip the
    distribution (``score_j`` would return plausible J of the reversed one), ``inf`` flattens it
    to uniform and NaN poisons it.
    """
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")
    return value


def _inverse_temperature(temperature, leading_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """[N] float32 of 1/T from a finite float > 0 or a tensor broadcastable to the labels' shape.

    ``inf`` would silently flatten every distribution to uniform and NaN would poison it: both are
    refused, like 0 and negative values (which flip or break the distribution)."""
    num_rows = leading_shape.numel()
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device=device, dtype=torch.float32)
        if temperature.numel() == 1:
            temperature = temperature.reshape(()).expand(leading_shape)
        try:
            temperature = temperature.expand(leading_shape)
        except RuntimeError as error:
            raise ValueError(
                f"temperature of shape {tuple(temperature.shape)} does not broadcast to {tuple(leading_shape)}"
            ) from error
        bad = ~(torch.isfinite(temperature) & (temperature > 0))
        if temperature.numel() and bool(bad.any()):  # one host sync, like the label check
            check_temperature(temperature[bad].flatten()[0].item(), "every temperature")
        return (1.0 / temperature).reshape(num_rows).contiguous()
    temperature = check_temperature(temperature)
    return torch.full((num_rows,), 1.0 / temperature, dtype=torch.float32, device=device)


def _reshape_stats(stats: TokenStats, leading_shape: torch.Size) -> TokenStats:
    return TokenStats(*(field.reshape(leading_shape) for field in stats))


def token_stats_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    backend: str = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> TokenStats:
    """Per-token statistics of ``softmax(logits / temperature)`` in one pass over the vocabulary.

    Args:
        logits: [..., V] bf16/fp16/fp32 — e.g. [N, V] packed tokens or [B, T, V].
        labels: [...] int — the token whose log-probability is wanted (the next token), or
            ``ignore_index`` to skip the row (all four outputs 0 there).
        temperature: a finite float > 0, or a float tensor broadcastable to ``labels.shape`` (per token).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` (module docstring).
        ignore_index: label value that marks skipped rows.

    Returns:
        TokenStats(logprob, entropy, sum_p_squared, grad_norm), each float32 with ``labels.shape``.
        ``logprob`` and ``entropy`` carry autograd gradients into ``logits``.
    """
    if logits.dim() < 1 or not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating tensor [..., V], got {logits.dtype} of shape {tuple(logits.shape)}")
    leading_shape = logits.shape[:-1]
    vocab_size = logits.shape[-1]
    _check_labels(labels, leading_shape, vocab_size, ignore_index)
    inv_temperature = _inverse_temperature(temperature, leading_shape, logits.device)
    flat_logits = logits.reshape(-1, vocab_size)
    flat_labels = labels.reshape(-1).to(torch.int64)
    if resolve_backend(backend, logits.device) == "torch" or flat_logits.dtype == torch.float64:
        stats = token_stats_reference(flat_logits, flat_labels, inv_temperature, ignore_index)
    else:
        from verl_repro.kernels.token_stats import token_stats_logits_triton

        if flat_logits.stride(-1) != 1:
            flat_logits = flat_logits.contiguous()
        stats = token_stats_logits_triton(flat_logits, flat_labels.contiguous(), inv_temperature, ignore_index)
    return _reshape_stats(stats, leading_shape)


def token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    backend: str = "auto",
    ignore_index: int = IGNORE_INDEX,
) -> TokenStats:
    """The statistics of ``softmax(hidden @ weight.T / temperature)`` without materializing the
    ``[N, V]`` logits (Triton backend; the torch reference works through row chunks).

    Args:
        hidden: [..., H] float — last hidden states.
        weight: [V, H] float — the lm_head weight. Under ``torch.autocast`` both are cast to the
            autocast dtype, as the lm_head matmul would be; otherwise to their promoted dtype.
        labels, temperature, backend, ignore_index: as in :func:`token_stats_from_logits`.

    Returns:
        TokenStats of float32 tensors with ``labels.shape``; ``logprob`` and ``entropy`` carry
        autograd gradients into ``hidden`` and ``weight``.
    """
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = hidden.shape[-1]; got hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    leading_shape = hidden.shape[:-1]
    vocab_size = weight.shape[0]
    _check_labels(labels, leading_shape, vocab_size, ignore_index)
    inv_temperature = _inverse_temperature(temperature, leading_shape, hidden.device)
    if torch.is_autocast_enabled(hidden.device.type):
        compute_dtype = torch.get_autocast_dtype(hidden.device.type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1]).to(compute_dtype)
    weight = weight.to(compute_dtype)
    flat_labels = labels.reshape(-1).to(torch.int64)
    if resolve_backend(backend, hidden.device) == "torch" or compute_dtype == torch.float64:
        stats = token_stats_from_hidden_reference(flat_hidden, weight, flat_labels, inv_temperature, ignore_index)
    else:
        from verl_repro.kernels.token_stats import token_stats_hidden_triton

        with torch.autocast(hidden.device.type, enabled=False):
            stats = token_stats_hidden_triton(
                flat_hidden.contiguous(), weight.contiguous(), flat_labels.contiguous(), inv_temperature, ignore_index
            )
    return _reshape_stats(stats, leading_shape)


__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "TokenStats",
    "check_temperature",
    "resolve_backend",
    "token_stats_from_hidden",
    "token_stats_from_logits",
]
