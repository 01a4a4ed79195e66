"""Per-response correlation between per-token entropy and logit-gradient norm (CorR-PO, docs/corrpo.md, "Definition (ours)").

Everything works on padded ``[B, T]`` batches and returns one value per row; a row's statistic uses
only the tokens where its mask is true. Spearman is the Pearson correlation of average ranks (ties
share the mean of the ranks they span, as ``scipy.stats.spearmanr`` does); the ranks come from one
batched sort, with no Python loop over rows or tokens.

A row whose correlation is undefined — fewer than ``min_tokens`` usable tokens, or a constant
``x`` or ``y`` over its tokens — gets ρ = 0 and is flagged, so callers can count it. Non-finite
values (NaN, ±inf) are not usable tokens: they are dropped from the mask and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CORRELATION_KINDS: tuple[str, ...] = ("spearman", "pearson")
TOKEN_SCOPES: tuple[str, ...] = ("thinking", "all")
CORRELATION_UNITS: tuple[str, ...] = ("tokens", "unique_tokens")


@dataclass
class CorrelationResult:
    """Per-row correlation and why a row was skipped. All tensors are ``[B]``."""

    rho: torch.Tensor
    """float — the correlation in [-1, 1]; 0 where ``defined`` is False."""
    num_tokens: torch.Tensor
    """long — usable tokens per row (masked in and finite in both inputs)."""
    defined: torch.Tensor
    """bool — at least ``min_tokens`` usable tokens and neither input constant over them."""
    too_few_tokens: torch.Tensor
    """bool — fewer than ``min_tokens`` usable tokens."""
    zero_variance: torch.Tensor
    """bool — enough tokens, but ``x`` or ``y`` is constant over them."""
    nonfinite_tokens: torch.Tensor
    """long — masked-in tokens dropped because ``x`` or ``y`` was NaN or ±inf."""

    @property
    def skipped(self) -> torch.Tensor:
        """bool ``[B]`` — rows whose ρ was set to 0 (``~defined``)."""
        return ~self.defined


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # float32 at least: bf16 sums over thousands of tokens lose the correlation's low digits.
    dtype = torch.float32
    for tensor in tensors:
        if tensor.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def _check_shapes(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
    if x.dim() != 2 or y.shape != x.shape or mask.shape != x.shape:
        raise ValueError(
            f"x, y and mask must share one [B, T] shape, got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(mask.shape)}"
        )


def average_ranks(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ranks within each row, ties averaged, counting only masked-in entries.

    Args:
        values: ``[B, T]`` float — finite wherever ``mask`` is true.
        mask: ``[B, T]`` bool — entries that take part in the ranking.

    Returns:
        ``[B, T]`` float (``values``' dtype, at least float32) — 1-based ranks among the masked-in
        entries of the row (a tie group spanning ranks ``a..b`` gets ``(a + b) / 2``); 0 where masked out.
    """
    dtype = _compute_dtype(values)
    batch, length = values.shape
    if values.numel() == 0:
        return torch.zeros(batch, length, dtype=dtype, device=values.device)
    # Masked-out entries sort last as +inf; the caller guarantees masked-in values are finite, so
    # they never tie with the filler and get ranks 1..n.
    keyed = values.to(dtype).masked_fill(~mask, float("inf"))
    sorted_values, order = keyed.sort(dim=1, stable=True)
    positions = torch.arange(length, device=values.device).expand(batch, length)
    starts_run = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends_run = torch.ones_like(sorted_values, dtype=torch.bool)
    ends_run[:, :-1] = starts_run[:, 1:]
    # First position of each tie run, carried forward; last position, carried backward.
    run_first = torch.where(starts_run, positions, 0).cummax(dim=1).values
    run_last = torch.where(ends_run, positions, length).flip(1).cummin(dim=1).values.flip(1)
    sorted_ranks = (run_first + run_last).to(dtype) / 2 + 1
    ranks = torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)
    return ranks.masked_fill(~mask, 0)


