"""Ground-truth scoring for RePro through a veRL worker: J at every cut of every response (docs/repro.md).

For each response with a ``</think>`` (or its end, under ``no_think_end=use_end``) and a usable
ground truth, the policy scores ``prompt + response[:c] + answer`` for ``c ∈ {0, c_1..c_m}``;
``J(c)`` is the mean log-prob of the answer tokens. The sequences go through veRL's own
log-prob path — the reference worker (``repro.scorer=ref``: ``compute_ref_log_prob``) or the actor
(``repro.scorer=actor``: ``compute_log_prob``) — as a jagged ``TensorDict`` like the one veRL's
trainer sends, laid out so every data-parallel rank gets the same number of whole micro-batches
and similar token counts; padding sequences are added for that and dropped from the output.
Nothing is ever dropped from the batch: rows that cannot be scored get ``NaN`` J and are counted
by the maths layer's fallbacks (``compute_repro_process_advantage``).

Pieces:

* :func:`render_answers` — ground truth → answer token ids (template, truncation, counts);
* :class:`ScoringInputs` — what a mode needs about the batch (cuts, contexts, answers);
* :class:`~verl_repro.verl_ext.transport.LogProbBackend` — log-probs of a list of sequences through
  one worker group (DP layout, padding, unpadding);
* one scorer per ``repro.scoring_mode`` turns inputs into J (``naive``: one sequence per cut,
  ``prefix_shared``: all cuts of a response in one sequence), both from the layout of
  :mod:`verl_repro.scoring.layout`;
* :func:`score_ground_truth` — the whole step, returning :class:`ReproScoring` for the estimators.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from tensordict import TensorDict

from verl_repro.algorithms import StepBoundaries, select_cuts
from verl_repro.config import ReproConfig
from verl_repro.rewards.ground_truth import ground_truth_text
from verl_repro.scoring.layout import (
    PrefixSharedBatch,
    build_prefix_shared_batch,
    copy_means,
    cut_slots,
    naive_sequences,
    scatter_j,
    segment_positions,
)
from verl_repro.verl_ext import transport
from verl_repro.verl_ext.switches import ENGINE_VENDOR_OVERRIDE
from verl_repro.verl_ext.transport import LogProbBackend, ScoringSequences, dp_layout

GROUND_TRUTH_KEY = "ground_truth"


# ----------------------------------------------------------------------------- answers


def reward_model_ground_truth(reward_model: Any) -> Optional[str]:
    """``reward_model["ground_truth"]`` read by :func:`verl_repro.rewards.ground_truth_text` (a list's
    first entry; None when missing or unusable)."""
    return ground_truth_text(reward_model.get(GROUND_TRUTH_KEY)) if isinstance(reward_model, Mapping) else None


@dataclass
class RenderedAnswers:
    """Answer token ids for a batch of ``B`` responses."""

    token_ids: list[torch.Tensor]
    """B ``[A_b] long`` tensors; empty where the ground truth is unusable."""
    valid: torch.Tensor
    """``[B] bool`` — a usable ground truth that renders to at least one token."""
    missing_ground_truth: int
    """Rows whose ground truth is missing / empty / unusable (``repro/skipped_no_ground_truth``)."""
    truncated: int
    """Rows whose answer was cut to ``repro.max_answer_tokens`` (``repro/truncated_answers``)."""


def render_answers(tokenizer, reward_models: Sequence[Any], config: ReproConfig) -> RenderedAnswers:
    """Render each ground truth with ``config.answer_template``, tokenize it with the policy tokenizer
    (:meth:`~verl_repro.config.ReproConfig.answer_token_ids`) and truncate it to
    ``config.max_answer_tokens``."""
    texts = [reward_model_ground_truth(item) for item in reward_models]
    token_ids, valid, truncated = [], [], 0
    for text, ids in zip(texts, config.answer_token_ids(tokenizer, texts)):
        if len(ids) > config.max_answer_tokens:
            ids = ids[: config.max_answer_tokens]
            truncated += 1
        token_ids.append(torch.tensor(ids, dtype=torch.long))
        valid.append(len(ids) > 0)
    return RenderedAnswers(
        token_ids=token_ids,
        valid=torch.tensor(valid, dtype=torch.bool),
        missing_ground_truth=sum(text is None for text in texts),
        truncated=truncated,
    )


# ----------------------------------------------------------------------------- scoring modes


@dataclass
class ScoringInputs:
    """Everything a scoring mode needs about a batch of ``B`` responses."""

    input_ids: torch.Tensor
    """Nested jagged ``[B, P_b + R_b] long`` — prompt + response, as veRL stores ``input_ids``."""
    prompt_lengths: torch.Tensor
    """``[B] long`` — ``P_b`` (> 0)."""
    cuts: torch.Tensor
    """``[B, K] long`` — from ``select_cuts``."""
    cut_mask: torch.Tensor
    """``[B, K] bool``."""
    answer_ids: list[torch.Tensor]
    """B ``[A_b] long`` answer token ids."""
    rows: torch.Tensor
    """``[B] bool`` — rows to score (usable answer, a cut, not a padding row)."""


@dataclass
class ScoredJ:
    j_base: torch.Tensor
    """``[B] float32`` — ``J(0)``; NaN for rows not scored."""
    j_cuts: torch.Tensor
    """``[B, K] float32`` — ``J(c_j)``; NaN where not scored."""
    num_sequences: int
    scored_tokens: int
    """Tokens sent through the model (the cost the ``prefix_shared`` mode reduces)."""


def _layout(inputs: ScoringInputs) -> PrefixSharedBatch:
    """The rows and cuts to score, in the prefix-shared layout (the naive sequences are its expansion)."""
    answer_lengths = torch.tensor([ids.numel() for ids in inputs.answer_ids], dtype=torch.long)
    return build_prefix_shared_batch(
        inputs.input_ids.values(), inputs.input_ids.offsets(), inputs.prompt_lengths, inputs.cuts,
        cut_slots(inputs.cuts, inputs.cut_mask, inputs.rows, answer_lengths),
        torch.cat(list(inputs.answer_ids)).long() if inputs.answer_ids else torch.zeros(0, dtype=torch.long),
        answer_lengths,
    )


def _scored(inputs: ScoringInputs, layout: PrefixSharedBatch, copy_j: torch.Tensor, num_sequences: int, scored_tokens: int) -> ScoredJ:
    j_base, j_cuts = scatter_j(layout.copy_row, layout.copy_slot, copy_j, *inputs.cut_mask.shape)
    return ScoredJ(j_base=j_base, j_cuts=j_cuts, num_sequences=num_sequences, scored_tokens=scored_tokens)


def score_naive(inputs: ScoringInputs, backend: LogProbBackend, micro_batch_size: int) -> ScoredJ:
    """One sequence per cut: ``prompt + response[:c] + answer`` for ``c ∈ {0, c_1..c_m}`` (the
    paper's and the reference code's way, and the oracle of the faster mode)."""
    layout = _layout(inputs)
    input_ids, lengths = naive_sequences(layout)
    copy_lengths = torch.repeat_interleave(layout.copy_lengths, layout.copies_per_sample)
    _, position_ids = segment_positions(lengths)
    sequences = ScoringSequences(input_ids=input_ids, position_ids=position_ids, lengths=lengths, answer_lengths=copy_lengths - 1)
    token_log_probs = backend.answer_log_probs(sequences, micro_batch_size)
    # Copies are copy-major, token-minor in both orders: the layout's scored positions line up.
    return _scored(inputs, layout, copy_means(layout, token_log_probs), len(sequences), int(lengths.sum()))


# ----------------------------------------------------------------------------- the step


@dataclass
class ReproScoring:
    """Per-sample RePro scoring of a training batch (the ``repro_scoring`` estimator input).

    ``B`` rows in the order of the batch the estimator sees; ``K`` = max cuts in the batch.
    """

    cuts: torch.Tensor
    """``[B, K] long`` — cut positions (prefix lengths), valid entries first; last valid = ``e + 1``."""
    cut_mask: torch.Tensor
    """``[B, K] bool``."""
    has_think_end: torch.Tensor
    """``[B] bool`` — a ``</think>`` was found."""
    j_base: torch.Tensor
    """``[B] float32`` — ``J(0)``; NaN where not scored."""
    j_cuts: torch.Tensor
    """``[B, K] float32`` — ``J(c_j)``; NaN where not scored."""
    valid: torch.Tensor
    """``[B] bool`` — usable ground truth (rendered to ≥ 1 token)."""
    padding: torch.Tensor
    """``[B] bool`` — rows veRL added to balance the batch (``tags["is_padding"]``)."""
    scored: torch.Tensor
    """``[B] bool`` — rows sent to the model."""
    stats: dict[str, float] = field(default_factory=dict)
    """``num_sequences``, ``scored_tokens``, ``truncated_answers``, ``missing_ground_truth``."""


def score_ground_truth(
    *,
    input_ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    reward_models: Sequence[Any],
    padding: torch.Tensor,
    tokenizer,
    config: ReproConfig,
    boundaries: StepBoundaries,
    think_end_id: int,
    backend: LogProbBackend,
) -> ReproScoring:
    """Select the cuts of every response and score J at them through ``backend``.

    Args:
        input_ids: nested jagged ``[B, P_b + R_b] long`` — veRL's stored prompt + response.
        prompt_lengths: ``[B] long`` — ``P_b``.
        responses: ``[B, T] long`` — right-padded responses (``R_b`` real tokens each).
        response_mask: ``[B, T]`` — 1 on response tokens the policy wrote.
        entropy: ``[B, T] float`` — old-log-prob entropy of each response token.
        reward_models: B ``reward_model`` dicts (their ``ground_truth``).
        padding: ``[B] bool`` — batch-balancing rows, never scored.
        tokenizer, config, boundaries, think_end_id: the policy tokenizer, the ``repro`` group,
            ``step_boundaries(tokenizer, config.boundary_patterns)`` and the ``</think>`` id.
        backend: where the sequences are scored.
    """
    batch = responses.shape[0]
    if len(reward_models) != batch or padding.shape != (batch,) or input_ids.size(0) != batch:
        raise ValueError(
            f"RePro scoring: {batch} responses but {len(reward_models)} reward_model entries, "
            f"{tuple(padding.shape)} padding flags and {input_ids.size(0)} input_ids rows"
        )
    cuts, cut_mask, has_think_end = select_cuts(
        responses, response_mask, entropy.float(), boundaries, think_end_id, config.num_segments,
        no_think_end=config.no_think_end,
    )
    answers = render_answers(tokenizer, reward_models, config)
    padding = padding.bool()
    rows = answers.valid & ~padding & cut_mask.any(dim=1)
    prompt_lengths = prompt_lengths.to(torch.long)
    if bool((rows & (prompt_lengths <= 0)).any()):
        raise ValueError("RePro scoring: a response without a prompt token cannot be scored (prompt length 0)")
    scored = SCORERS[config.scoring_mode](
        ScoringInputs(
            input_ids=input_ids,
            prompt_lengths=prompt_lengths,
            cuts=cuts,
            cut_mask=cut_mask,
            answer_ids=answers.token_ids,
            rows=rows,
        ),
        backend,
        config.scoring_micro_batch_size,
    )
    return ReproScoring(
        cuts=cuts,
        cut_mask=cut_mask,
        has_think_end=has_think_end,
        j_base=scored.j_base,
        j_cuts=scored.j_cuts,
        valid=answers.valid,
        padding=padding,
        scored=rows,
        stats={
            "num_sequences": float(scored.num_sequences),
            "scored_tokens": float(scored.scored_tokens),
            "truncated_answers": float(answers.truncated),
            "missing_ground_truth": float(int((~answers.valid & ~padding).sum())),
        },
    )



# ----------------------------------------------------------------------------- prefix-shared mode
#
# Each response goes to the worker once, as ``[prompt + response | answer copy per cut]``
# (:mod:`verl_repro.scoring.layout`), and the worker's engine runs it with the tree attention
# (:mod:`verl_repro.verl_ext.engine_step`, called from the ``repro`` engine vendor's
# ``forward_step``). A worker whose engine does not serve the layout is detected from its output,
# and the run falls back to ``naive`` with a logged reason.


_PREFIX_SHARED_REFUSED: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
"""Worker groups whose engine did not serve a prefix-shared batch (kept for the run: the trainer
builds a new :class:`LogProbBackend` every step) → the logged reason."""


def _worker_of(backend: LogProbBackend):
    return getattr(backend.compute_log_prob, "__self__", None) or backend.compute_log_prob


def score_prefix_shared(inputs: ScoringInputs, backend: LogProbBackend, micro_batch_size: int) -> ScoredJ:
    """All cuts of a response in one worker sequence; ``micro_batch_size`` counts whole responses here."""
    from verl.utils import tensordict_utils as tu

    if _worker_of(backend) in _PREFIX_SHARED_REFUSED:
        return score_naive(inputs, backend, micro_batch_size)
    layout = _layout(inputs)
    if len(layout) == 0:
        return _scored(inputs, layout, torch.zeros(0), 0, 0)
    order, is_padding, layout_micro_batch = dp_layout(layout.sample_lengths, backend.dp_size, micro_batch_size)
    batch = TensorDict(transport.transport_tensors(layout, order), batch_size=[int(order.numel())])
    tu.assign_non_tensor(
        batch, temperature=backend.temperature, calculate_entropy=False, compute_loss=False,
        use_dynamic_bsz=False, micro_batch_size_per_gpu=layout_micro_batch, **backend.extra_non_tensor,
    )
    output = backend.compute_log_prob(batch)
    if output is None or transport.SERVED_KEY not in output.keys() or "log_probs" not in output.keys():
        reason = _PREFIX_SHARED_REFUSED[_worker_of(backend)] = (
            "the workers' engine did not apply the prefix-shared layout; run the workers with the repro "
            f"engine vendor ({ENGINE_VENDOR_OVERRIDE})"
        )
        logging.getLogger("verl_repro").warning("repro.scoring_mode=prefix_shared falls back to naive for this run: %s", reason)
        return score_naive(inputs, backend, micro_batch_size)
    token_log_probs = transport.scored_from_slots(layout, order, is_padding, output["log_probs"])
    served = output[transport.SERVED_KEY].values().cpu()[transport.slot_of_sample(order, is_padding, len(layout))]
    scored_tokens = transport.fed_tokens(layout, served == transport.SERVED_NAIVE)
    return _scored(inputs, layout, copy_means(layout, token_log_probs), len(layout), scored_tokens)


SCORERS = {"naive": score_naive, "prefix_shared": score_prefix_shared}
"""The scorer of each ``repro.scoring_mode`` (:data:`verl_repro.config.SCORING_MODES`)."""
