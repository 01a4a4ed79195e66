"""Step boundaries and RePro's entropy top-k cut selection (docs/repro.md, "RePro maths").

A token ends a step where the decoded response text up to and including it ends with one of
``repro.boundary_patterns`` (:class:`StepBoundaries`, per-vocabulary tables read with gathers over
``[B, T]``; :func:`verl_repro.algorithms.reference.step_ends_by_decoding` is the same rule written
with decoded text, its oracle).
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
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_BOUNDARY_PATTERNS: tuple[str, ...] = ("\n\n", ".\n", "?\n")
NO_THINK_END_POLICIES: tuple[str, ...] = ("skip", "use_end")

# Decoding a 150k vocabulary twice takes a few seconds; every call after the first per tokenizer
# and pattern set is free. Weak keys let tokenizers be garbage-collected.
_BOUNDARY_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], StepBoundaries]]" = weakref.WeakKeyDictionary()


_BITS_PER_WORD = 31  # int32 words: half the memory traffic of int64 over [B, T]


@dataclass(frozen=True)
class StepBoundaries:
    """Per-vocabulary tables that find step ends in the decoded text of token sequences.

    A response token ``t`` ends a step when the decoded response text up to and including ``t``
    ends with one of ``patterns``, however the tokenizer split those characters (``".\\n\\n"`` as
    one token, ``"."`` + ``"\\n"``, ``"\\n"`` + ``"\\n"``), and the next token that writes text
    does not just extend the same run of newlines into another match: a run of newlines gives one
    step end, at its last token. Tokens that write no text never end a step.

    The text is never decoded per row. The decoded text of a sequence ends with a string ``q``
    either because the last token's own text ends with ``q``, or because the token's text is a
    proper suffix of ``q`` and the text before it ends with the rest of ``q`` — a shorter string
    of the same kind. So the tables hold, for every *pattern head* ``q`` (every non-empty prefix of
    a pattern, shortest first), whether each token's text ends with ``q`` and which shorter head
    the text before the token must end with; :meth:`mark` resolves the heads in order of length.

    Each token's facts are bits of one ``int32`` word (or a few, for long pattern sets): a batch is
    read from the vocabulary with one gather per word, and only the few tokens with an ending bit
    (one or two per line of text) are kept, in a compact list where "the token before" is found by
    a sorted search. No loop runs over rows or tokens.

    Attributes:
        patterns: the step-ending strings.
        heads: every non-empty prefix of a pattern, shortest first.
        completions: per head, the ``(shorter head, bit)`` pairs: a token with that bit completes
            the head when the text before it ends with the shorter head.
        token_bits: ``[words, V] int32`` — bit ``q`` (head index): the token's own text ends with
            head ``q``; then the ``completions`` bits; then :attr:`writes_bit` and
            :attr:`newlines_only_bit`.
    """

    patterns: tuple[str, ...]
    heads: tuple[str, ...]
    completions: tuple[tuple[tuple[int, int], ...], ...]
    token_bits: torch.Tensor

    @property
    def writes_bit(self) -> int:
        """Bit: the token's text is not empty."""
        return len(self.heads) + sum(len(c) for c in self.completions)

    @property
    def newlines_only_bit(self) -> int:
        """Bit: the token's text is one or more ``"\\n"`` and nothing else."""
        return self.writes_bit + 1

    @classmethod
    def from_texts(cls, texts: Sequence[str], patterns: Sequence[str] = DEFAULT_BOUNDARY_PATTERNS) -> "StepBoundaries":
        """Tables from each token id's text in context (``texts[i]`` for id ``i``)."""
        patterns = _check_patterns(patterns)
        heads = tuple(sorted({p[:n] for p in patterns for n in range(1, len(p) + 1)}, key=lambda h: (len(h), h)))
        head_index = {head: q for q, head in enumerate(heads)}
        owns: list[list[int]] = [[] for _ in heads]
        completes: dict[tuple[int, int], list[int]] = {}
        # Only a token whose last character ends some head can take part in a match: checking
        # those few is what keeps a 150k vocabulary fast.
        last_characters = {head[-1] for head in heads}
        for token_id, text in enumerate(texts):
            if not text or text[-1] not in last_characters:
                continue
            for q, head in enumerate(heads):
                if text.endswith(head):
                    owns[q].append(token_id)
                elif head.endswith(text):  # text is a proper suffix of head: the rest comes before
                    completes.setdefault((q, head_index[head[: len(head) - len(text)]]), []).append(token_id)
        completions: list[list[tuple[int, int]]] = [[] for _ in heads]
        for number, (q, shorter) in enumerate(sorted(completes), start=len(heads)):
            completions[q].append((shorter, number))
        bit_ids = owns + [completes[key] for key in sorted(completes)]
        bit_ids.append([i for i, text in enumerate(texts) if text])
        bit_ids.append([i for i, text in enumerate(texts) if text and not text.strip("\n")])
        return cls(patterns=patterns, heads=heads, completions=tuple(tuple(c) for c in completions),
                   token_bits=_pack_bits(bit_ids, len(texts)))

    @classmethod
    def from_token_ids(cls, token_ids: Sequence[int] | torch.Tensor) -> "StepBoundaries":
        """Tables in which exactly ``token_ids`` end a step, each on its own (no text, no runs):
        the form of hand-written cases and synthetic benchmarks."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        if token_ids.numel() and int(token_ids.min()) < 0:
            raise ValueError("boundary token ids must be non-negative")
        vocab_size = int(token_ids.max()) + 1 if token_ids.numel() else 0
        bits = _pack_bits([token_ids.tolist(), list(range(vocab_size)), []], vocab_size)
        return cls(patterns=(), heads=("",), completions=((),), token_bits=bits)

    @property
    def vocab_size(self) -> int:
        return self.token_bits.shape[1]

    def _ids_with(self, number: int) -> torch.Tensor:
        word, shift = divmod(number, _BITS_PER_WORD)
        return ((self.token_bits[word] >> shift) & 1).nonzero().reshape(-1)

    def _pattern_heads(self) -> list[int]:
        # from_token_ids has no patterns: its one head stands for "ends a step"
        return [q for q, head in enumerate(self.heads) if head in self.patterns or not self.patterns]

    def can_end_a_step(self) -> bool:
        """Whether any token can end a step at all (False: every response gets the end cut only)."""
        heads = self._pattern_heads()
        return any(self._ids_with(number).numel() for number in [*heads, *(n for q in heads for _, n in self.completions[q])])

    def single_token_ids(self) -> torch.Tensor:
        """``[N] long`` — ids whose own text ends with a pattern: what a token-by-token rule finds."""
        return torch.cat([self._ids_with(q) for q in self._pattern_heads()]).unique()

    def mark(self, response_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T] bool`` — token ``t`` ends a step (see the class docstring).

        Args:
            response_ids: ``[B, T] long`` — token ids of the response text, starting at its first
                token. Ids outside the vocabulary (negative padding such as -100) write no text.
        """
        if response_ids.dim() != 2:
            raise ValueError(f"response_ids must be [B, T], got shape {tuple(response_ids.shape)}")
        device = response_ids.device
        batch, length = response_ids.shape
        result = torch.zeros(batch * length, dtype=torch.bool, device=device)
        if self.vocab_size == 0 or batch == 0 or length == 0:
            return result.view(batch, length)
        in_vocab = (response_ids >= 0) & (response_ids < self.vocab_size)
        flat_ids = torch.where(in_vocab, response_ids, 0).reshape(-1)
        # index_select on flat ids is several times faster than advanced indexing.
        words = [word.to(device).index_select(0, flat_ids) for word in self.token_bits]
        if not bool(in_vocab.all()):  # ids outside the vocabulary have no bit set: no text, no ending
            words = [word.masked_fill_(~in_vocab.reshape(-1), 0) for word in words]

        # Only tokens with an ending or completion bit can end a head; they are few (one or two per
        # line), so the heads are resolved on them alone, in a compact list.
        active = torch.zeros_like(result)
        for word, mask in zip(words, _word_masks(range(self.writes_bit), len(words))):
            if mask:
                active |= (word & mask) != 0
        index = active.nonzero().reshape(-1)  # sorted flat positions b·T + t
        if index.numel() == 0:
            return result.view(batch, length)
        compact = [word.index_select(0, index) for word in words]

        def bit(number: int) -> torch.Tensor:
            word, shift = divmod(number, _BITS_PER_WORD)
            return (compact[word] & (1 << shift)) != 0

        # "The token before" is the previous text-writing token of the row: t - 1 when every token
        # writes text, else the previous rank among the row's writers (a running count).
        rows = torch.div(index, length, rounding_mode="floor")
        word, shift = divmod(self.writes_bit, _BITS_PER_WORD)
        writes = (words[word] & (1 << shift)) != 0
        if bool(writes.all()):
            rank = index - rows * length
        else:
            rank = (writes.view(batch, length).cumsum(dim=1) - 1).reshape(-1).index_select(0, index)
        key = rows * length + rank  # increasing, like index
        before = _find(key, key - 1, rank > 0)
        after = _find(key, key + 1, rank < length - 1)

        ends_with: list[torch.Tensor] = []
        # Heads shortest first: the head a token needs before it is shorter, so already resolved.
        for q, completions in enumerate(self.completions):
            ends = bit(q)
            for shorter, number in completions:
                ends |= bit(number) & before(ends_with[shorter])
            ends_with.append(ends)
        heads = self._pattern_heads()
        ends_pattern = ends_with[heads[0]]
        for q in heads[1:]:
            ends_pattern = ends_pattern | ends_with[q]
        # A run of newlines ends a step once, at its last token: drop t when the next writing
        # token is newlines only and ends a pattern again.
        ends_step = ends_pattern & ~after(bit(self.newlines_only_bit) & ends_pattern)
        result[index[ends_step]] = True
        return result.view(batch, length)


