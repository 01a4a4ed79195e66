"""J at the cuts: the model passes that score RePro's surrogate, prefix-shared or naive.

:func:`score_j` is the one switch (``repro.scoring_mode`` names, plus ``auto``);
:func:`score_cuts_prefix_shared` packs all cuts of a response into one forward through the tree
attention, :func:`score_cuts_naive` feeds one sequence per cut from the same layout. Where the
model's attention cannot take the tree (:func:`verl_repro.models.support.attention_support_error`, or
a first-use probe that compares both passes), the prefix-shared scorer computes the same values the
naive way and logs the reason once.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from verl_repro.config import SCORING_MODES
from verl_repro.kernels import check_temperature
from verl_repro.models.support import attention_support_error, unwrap_model
from verl_repro.scoring.attention import PROBE_TOLERANCE, probe_batch, tree_attention, tree_plan
from verl_repro.scoring.layout import (
    PrefixSharedBatch,
    build_prefix_shared_batch,
    copy_means,
    cut_slots,
    naive_groups,
    naive_sequences,
    naive_token_count,
    segment_positions,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- log-probs


def _log_probs_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """``[Q] float32`` log-softmax(logits / temperature)[label], in row chunks to bound the fp32 copy."""
    out = torch.empty(labels.numel(), dtype=torch.float32, device=logits.device)
    for begin in range(0, labels.numel(), chunk):
        rows = logits[begin : begin + chunk].float()
        if temperature != 1.0:
            rows = rows / temperature
        out[begin : begin + chunk] = rows.gather(-1, labels[begin : begin + chunk].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)
    return out


def _tree_log_probs(model, batch: PrefixSharedBatch, temperature: float, return_dtype: bool = False):
    device = next(model.parameters()).device
    plan = tree_plan(batch, device)
    with tree_attention(model, plan):
        output = model(
            input_ids=batch.input_ids.to(device).unsqueeze(0),
            position_ids=batch.position_ids.to(device).unsqueeze(0),
            use_cache=False,
            # Only the answer-predicting positions need the lm_head: no [N, V] logits.
            logits_to_keep=batch.scored_index.to(device),
        )
    values = _log_probs_of(output.logits[0], batch.labels.to(device), temperature).cpu()
    return (values, output.logits.dtype) if return_dtype else values


def _naive_log_probs(model, batch: PrefixSharedBatch, temperature: float, max_tokens: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """The values of :func:`prefix_shared_log_probs` computed the naive way: one sequence per copy,
    ``prefix[:s_j] + copy_j``, through the model's own attention.

    Sequences are left-padded in the groups of :func:`naive_groups` (by default the batch's own
    packed size, so the fallback needs no more activation memory than the tree pass), with explicit
    position ids, so every copy ends at the last column and only those columns reach the lm_head.
    Returns ``([Q] float32, number of forwards)``.
    """
    device = next(model.parameters()).device
    ids, lengths = naive_sequences(batch)
    offsets = F.pad(lengths.cumsum(0), (1, 0))
    copy_lengths = torch.repeat_interleave(batch.copy_lengths, batch.copies_per_sample)
    answer_offsets = F.pad((copy_lengths - 1).cumsum(0), (1, 0))
    # Copies are copy-major, token-minor here as in ``scored_index``: same order of values.
    values = torch.empty(int(answer_offsets[-1]), dtype=torch.float32)
    groups = naive_groups(batch, max_tokens)
    for group in groups:
        longest = int(lengths[group].max())
        owner, position = segment_positions(lengths[group])
        pad = longest - lengths[group]
        padded = torch.zeros(group.numel(), longest, dtype=torch.long)
        padded[owner, pad[owner] + position] = ids[offsets[group][owner] + position]
        positions = torch.zeros_like(padded)
        positions[owner, pad[owner] + position] = position
        mask = torch.arange(longest).unsqueeze(0) >= pad.unsqueeze(1)
        keep = int(copy_lengths[group].max())
        logits = model(
            input_ids=padded.to(device),
            attention_mask=None if group.numel() == 1 else mask.long().to(device),
            position_ids=positions.to(device),
            use_cache=False,
            logits_to_keep=keep,
        ).logits
        # Column ``keep - C + t`` of the kept logits predicts answer token ``t`` (C = copy length).
        a_owner, a_position = segment_positions(copy_lengths[group] - 1)
        column = keep - copy_lengths[group][a_owner] + a_position
        chosen = logits[a_owner.to(device), column.to(device)]
        labels = padded[a_owner, longest - keep + column + 1].to(device)
        values[answer_offsets[group][a_owner] + a_position] = _log_probs_of(chosen, labels, temperature).cpu()
    return values, len(groups)


@torch.no_grad()
def prefix_shared_log_probs(model, batch: PrefixSharedBatch, temperature: float = 1.0, fallback_reason: Optional[list] = None) -> torch.Tensor:
    """``[Q] float32`` — ``log π(labels | …)`` at every scored position of ``batch``, in one packed pass.

    Falls back to the naive expansion (same values) when the model's attention cannot take the
    tree mask; the reason is logged once per model and appended to ``fallback_reason`` if given.
    """
    if batch.scored_index.numel() == 0:
        return torch.zeros(0, dtype=torch.float32)
    reason = prefix_shared_unavailable(model, temperature)
    if reason is None:
        return _tree_log_probs(model, batch, temperature)
    _log_fallback(model, reason)
    if fallback_reason is not None:
        fallback_reason.append(reason)
    return _naive_log_probs(model, batch, temperature)[0]


_LOGGED: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()


def _log_fallback(model, reason: str) -> None:
    logged = _LOGGED.setdefault(model, set())
    if reason not in logged:
        logged.add(reason)
        logger.warning("RePro prefix-shared scoring falls back to naive scoring for %s: %s", type(unwrap_model(model)).__name__, reason)


# ----------------------------------------------------------------------------- first-use probe


_PROBED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def probe(model, temperature: float = 1.0) -> Optional[str]:
    """Score :func:`probe_batch` both ways, once per model and precision setting (cached).

    Returns None when the tree pass agrees with the naive pass, else the reason to fall back (an
    error inside the model, or a disagreement beyond :data:`PROBE_TOLERANCE`). Every rank of a
    sharded model calls it at the same point with the same input, as its forwards are collective.
    """
    parameter = next(model.parameters())
    key = (parameter.dtype, parameter.device.type, torch.is_autocast_enabled(parameter.device.type))
    verdicts = _PROBED.setdefault(model, {})
    if key in verdicts:
        return verdicts[key]
    batch = probe_batch(int(getattr(unwrap_model(model).config, "vocab_size", 32)))
    try:
        shared, logits_dtype = _tree_log_probs(model, batch, temperature, return_dtype=True)
    except Exception as error:  # any failure inside a foreign model means "cannot take the mask"
        verdicts[key] = f"probe forward failed: {type(error).__name__}: {error}"
        return verdicts[key]
    naive, _ = _naive_log_probs(model, batch, temperature)
    tolerance = PROBE_TOLERANCE.get(logits_dtype, 0.1)
    gap = float((shared - naive).abs().max())
    verdicts[key] = None if gap <= tolerance else f"probe disagrees with naive scoring (max |Δ log p| = {gap:.3g} > {tolerance:g})"
    return verdicts[key]


def prefix_shared_unavailable(model, temperature: float = 1.0) -> Optional[str]:
    """Why the tree pass cannot be used on ``model`` (static checks, then the probe), or None."""
    return attention_support_error(model) or probe(model, temperature)


# ----------------------------------------------------------------------------- J at the cuts


@dataclass
class CutScores:
    """J of a batch of ``B`` responses at ``K`` cut columns."""

    j_base: torch.Tensor
    """``[B] float32`` — ``J(0)``; NaN where not scored."""
    j_cuts: torch.Tensor
    """``[B, K] float32`` — ``J(c_k)``; NaN where not scored."""
    scored_tokens: int
    """Tokens fed to the model."""
    naive_tokens: int
    """Tokens the naive way would feed for the same cuts."""
    passes: int
    """Model forwards."""
    fallback_reason: Optional[str] = None
    """Why the naive path was used instead, or None."""


def _pack_contexts(prompt_ids, response_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor]):
    """Packed ``prompt + response`` per row from token lists or a left-padded ``[B, P_max]`` tensor."""
    batch = response_ids.shape[0]
    if isinstance(prompt_ids, torch.Tensor):
        mask = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        if mask.shape != prompt_ids.shape:
            raise ValueError(f"prompt_mask {tuple(mask.shape)} does not match prompt_ids {tuple(prompt_ids.shape)}")
        prompts = [prompt_ids[b][mask[b]] for b in range(batch)]
    else:
        prompts = [torch.as_tensor(list(p), dtype=torch.long) for p in prompt_ids]
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts but {batch} responses")
    contexts = [torch.cat([prompts[b].long(), response_ids[b].long()]) for b in range(batch)]
    lengths = torch.tensor([c.numel() for c in contexts], dtype=torch.long)
    prompt_lengths = torch.tensor([p.numel() for p in prompts], dtype=torch.long)
    return torch.cat(contexts) if contexts else torch.zeros(0, dtype=torch.long), F.pad(lengths.cumsum(0), (1, 0)), prompt_lengths


@torch.no_grad()
def score_cuts_prefix_shared(
    model,
    prompt_ids,
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    *,
    prompt_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    max_tokens_per_pass: int = 16384,
) -> CutScores:
    """Prefix-shared RePro scoring: J_b (cut 0) and J at every valid cut, all cuts of a response in one pass.

    Same inputs and values as :func:`score_cuts_naive`.

    Args:
        prompt_ids: B token lists, or a left-padded ``[B, P_max] long`` tensor with ``prompt_mask``.
        response_ids: ``[B, T] long`` right-padded responses.
        cuts, cut_mask: ``[B, K]`` from ``select_cuts``; a row with no valid cut or an empty answer is not scored.
        answer_ids: B rendered-answer token lists.
        prompt_mask: ``[B, P_max]`` — 1 on real prompt tokens (left padding), for tensor prompts.
        max_tokens_per_pass: responses are packed into forwards of about this many tokens.
    """
    return _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive=False)


@torch.no_grad()
def score_cuts_naive(
    model,
    prompt_ids,
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    *,
    prompt_mask: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    max_tokens_per_pass: int = 16384,
) -> CutScores:
    """Naive RePro scoring with the arguments of :func:`score_cuts_prefix_shared`: one sequence per
    cut, ``prompt + response[:c] + answer``, left-padded groups of at most ``max_tokens_per_pass``
    tokens (0: one unpadded sequence per forward), lm_head on the answer positions only — the
    baseline of ``benchmarks/bench_scoring.py``."""
    return _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive=True)


def _score_cuts(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, prompt_mask, temperature, max_tokens_per_pass, naive: bool) -> CutScores:
    temperature = check_temperature(temperature)
    context_ids, context_offsets, prompt_lengths = _pack_contexts(prompt_ids, response_ids, prompt_mask)
    answers = [torch.as_tensor(list(a), dtype=torch.long) for a in answer_ids]
    answer_lengths = torch.tensor([a.numel() for a in answers], dtype=torch.long)
    answer_values = torch.cat(answers) if answers else torch.zeros(0, dtype=torch.long)
    slot_valid = cut_slots(cuts, cut_mask, torch.ones(cuts.shape[0], dtype=torch.bool), answer_lengths)
    naive_tokens = naive_token_count(prompt_lengths, cuts, slot_valid, answer_lengths)
    j_table = torch.full((cuts.shape[0], cuts.shape[1] + 1), float("nan"), dtype=torch.float32)
    if naive:
        batch = build_prefix_shared_batch(context_ids, context_offsets, prompt_lengths, cuts, slot_valid, answer_values, answer_lengths)
        if batch.scored_index.numel():
            log_probs, passes = _naive_log_probs(model, batch, temperature, max_tokens=max_tokens_per_pass)
            j_table[batch.copy_row, batch.copy_slot] = copy_means(batch, log_probs)
        else:
            passes = 0
        return CutScores(j_table[:, 0], j_table[:, 1:], scored_tokens=naive_tokens, naive_tokens=naive_tokens, passes=passes)

    slot_cut = F.pad(cuts.long(), (1, 0))
    estimate = prompt_lengths + torch.where(slot_valid, slot_cut, torch.zeros_like(slot_cut)).amax(dim=1) + slot_valid.sum(1) * (answer_lengths + 1)
    scored_tokens, passes, reasons = 0, 0, []
    for rows in _packs(estimate, slot_valid.any(dim=1), max_tokens_per_pass):
        in_pack = torch.zeros_like(slot_valid)
        in_pack[rows] = slot_valid[rows]
        batch = build_prefix_shared_batch(context_ids, context_offsets, prompt_lengths, cuts, in_pack, answer_values, answer_lengths)
        log_probs = prefix_shared_log_probs(model, batch, temperature, fallback_reason=reasons)
        j_table[batch.copy_row, batch.copy_slot] = copy_means(batch, log_probs)
        scored_tokens += batch.num_tokens
        passes += 1
    if reasons:
        scored_tokens = naive_tokens
    return CutScores(
        j_base=j_table[:, 0], j_cuts=j_table[:, 1:], scored_tokens=scored_tokens, naive_tokens=naive_tokens,
        passes=passes, fallback_reason=reasons[0] if reasons else None,
    )


def _packs(sample_lengths: torch.Tensor, scored: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Consecutive groups of scored rows of at most ``max_tokens`` tokens (a longer row goes alone)."""
    groups, current, total = [], [], 0
    for row in torch.nonzero(scored).flatten().tolist():
        length = int(sample_lengths[row])
        if current and total + length > max_tokens:
            groups.append(torch.tensor(current))
            current, total = [], 0
        current.append(row)
        total += length
    if current:
        groups.append(torch.tensor(current))
    return groups


