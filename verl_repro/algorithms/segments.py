"""Step boundaries and RePro's entropy top-k cut selection (DESIGN §2, "Boundaries", "Selection").

A *cut* ``c`` is a number of response tokens kept: the prefix ``y_1..y_c`` (response indices
``0..c-1``). Candidate cuts sit just after a step-ending token at response index ``t < e``, so
``c = t + 1``; ``e`` is the response index of the first ``</think>``. The ``k`` candidates whose
token *at the cut* (response index ``c``, the first token of the next step) has the highest
entropy are kept, sorted ascending, and the end-of-think cut ``e + 1`` is appended.

Pure torch: the tokenizer is only read through ``decode`` / ``batch_decode`` and
``convert_tokens_to_ids``, so any Hugging Face tokenizer (or a stand-in) works.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch

DEFAULT_BOUNDARY_PATTERNS: tuple[str, ...] = ("\n\n", ".\n", "?\n")
NO_THINK_END_POLICIES: tuple[str, ...] = ("skip", "use_end")

# Decoding a 150k vocabulary takes about a second; every call after the first per tokenizer
# and pattern set is free. Weak keys let tokenizers be garbage-collected.
_BOUNDARY_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], torch.Tensor]]" = weakref.WeakKeyDictionary()


def _decode_vocabulary(tokenizer) -> list[str]:
    vocab_size = len(tokenizer)
    single_ids = [[i] for i in range(vocab_size)]
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode(single_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return [tokenizer.decode(ids) for ids in single_ids]


def boundary_token_ids(tokenizer, patterns: Sequence[str] = DEFAULT_BOUNDARY_PATTERNS) -> torch.Tensor:
    """Every vocabulary id whose decoded text ends with one of ``patterns``.

    Each id is decoded on its own (once per tokenizer; cached), so merged tokens such as
    ``".\\n\\n"`` or ``"?\\n\\n"`` count as boundaries too — matching raw token strings would
    miss them (byte-level BPE spells ``"\\n"`` as ``"Ċ"``).

    Args:
        tokenizer: anything with ``__len__`` (vocabulary size including added tokens) and
            ``decode(list[int]) -> str`` (``batch_decode`` is used when present).
        patterns: non-empty strings; a token ends a step when its text ends with one of them.

    Returns:
        ``[N] long`` — sorted boundary ids (possibly empty).
    """
    patterns = tuple(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"boundary patterns must be non-empty strings, got {patterns!r}")
    try:
        per_tokenizer = _BOUNDARY_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: decode without caching
        per_tokenizer = {}
    if patterns not in per_tokenizer:
        texts = _decode_vocabulary(tokenizer)
        ids = [i for i, text in enumerate(texts) if text.endswith(patterns)]
        per_tokenizer[patterns] = torch.tensor(ids, dtype=torch.long)
    return per_tokenizer[patterns].clone()


def think_end_token_id(tokenizer, token: str = "</think>") -> int:
    """The id of the end-of-thinking token, looked up in ``tokenizer`` (never hard-coded).

    Raises ``ValueError`` naming ``repro.think_end_token`` when ``token`` is not a single token
    of the vocabulary (a model without a thinking block cannot use RePro).
    """
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (unk is not None and token_id == unk) or token_id < 0:
        raise ValueError(f"repro.think_end_token={token!r} is not a single token of this tokenizer")
    if tokenizer.decode([token_id]) != token:
        raise ValueError(f"repro.think_end_token={token!r} does not decode back to itself (id {token_id})")
    return int(token_id)


def _boundary_lookup(boundary_ids: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: token is a boundary. A [V] lookup table beats ``isin`` on large batches."""
    boundary_ids = boundary_ids.to(device=response_ids.device, dtype=torch.long).reshape(-1)
    if boundary_ids.numel() == 0 or response_ids.numel() == 0:
        return torch.zeros(response_ids.shape, dtype=torch.bool, device=response_ids.device)
    if int(boundary_ids.min()) < 0:
        raise ValueError("boundary_ids must be non-negative token ids")
    # Ids outside the table (negative padding ids, ids beyond every boundary) are never boundaries.
    table_size = int(boundary_ids.max()) + 1
    table = torch.zeros(table_size + 1, dtype=torch.bool, device=response_ids.device)
    table[boundary_ids] = True
    clamped = torch.where((response_ids >= 0) & (response_ids < table_size), response_ids, table_size)
    return table[clamped]