def _unit_scaled(values: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest magnitude (rows of zeros unchanged): entries in [-1, 1]."""
    largest = values.abs().amax(dim=1, keepdim=True)
    return values / torch.where(largest > 0, largest, torch.ones_like(largest))


def _pearson_of_usable(x: torch.Tensor, y: torch.Tensor, usable: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    # The sums run in float64 and ρ is rounded back to the inputs' dtype: a perfectly monotone row
    # then gives exactly ±1. Float32 sums leave ±(1 − 3e-8), which GRPO's (r − mean) / (std + 1e-6)
    # turns into a visible advantage inside a group whose rewards should tie. [B, T] is small.
    result_dtype = x.dtype
    x, y = x.double(), y.double()
    weights = usable.to(x.dtype)
    count = num_tokens.clamp(min=1).to(x.dtype).unsqueeze(1)

    def standardized(values: torch.Tensor) -> torch.Tensor:
        # ρ does not change when a row is scaled, so each row is brought into [-1, 1] before and
        # after centring (two passes, for long rows with large offsets): no sum or square can
        # overflow (1e20² is inf in float32) or underflow (1e-25² is 0), whatever the units.
        values = _unit_scaled(values * weights)
        return _unit_scaled((values - values.sum(1, keepdim=True) / count) * weights)

    x_centred, y_centred = standardized(x), standardized(y)
    covariance = (x_centred * y_centred).sum(1)
    scale = torch.sqrt((x_centred * x_centred).sum(1) * (y_centred * y_centred).sum(1))
    rho = covariance / torch.where(scale > 0, scale, torch.ones_like(scale))
    return rho.clamp(-1.0, 1.0).to(result_dtype)


def _is_constant(values: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    # Exact test (max == min) rather than variance == 0: centring a constant row in floating point
    # can leave a tiny non-zero variance and a meaningless ρ of ±1.
    high = values.masked_fill(~usable, float("-inf")).amax(dim=1)
    low = values.masked_fill(~usable, float("inf")).amin(dim=1)
    return high <= low


def masked_correlation(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "spearman",
    min_tokens: int = 2,
) -> CorrelationResult:
    """Row-wise correlation of ``x`` and ``y`` over the tokens where ``mask`` is true.

    Args:
        x, y: ``[B, T]`` float (any float dtype) — e.g. entropy ``H_t`` and logit-gradient norm ``g_t``.
        mask: ``[B, T]`` bool / int / float — non-zero on tokens that enter the statistic.
        kind: ``"spearman"`` (Pearson of average ranks) or ``"pearson"``.
        min_tokens: rows with fewer usable tokens get ρ = 0 and ``too_few_tokens`` (at least 2).

    Returns:
        :class:`CorrelationResult`; ``rho`` is float32 (float64 when an input is float64).
    """
    _check_shapes(x, y, mask)
    if kind not in CORRELATION_KINDS:
        raise ValueError(f"correlation kind must be one of {CORRELATION_KINDS}, got {kind!r}")
    if min_tokens < 2:
        raise ValueError(f"min_tokens must be >= 2 (a correlation needs two points), got {min_tokens!r}")
    dtype = _compute_dtype(x, y)
    x = x.detach().to(dtype)
    y = y.detach().to(dtype)
    in_mask = mask.bool()
    finite = torch.isfinite(x) & torch.isfinite(y)
    usable = in_mask & finite
    nonfinite_tokens = (in_mask & ~finite).sum(1)
    # Filler for unusable entries: keeps NaN out of sums even though their weight is 0.
    x = torch.where(usable, x, torch.zeros_like(x))
    y = torch.where(usable, y, torch.zeros_like(y))
    num_tokens = usable.sum(1)
    too_few_tokens = num_tokens < min_tokens
    zero_variance = ~too_few_tokens & (_is_constant(x, usable) | _is_constant(y, usable))
    defined = ~too_few_tokens & ~zero_variance

    if kind == "spearman":
        x, y = average_ranks(x, usable), average_ranks(y, usable)
    rho = _pearson_of_usable(x, y, usable, num_tokens)
    rho = torch.where(defined, rho, torch.zeros_like(rho))
    return CorrelationResult(
        rho=rho,
        num_tokens=num_tokens,
        defined=defined,
        too_few_tokens=too_few_tokens,
        zero_variance=zero_variance,
        nonfinite_tokens=nonfinite_tokens,
    )


def masked_spearman(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spearman ρ per row over masked tokens (average ranks for ties): ``[B, T]`` → ``[B]``.

    Rows with fewer than 2 usable tokens or a constant input give 0; see :func:`masked_correlation`
    for the flags and for ``min_tokens``.
    """
    return masked_correlation(x, y, mask, kind="spearman").rho


def masked_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson r per row over masked tokens: ``[B, T]`` → ``[B]``; undefined rows give 0."""
    return masked_correlation(x, y, mask, kind="pearson").rho


def scope_mask(
    response_mask: torch.Tensor,
    scope: str,
    responses: torch.Tensor | None = None,
    think_end_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Response tokens that enter ρ.

    Args:
        response_mask: ``[B, T]`` bool / int / float — 1 on real response tokens.
        scope: ``"all"`` (every real token) or ``"thinking"`` (real tokens strictly before the
            first ``</think>``; a response with no ``</think>`` — truncated mid-thought — is thinking
            throughout, so all its tokens count).
        responses: ``[B, T]`` long — response token ids; required for ``"thinking"``.
        think_end_id: id of ``</think>``; required for ``"thinking"``.

    Returns:
        ``(mask [B, T] bool, has_think_end [B] bool)``; ``has_think_end`` is all False for ``"all"``
        when no ids are given.
    """
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"repro.corr.scope must be one of {TOKEN_SCOPES}, got {scope!r}")
    real = response_mask.bool()
    if responses is None or think_end_id is None:
        if scope == "thinking":
            raise ValueError("repro.corr.scope='thinking' needs the response ids and the </think> token id")
        return real, torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    if responses.shape != real.shape:
        raise ValueError(f"responses {tuple(responses.shape)} and response_mask {tuple(real.shape)} differ in shape")
    is_think_end = (responses == think_end_id) & real
    has_think_end = is_think_end.any(dim=1)
    if scope == "all":
        return real, has_think_end
    # Tokens after (and including) the first </think> have a non-zero running count.
    before_think_end = is_think_end.cumsum(dim=1) == 0
    return real & before_think_end, has_think_end