def score_j(model, prompt_ids, response_ids: torch.Tensor, cuts: torch.Tensor, cut_mask: torch.Tensor,
            answer_ids: Sequence[Sequence[int]], *, mode: str = "auto", temperature: float = 1.0,
            max_tokens_per_pass: int = 16384) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``J_b [B]`` and ``J`` at every cut ``[B, K]`` (float32, NaN where not scored), and
    ``{"mode", "scored_tokens", "naive_tokens"}``: the one switch between the scorers.

    ``mode``: ``naive`` (:func:`score_cuts_naive`), ``prefix_shared``
    (:func:`score_cuts_prefix_shared`, which itself runs the naive maths on models whose attention
    cannot take its mask, and says so in ``mode``) or ``auto`` (prefix-shared).
    """
    if mode not in ("auto", *SCORING_MODES):
        raise ValueError(f"scoring mode must be one of {('auto', *SCORING_MODES)}, got {mode!r}")
    scorer = score_cuts_naive if mode == "naive" else score_cuts_prefix_shared
    result = scorer(model, prompt_ids, response_ids, cuts, cut_mask, answer_ids, temperature=temperature, max_tokens_per_pass=max_tokens_per_pass)
    if mode == "naive":
        used = "naive"
    else:
        used = "prefix_shared" if result.fallback_reason is None else f"naive (prefix-shared unsupported: {result.fallback_reason})"
    return result.j_base, result.j_cuts, {"mode": used, "scored_tokens": int(result.scored_tokens), "naive_tokens": int(result.naive_tokens)}