def _pack_bits(ids_per_bit: list[list[int]], vocab_size: int) -> torch.Tensor:
    words = torch.zeros(max(1, -(-len(ids_per_bit) // _BITS_PER_WORD)), vocab_size, dtype=torch.int32)
    for number, ids in enumerate(ids_per_bit):
        word, shift = divmod(number, _BITS_PER_WORD)
        if ids:
            words[word, torch.tensor(ids, dtype=torch.long)] |= 1 << shift
    return words


def _word_masks(numbers, num_words: int) -> list[int]:
    masks = [0] * num_words
    for number in numbers:
        word, shift = divmod(number, _BITS_PER_WORD)
        masks[word] |= 1 << shift
    return masks


def _find(keys: torch.Tensor, wanted: torch.Tensor, allowed: torch.Tensor):
    """``lookup(values)[i]`` = ``values[j]`` where ``keys[j] == wanted[i]`` (``keys`` sorted); False
    where no key matches or ``allowed[i]`` is False."""
    position = torch.searchsorted(keys, wanted).clamp_max(keys.numel() - 1)
    found = (keys.index_select(0, position) == wanted) & allowed
    return lambda values: values.index_select(0, position) & found


def _check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    patterns = tuple(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"repro.boundary_patterns must be non-empty strings, got {patterns!r}")
    return patterns


def _decode_vocabulary(tokenizer) -> list[str]:
    """Each id's text as it reads after other text.

    Decoded after an anchor token and stripped of the anchor's text, because some decoders drop
    a leading space of the whole text (SentencePiece's ``"▁"``): a lone ``"▁"`` decodes to ``""``
    but writes a space mid-response. Ids whose decoding does not start with the anchor's text fall
    back to their own decoding.
    """
    vocab_size = len(tokenizer)
    single = _batch_decode(tokenizer, [[i] for i in range(vocab_size)])
    anchor = next((i for i, text in enumerate(single) if text.isascii() and text.isalpha() and len(text) == 1), None)
    if anchor is None:
        return single
    anchor_text = single[anchor]
    paired = _batch_decode(tokenizer, [[anchor, i] for i in range(vocab_size)])
    return [pair[len(anchor_text):] if pair.startswith(anchor_text) else own for pair, own in zip(paired, single)]


def _batch_decode(tokenizer, sequences: list[list[int]]) -> list[str]:
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return [tokenizer.decode(ids) for ids in sequences]


def step_boundaries(tokenizer, patterns: Sequence[str] = DEFAULT_BOUNDARY_PATTERNS) -> StepBoundaries:
    """The :class:`StepBoundaries` of ``tokenizer`` for ``patterns`` (built once per tokenizer; cached).

    Args:
        tokenizer: anything with ``__len__`` (vocabulary size including added tokens) and
            ``decode(list[int]) -> str`` (``batch_decode`` is used when present).
        patterns: non-empty strings; a step ends where the decoded text ends with one of them.
    """
    patterns = _check_patterns(patterns)
    try:
        per_tokenizer = _BOUNDARY_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: build without caching
        per_tokenizer = {}
    if patterns not in per_tokenizer:
        per_tokenizer[patterns] = StepBoundaries.from_texts(_decode_vocabulary(tokenizer), patterns)
    return per_tokenizer[patterns]


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


def select_cuts(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    boundaries: StepBoundaries | torch.Tensor,
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
        boundaries: :func:`step_boundaries` of the tokenizer, or ``[N] long`` ids that end a step
            on their own (:meth:`StepBoundaries.from_token_ids`).
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
    if not isinstance(boundaries, StepBoundaries):
        boundaries = StepBoundaries.from_token_ids(boundaries)
    candidate = boundaries.mark(response_ids)
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


def candidate_counts(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: StepBoundaries | torch.Tensor,
    think_end_id: int,
    *,
    no_think_end: str = "skip",
) -> torch.Tensor:
    """``[B] long`` — candidate cuts per response: the step ends :func:`select_cuts` ranks
    (``c < e``), before it keeps the top ``k``. For reports (the walkthrough, benchmarks)."""
    entropy = torch.zeros(response_ids.shape, device=response_ids.device)
    _, cut_mask, _ = select_cuts(response_ids, response_mask, entropy, boundaries, think_end_id,
                                 max(response_ids.shape[1], 1), no_think_end=no_think_end)
    return (cut_mask.sum(dim=1) - 1).clamp_min(0)  # all but the end cut e + 1