def unique_token_means(
    token_ids: torch.Tensor, mask: torch.Tensor, *values: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Per row, the mean of each of ``values`` over the masked tokens of each distinct token id.

    Args:
        token_ids: ``[B, T]`` long — token ids.
        mask: ``[B, T]`` bool — tokens that take part.
        values: ``[B, T]`` float tensors.

    Returns:
        ``(means, unique_mask)``: each mean ``[B, U]`` (``U`` the largest number of distinct ids in
        a row; ids in ascending order), and ``unique_mask [B, U]`` bool, True on real entries.
    """
    batch, _ = token_ids.shape
    device = token_ids.device
    width = int(token_ids.max().clamp(min=0)) + 1 if token_ids.numel() else 1
    rows = torch.arange(batch, device=device).unsqueeze(1).expand_as(token_ids)
    keys = (rows * width + token_ids)[mask]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)  # sorted: grouped by row
    counts = torch.bincount(inverse, minlength=unique_keys.numel()).to(values[0].dtype if values else torch.float32)
    unique_rows = unique_keys // width
    per_row = torch.bincount(unique_rows, minlength=batch)
    starts = per_row.cumsum(0) - per_row
    columns = torch.arange(unique_keys.numel(), device=device) - starts[unique_rows]
    size = int(per_row.max()) if batch and unique_keys.numel() else 0
    unique_mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
    unique_mask[unique_rows, columns] = True
    means = []
    for value in values:
        sums = torch.zeros(unique_keys.numel(), dtype=value.dtype, device=device).index_add_(0, inverse, value[mask])
        out = torch.zeros(batch, size, dtype=value.dtype, device=device)
        out[unique_rows, columns] = sums / counts.to(value.dtype)
        means.append(out)
    return tuple(means), unique_mask


def response_correlation(
    entropy: torch.Tensor,
    logit_grad_norm: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    kind: str = "spearman",
    scope: str = "thinking",
    min_tokens: int = 8,
    responses: torch.Tensor | None = None,
    think_end_id: int | None = None,
    unit: str = "tokens",
) -> CorrelationResult:
    """CorR-PO's ``ρ_i = corr(H, s)`` over each response's in-scope tokens.

    Args:
        entropy: ``[B, T]`` float — per-token entropy ``H_t``, padded; masked by ``response_mask``.
        logit_grad_norm: ``[B, T]`` float — per-token gradient strength ``s_t`` (``repro.corr.signal``).
        response_mask: ``[B, T]`` — 1 on real response tokens.
        kind, scope, min_tokens, unit: ``repro.corr.kind`` / ``.scope`` / ``.min_tokens`` / ``.unit``;
            ``unit="unique_tokens"`` correlates per-token-id means (``num_tokens`` then counts ids).
        responses, think_end_id: response ids and ``</think>`` id (needed for scope ``thinking`` and
            for ``unit="unique_tokens"``).
    """
    if entropy.shape != response_mask.shape or logit_grad_norm.shape != response_mask.shape:
        raise ValueError(
            "entropy, logit_grad_norm and response_mask must share one [B, T] shape, got "
            f"{tuple(entropy.shape)}, {tuple(logit_grad_norm.shape)}, {tuple(response_mask.shape)}"
        )
    if unit not in CORRELATION_UNITS:
        raise ValueError(f"repro.corr.unit must be one of {CORRELATION_UNITS}, got {unit!r}")
    mask, _ = scope_mask(response_mask, scope, responses, think_end_id)
    if unit == "tokens":
        return masked_correlation(entropy, logit_grad_norm, mask, kind=kind, min_tokens=min_tokens)
    if responses is None:
        raise ValueError("repro.corr.unit='unique_tokens' needs the response ids")
    finite = torch.isfinite(entropy) & torch.isfinite(logit_grad_norm)
    (entropy_means, strength_means), unique_mask = unique_token_means(responses, mask & finite, entropy, logit_grad_norm)
    result = masked_correlation(entropy_means, strength_means, unique_mask, kind=kind, min_tokens=min_tokens)
    result.nonfinite_tokens = result.nonfinite_tokens + (mask & ~finite).sum(1)
    return result