def select_cuts(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    boundary_ids: torch.Tensor,
    think_end_id: int,
    num_segments: int,
    *,
    no_think_end: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose RePro's cuts for a padded batch of responses.

    Args:
        response_ids: ``[B, T] long`` — response token ids, padded.
        response_mask: ``[B, T]`` bool/int/float — 1 on real response tokens.
        entropy: ``[B, T] float`` (any float dtype) — entropy of the distribution each response
            token was sampled from (veRL's old-log-prob pass). NaN / ±inf rank lowest.
        boundary_ids: ``[N] long`` — from :func:`boundary_token_ids`.
        think_end_id: id of ``</think>`` (:func:`think_end_token_id`).
        num_segments: ``k`` (> 0) — candidate cuts kept per response; fewer candidates: all kept.
        no_think_end: response without ``</think>``: ``"skip"`` gives it no cuts (outcome
            advantage only); ``"use_end"`` treats its last real token as ``e``.

    Returns:
        cuts: ``[B, K] long`` — cut positions (prefix lengths), ascending, valid entries first;
            the last valid entry of a row is ``e + 1``. ``K = max`` cuts in the batch (at least 1).
            Padding entries are 0.
        cut_mask: ``[B, K] bool`` — valid entries (a prefix of each row). A row is all False when
            it has no real tokens, or has no ``</think>`` under ``"skip"``.
        has_think_end: ``[B] bool`` — a real ``</think>`` token was found (for metrics; rows
            without one still get cuts under ``"use_end"``).

    Candidates are real step-ending tokens at response index ``t < e`` (cut ``c = t + 1 <= e``),
    ranked by ``entropy[c]``; equal entropies prefer the earlier cut, so the result is
    deterministic. Only whole-batch tensor ops, no loop over rows or tokens.
    """
    if response_ids.dim() != 2 or response_mask.shape != response_ids.shape or entropy.shape != response_ids.shape:
        raise ValueError(
            "response_ids, response_mask and entropy must share one [B, T] shape, got "
            f"{tuple(response_ids.shape)}, {tuple(response_mask.shape)}, {tuple(entropy.shape)}"
        )
    if not isinstance(num_segments, int) or num_segments <= 0:
        raise ValueError(f"repro.num_segments must be a positive int, got {num_segments!r}")
    if no_think_end not in NO_THINK_END_POLICIES:
        raise ValueError(f"repro.no_think_end must be one of {NO_THINK_END_POLICIES}, got {no_think_end!r}")
    batch, length = response_ids.shape
    device = response_ids.device
    if batch == 0 or length == 0:
        no_think_end_found = torch.zeros(batch, dtype=torch.bool, device=device)
        return (
            torch.zeros(batch, 1, dtype=torch.long, device=device),
            torch.zeros(batch, 1, dtype=torch.bool, device=device),
            no_think_end_found,
        )
    real = response_mask.bool()
    positions = torch.arange(length, device=device)

    is_think_end = (response_ids == think_end_id) & real
    has_think_end = is_think_end.any(dim=1)
    # argmax returns the first maximal index, i.e. the first </think>.
    think_end = is_think_end.to(torch.uint8).argmax(dim=1)
    has_tokens = real.any(dim=1)
    if no_think_end == "use_end":
        last_real = torch.where(real, positions, -1).amax(dim=1)
        think_end = torch.where(has_think_end, think_end, last_real)
        has_end = has_tokens
    else:
        has_end = has_think_end

    candidate = _boundary_lookup(boundary_ids, response_ids) & real
    candidate &= positions < think_end.unsqueeze(1)
    candidate &= has_end.unsqueeze(1)

    # Entropy of the token at cut c = t + 1, aligned to the boundary position t. t < e <= T-1,
    # so t + 1 is always inside the row for a candidate.
    entropy_at_cut = torch.empty_like(entropy)
    entropy_at_cut[:, :-1] = entropy[:, 1:]
    entropy_at_cut[:, -1] = 0
    finite_min = torch.finfo(entropy.dtype).min
    entropy_at_cut = torch.nan_to_num(entropy_at_cut, nan=finite_min, posinf=torch.finfo(entropy.dtype).max, neginf=finite_min)
    ranking_key = entropy_at_cut.masked_fill(~candidate, float("-inf"))

    k = min(num_segments, length)
    threshold = ranking_key.topk(k, dim=1, sorted=True).values[:, k - 1 : k]
    above = ranking_key > threshold
    # Ties at the k-th value: keep the earliest ones until k are chosen. (A row with fewer than
    # k candidates has threshold -inf, so all its candidates are above it.)
    at_threshold = candidate & (ranking_key == threshold)
    room = k - above.sum(dim=1, keepdim=True)
    selected = above | (at_threshold & (at_threshold.cumsum(dim=1) <= room))
    num_selected = selected.sum(dim=1)

    num_cuts = num_selected + has_end.long()
    width = max(int(num_cuts.max()), 1)
    cuts = torch.zeros(batch, width, dtype=torch.long, device=device)
    # nonzero walks rows in order and positions ascending, so a hit's rank within its row is its
    # flat index minus the number of hits in earlier rows.
    rows, boundary_positions = selected.nonzero(as_tuple=True)
    earlier_hits = torch.cumsum(num_selected, dim=0) - num_selected
    ranks = torch.arange(rows.numel(), device=device) - earlier_hits[rows]
    cuts[rows, ranks] = boundary_positions + 1
    # Rows without an end have no candidates either: their slot 0 receives a harmless 0.
    end_cut = torch.where(has_end, think_end + 1, 0)
    cuts.scatter_(1, num_selected.unsqueeze(1), end_cut.unsqueeze(1))
    cut_mask = torch.arange(width, device=device) < num_cuts.unsqueeze(1)
    return cuts, cut_mask, has_think_end
