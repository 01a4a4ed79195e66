"""Step boundaries and RePro's entropy top-k cut selection (docs/repro.md, "RePro maths").

A *cut* ``c`` is a number of response tokens kept: the prefix ``y_1..y_c`` (response indices
``0..c-1``). Candidate cuts sit just after a step-ending token at response index ``t``, so
``c = t + 1``, and strictly before ``e`` (``c < e``), the response index of the first ``</think>``. The ``k`` candidates whose
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
    """[B, T] bool: token is a boundary, read from a [V] lookup table."""
    boundary_ids = boundary_ids.to(device=response_ids.device, dtype=torch.long).reshape(-1)
    if boundary_ids.numel() == 0:
        return torch.zeros(response_ids.shape, dtype=torch.bool, device=response_ids.device)
    if int(boundary_ids.min()) < 0:
        raise ValueError("boundary_ids must be non-negative token ids")
    lowest_id, highest_id = (int(v) for v in response_ids.aminmax())
    table = torch.zeros(max(highest_id, int(boundary_ids.max())) + 1, dtype=torch.bool, device=response_ids.device)
    table[boundary_ids] = True
    # index_select on the flat ids is several times faster than advanced indexing or isin.
    if lowest_id < 0:  # negative padding ids are never boundaries
        flat = table.index_select(0, response_ids.clamp_min(0).reshape(-1)).view(response_ids.shape)
        return flat & (response_ids >= 0)
    return table.index_select(0, response_ids.reshape(-1)).view(response_ids.shape)


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

    Candidates are real step-ending tokens at response index ``t < e - 1`` (cut ``c = t + 1 < e``;
    ``select_cuts`` never returns ``c = e``),
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
    positions = torch.arange(length, device=device)

    # Large [B, T] temporaries cost more in page faults than in arithmetic: one bool copy of the
    # (int64, in veRL) mask, then in-place updates of bool tensors only.
    real = response_mask.bool()
    is_think_end = response_ids == think_end_id
    is_think_end &= real
    # argmax returns the first maximal index, i.e. the first </think> (0 when there is none).
    think_end = is_think_end.view(torch.uint8).argmax(dim=1)
    has_think_end = is_think_end.gather(1, think_end.unsqueeze(1)).squeeze(1)
    if no_think_end == "use_end":
        last_real = torch.where(real, positions, -1).amax(dim=1)
        think_end = torch.where(has_think_end, think_end, last_real)
        has_end = last_real >= 0
    else:
        has_end = has_think_end

    # A candidate is a real boundary token at t < e - 1, so that its cut c = t + 1 is strictly
    # before e: a boundary right before </think> would score a near-duplicate of the e + 1 cut
    # (the authors' code keeps cuts < e too). Rows without an end compare against 0: none.
    candidate = _boundary_lookup(boundary_ids, response_ids)
    candidate &= real
    candidate &= positions < torch.where(has_end, think_end - 1, 0).unsqueeze(1)

    # Candidates are sparse (one per step, not per token): rank them in a compact [B, C] table
    # instead of sorting whole rows.
    rows, boundary_positions = candidate.nonzero(as_tuple=True)
    candidates_per_row = torch.bincount(rows, minlength=batch)
    first_of_row = torch.cumsum(candidates_per_row, dim=0) - candidates_per_row
    slots = torch.arange(rows.numel(), device=device) - first_of_row[rows]
    table_width = max(int(candidates_per_row.max()), 1)
    # Entropy of the token at cut c = t + 1 (t < e <= T - 1, so c is inside the row).
    rank_dtype = torch.float64 if entropy.dtype == torch.float64 else torch.float32
    entropy_at_cut = entropy[rows, boundary_positions + 1].to(rank_dtype)
    entropy_at_cut = torch.where(torch.isfinite(entropy_at_cut), entropy_at_cut, torch.finfo(rank_dtype).min)
    ranking_key = torch.full((batch, table_width), float("-inf"), dtype=rank_dtype, device=device)
    ranking_key[rows, slots] = entropy_at_cut
    cut_table = torch.full((batch, table_width), length + 1, dtype=torch.long, device=device)
    cut_table[rows, slots] = boundary_positions + 1
    # Stable descending sort: equal entropies keep position order, so the earlier cut wins.
    order = ranking_key.sort(dim=1, descending=True, stable=True).indices[:, :num_segments]
    chosen = cut_table.gather(1, order).sort(dim=1).values
    num_selected = candidates_per_row.clamp(max=num_segments)

    num_cuts = num_selected + has_end.long()
    width = max(int(num_cuts.max()), 1)
    cuts = torch.zeros(batch, width, dtype=torch.long, device=device)
    cuts[:, : chosen.shape[1]] = chosen  # chosen is min(k, most candidates) wide: <= width - 1
    # Rows without an end have no candidates either: their slot 0 receives a harmless 0.
    end_cut = torch.where(has_end, think_end + 1, 0)
    cuts.scatter_(1, num_selected.unsqueeze(1), end_cut.unsqueeze(1))
    cut_mask = torch.arange(width, device=device) < num_cuts.unsqueeze(1)
    cuts = cuts.masked_fill(~cut_mask, 0)
    return cuts, cut_mask, has_think_end
