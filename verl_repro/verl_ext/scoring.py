"""Ground-truth scoring for RePro through a veRL worker: J at every cut of every response (DESIGN §2).

For each response with a ``</think>`` (or its end, under ``no_think_end=use_end``) and a usable
ground truth, the policy scores ``prompt + response[:c] + answer`` for ``c ∈ {0, c_1..c_m}``;
``J(c)`` is the mean log-prob of the answer tokens. The sequences go through veRL's own
log-prob path — the reference worker (``repro.scorer=ref``: ``compute_ref_log_prob``) or the actor
(``repro.scorer=actor``: ``compute_log_prob``) — as a jagged ``TensorDict`` like the one veRL's
trainer sends, laid out so every data-parallel rank gets the same number of whole micro-batches
and similar token counts; padding sequences are added for that and dropped from the output.
Nothing is ever dropped from the batch: rows that cannot be scored get ``NaN`` J and are counted
by the maths layer's fallbacks (``compute_repro_process_advantage``).

Pieces, so a scoring mode can be swapped (``repro.scoring_mode``; ``prefix_shared`` slots in here):

* :func:`render_answers` — ground truth → answer token ids (template, truncation, counts);
* :class:`ScoringInputs` — what a mode needs about the batch (cuts, contexts, answers);
* :class:`LogProbBackend` — answer-token log-probs of a list of sequences through one worker
  group (DP layout, padding, unpadding);
* ``SCORING_MODES[name]`` — turns inputs into J (``naive``: one sequence per cut);
* :func:`score_ground_truth` — the whole step, returning :class:`ReproScoring` for the estimators.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from tensordict import TensorDict

from verl_repro.algorithms import select_cuts
from verl_repro.config import ReproConfig
from verl_repro.rewards.ground_truth import ground_truth_text

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
    """Render each ground truth with ``config.answer_template`` and tokenize it with the policy tokenizer.

    The answer is tokenized on its own (no special tokens), as the text the policy would write
    right after the cut, and truncated to ``config.max_answer_tokens``. Each distinct text is
    tokenized once (the ``n`` responses of a prompt share it).
    """
    texts = [reward_model_ground_truth(item) for item in reward_models]
    unique = sorted({config.render_answer(text) for text in texts if text is not None})
    encoded: dict[str, list[int]] = {}
    if unique:
        ids = tokenizer(unique, add_special_tokens=False)["input_ids"]
        encoded = dict(zip(unique, ids))
    token_ids, valid, truncated = [], [], 0
    for text in texts:
        ids = encoded[config.render_answer(text)] if text is not None else []
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


# ----------------------------------------------------------------------------- worker backend


@dataclass
class ScoringSequences:
    """A list of ``N`` token sequences to score, packed: sequence ``n`` is
    ``input_ids[offsets[n]:offsets[n+1]]`` and its last ``answer_lengths[n]`` tokens are scored."""

    input_ids: torch.Tensor
    """``[total] long``."""
    position_ids: torch.Tensor
    """``[total] long`` — 1-D (text) positions."""
    lengths: torch.Tensor
    """``[N] long`` — each ≥ ``answer_lengths + 1`` (a scored token needs a token before it)."""
    answer_lengths: torch.Tensor
    """``[N] long`` — ≥ 1."""

    @property
    def offsets(self) -> torch.Tensor:
        return torch.nn.functional.pad(self.lengths.cumsum(0), (1, 0))

    def __len__(self) -> int:
        return int(self.lengths.numel())


def segment_positions(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed segments of ``lengths`` (``[N] long``): ``(owner [total], position-in-segment [total])``."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    starts = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))[:-1]
    return owner, torch.arange(int(lengths.sum())) - starts[owner]


def dp_layout(lengths: torch.Tensor, dp_size: int, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Order ``N`` sequences for a DP dispatch that splits the batch into ``dp_size`` contiguous chunks.

    Every rank gets the same number of sequences, a whole number of micro-batches (veRL's engine
    requires it without dynamic batch size) of at most ``micro_batch_size``; sequences are dealt longest first in snake
    order, so ranks get similar token counts and each micro-batch holds similar lengths. Free
    slots repeat the shortest sequence and are flagged.

    Returns:
        order: ``[Q] long`` — source index of each dispatched slot (``Q = dp_size · per_rank``).
        is_padding: ``[Q] bool`` — slots that only fill the layout.
        micro_batch_size: the micro-batch size used (≤ the requested one, balanced so each rank pads
            fewer sequences than it has micro-batches).
    """
    count = int(lengths.numel())
    if count == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), micro_batch_size
    per_rank = -(-count // dp_size)
    # As few micro-batches as the size limit allows, then even sizes: padding < one per micro-batch.
    num_micro_batches = -(-per_rank // max(1, micro_batch_size))
    micro_batch_size = -(-per_rank // num_micro_batches)
    per_rank = num_micro_batches * micro_batch_size
    by_length = torch.argsort(lengths, descending=True, stable=True)
    rank_round = torch.arange(count) // dp_size
    rank = torch.arange(count) % dp_size
    rank = torch.where(rank_round % 2 == 0, rank, dp_size - 1 - rank)
    slots = torch.full((dp_size, per_rank), -1, dtype=torch.long)
    slots[rank, rank_round] = by_length
    order = slots.reshape(-1)
    is_padding = order < 0
    order = torch.where(is_padding, by_length[-1], order)
    return order, is_padding, micro_batch_size


def _nested(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    return torch.nested.nested_tensor_from_jagged(
        values, offsets=offsets, min_seqlen=int(lengths.min()), max_seqlen=int(lengths.max())
    )


class LogProbBackend:
    """Answer-token log-probs of :class:`ScoringSequences` through one veRL worker group.

    Args:
        compute_log_prob: the worker-group method — ``ref_policy_wg.compute_ref_log_prob`` or
            ``actor_rollout_wg.compute_log_prob``: jagged ``TensorDict`` in (its length must
            divide by the DP size), ``TensorDict`` with full-sequence nested ``log_probs`` out.
        dp_size: data-parallel size of that worker group's mesh.
        temperature: logits are divided by it, as in veRL's own log-prob passes.
        extra_non_tensor: more non-tensor keys for the worker (``no_lora_adapter=True`` when the
            reference is the actor without its LoRA adapter).
    """

    def __init__(
        self,
        compute_log_prob: Callable[[TensorDict], TensorDict],
        dp_size: int,
        temperature: float,
        extra_non_tensor: Optional[Mapping[str, Any]] = None,
    ):
        if dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {dp_size}")
        self.compute_log_prob = compute_log_prob
        self.dp_size = int(dp_size)
        self.temperature = float(temperature)
        self.extra_non_tensor = dict(extra_non_tensor or {})

    def build_batch(self, sequences: ScoringSequences, micro_batch_size: int) -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
        """The dispatched jagged ``TensorDict`` (DP layout) with its ``order`` / ``is_padding``."""
        from verl.utils import tensordict_utils as tu

        order, is_padding, micro_batch_size = dp_layout(sequences.lengths, self.dp_size, micro_batch_size)
        lengths = sequences.lengths[order]
        answer_lengths = sequences.answer_lengths[order]
        owner, position = segment_positions(lengths)
        source = sequences.offsets[:-1][order][owner] + position
        answer_mask = torch.ones(int(answer_lengths.sum()), dtype=torch.long)
        batch = TensorDict(
            {
                "input_ids": _nested(sequences.input_ids[source], lengths),
                "position_ids": _nested(sequences.position_ids[source], lengths),
                # The engine scores the last |a| tokens as the "response" of each sequence.
                "response_mask": _nested(answer_mask, answer_lengths),
                "loss_mask": _nested(answer_mask.clone(), answer_lengths),
            },
            batch_size=[int(order.numel())],
        )
        tu.assign_non_tensor(
            batch,
            temperature=self.temperature,
            calculate_entropy=False,
            compute_loss=False,
            use_dynamic_bsz=False,
            micro_batch_size_per_gpu=micro_batch_size,
            **self.extra_non_tensor,
        )
        return batch, order, is_padding

    def answer_log_probs(self, sequences: ScoringSequences, micro_batch_size: int) -> torch.Tensor:
        """``[sum(answer_lengths)] float32`` — log-probs of the answer tokens, packed in sequence order."""
        from verl.workers.utils.padding import response_from_nested

        if len(sequences) == 0:
            return torch.zeros(0, dtype=torch.float32)
        batch, order, is_padding = self.build_batch(sequences, micro_batch_size)
        output = self.compute_log_prob(batch)
        if output is None or "log_probs" not in output.keys():
            raise RuntimeError("RePro scoring: the worker returned no log_probs")
        if len(output) != len(batch):
            raise RuntimeError(f"RePro scoring: sent {len(batch)} sequences, the worker returned {len(output)}")
        # Full-sequence log-probs are shifted by one (position p predicts token p + 1).
        answers = response_from_nested(output["log_probs"], batch["response_mask"])
        values = answers.values().to(torch.float32)
        slot_offsets = answers.offsets()
        # Undo the layout: slot of each source sequence, then its answer tokens in source order.
        slot_of_source = torch.empty(len(sequences), dtype=torch.long)
        real_slots = torch.nonzero(~is_padding).squeeze(1)
        slot_of_source[order[real_slots]] = real_slots
        owner, position = segment_positions(sequences.answer_lengths)
        return values[slot_offsets[slot_of_source][owner] + position]


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


class ScoringMode(Protocol):
    def __call__(self, inputs: ScoringInputs, backend: LogProbBackend, micro_batch_size: int) -> ScoredJ: ...


SCORING_MODES: dict[str, ScoringMode] = {}


def register_scoring_mode(name: str) -> Callable[[ScoringMode], ScoringMode]:
    def decorator(mode: ScoringMode) -> ScoringMode:
        SCORING_MODES[name] = mode
        return mode

    return decorator


def _scatter_j(inputs: ScoringInputs, seq_row: torch.Tensor, seq_slot: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, width = inputs.cut_mask.shape
    table = torch.full((batch, width + 1), float("nan"), dtype=torch.float32)
    table[seq_row, seq_slot] = j
    return table[:, 0], table[:, 1:]


@register_scoring_mode("naive")
def score_naive(inputs: ScoringInputs, backend: LogProbBackend, micro_batch_size: int) -> ScoredJ:
    """One sequence per cut: ``prompt + response[:c] + answer`` for ``c ∈ {0, c_1..c_m}`` (the
    paper's and the reference code's way, and the oracle of the faster modes)."""
    rows = inputs.rows.bool()
    # Slot 0 is the base cut c = 0; slot j is cut column j - 1.
    slot_cut = torch.nn.functional.pad(inputs.cuts, (1, 0))
    slot_valid = torch.cat([rows.unsqueeze(1), inputs.cut_mask.bool() & rows.unsqueeze(1)], dim=1)
    seq_row, seq_slot = torch.nonzero(slot_valid, as_tuple=True)
    answer_lengths_row = torch.tensor([ids.numel() for ids in inputs.answer_ids], dtype=torch.long)
    context_lengths = inputs.prompt_lengths[seq_row] + slot_cut[seq_row, seq_slot]
    answer_lengths = answer_lengths_row[seq_row]
    lengths = context_lengths + answer_lengths

    # Gather every sequence from the stored prompt+response ids and the answer ids, packed.
    input_values, input_offsets = inputs.input_ids.values(), inputs.input_ids.offsets()
    answer_values = torch.cat(inputs.answer_ids) if inputs.answer_ids else torch.zeros(0, dtype=torch.long)
    answer_offsets = torch.nn.functional.pad(answer_lengths_row.cumsum(0), (1, 0))
    owner, position = segment_positions(lengths)
    row = seq_row[owner]
    from_context = position < context_lengths[owner]
    context_index = (input_offsets[row] + position).clamp(max=max(input_values.numel() - 1, 0))
    answer_index = (answer_offsets[row] + position - context_lengths[owner]).clamp(0, max(answer_values.numel() - 1, 0))
    context_token = input_values[context_index] if input_values.numel() else torch.zeros_like(position)
    answer_token = answer_values[answer_index] if answer_values.numel() else torch.zeros_like(position)
    sequences = ScoringSequences(
        input_ids=torch.where(from_context, context_token, answer_token).to(torch.long),
        position_ids=position,
        lengths=lengths,
        answer_lengths=answer_lengths,
    )
    token_log_probs = backend.answer_log_probs(sequences, micro_batch_size)
    answer_owner, _ = segment_positions(answer_lengths)
    sums = torch.zeros(len(sequences), dtype=torch.float64).index_add_(0, answer_owner, token_log_probs.double())
    j = (sums / answer_lengths.clamp_min(1)).to(torch.float32)
    j_base, j_cuts = _scatter_j(inputs, seq_row, seq_slot, j)
    return ScoredJ(j_base=j_base, j_cuts=j_cuts, num_sequences=len(sequences), scored_tokens=int(lengths.sum()))


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
    boundary_ids: torch.Tensor,
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
        tokenizer, config, boundary_ids, think_end_id: the policy tokenizer, the ``repro`` group,
            ``boundary_token_ids(tokenizer, config.boundary_patterns)`` and the ``</think>`` id.
        backend: where the sequences are scored.
    """
    batch = responses.shape[0]
    if len(reward_models) != batch or padding.shape != (batch,) or input_ids.size(0) != batch:
        raise ValueError(
            f"RePro scoring: {batch} responses but {len(reward_models)} reward_model entries, "
            f"{tuple(padding.shape)} padding flags and {input_ids.size(0)} input_ids rows"
        )
    cuts, cut_mask, has_think_end = select_cuts(
        responses, response_mask, entropy.float(), boundary_ids, think_end_id, config.num_segments,
        no_think_end=config.no_think_end,
    )
    answers = render_answers(tokenizer, reward_models, config)
    padding = padding.bool()
    rows = answers.valid & ~padding & cut_mask.any(dim=1)
    prompt_lengths = prompt_lengths.to(torch.long)
    if bool((rows & (prompt_lengths <= 0)).any()):
        raise ValueError("RePro scoring: a response without a prompt token cannot be scored (prompt length 0)")
    mode = SCORING_MODES.get(config.scoring_mode)
    if mode is None:
        raise ValueError(f"repro.scoring_mode={config.scoring_mode!r} is not available; available: {sorted(SCORING_MODES)}")
    scored = mode(
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
# ``repro.scoring_mode=prefix_shared`` (issue 10): each response goes to the worker once, as
# ``[prompt + response | answer copy per cut]`` (``verl_repro.scoring.prefix_shared``), and the
# worker's engine runs it with a tree attention mask (``verl_repro.scoring.engine_step``, called from
# the ``repro`` engine vendor's ``forward_step``). A worker whose engine does not serve the layout is
# detected from its output, and the run falls back to ``naive`` with a logged reason.


_PREFIX_SHARED_REFUSED: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
"""Worker groups whose engine did not serve a prefix-shared batch (kept for the run: the trainer
builds a new :class:`LogProbBackend` every step) → the logged reason."""


def _worker_of(backend: LogProbBackend):
    return getattr(backend.compute_log_prob, "__self__", None) or backend.compute_log_prob


@register_scoring_mode("prefix_shared")
def score_prefix_shared(inputs: ScoringInputs, backend: LogProbBackend, micro_batch_size: int) -> ScoredJ:
    """All cuts of a response in one worker sequence; ``micro_batch_size`` counts whole responses here."""
    import logging

    from verl.utils import tensordict_utils as tu

    from verl_repro.scoring import prefix_shared as ps

    if _worker_of(backend) in _PREFIX_SHARED_REFUSED:
        return score_naive(inputs, backend, micro_batch_size)
    rows = inputs.rows.bool()
    answer_lengths = torch.tensor([ids.numel() for ids in inputs.answer_ids], dtype=torch.long)
    layout = ps.build_prefix_shared_batch(
        inputs.input_ids.values(), inputs.input_ids.offsets(), inputs.prompt_lengths, inputs.cuts,
        torch.cat([rows.unsqueeze(1), inputs.cut_mask.bool() & rows.unsqueeze(1)], dim=1),
        torch.cat(list(inputs.answer_ids)).long() if inputs.answer_ids else torch.zeros(0, dtype=torch.long),
        answer_lengths,
    )
    if len(layout) == 0:
        j_base, j_cuts = _scatter_j(inputs, layout.copy_row, layout.copy_slot, torch.zeros(0))
        return ScoredJ(j_base=j_base, j_cuts=j_cuts, num_sequences=0, scored_tokens=0)
    order, is_padding, layout_micro_batch = dp_layout(layout.sample_lengths, backend.dp_size, micro_batch_size)
    batch = TensorDict(ps.transport_tensors(layout, order), batch_size=[int(order.numel())])
    tu.assign_non_tensor(
        batch, temperature=backend.temperature, calculate_entropy=False, compute_loss=False,
        use_dynamic_bsz=False, micro_batch_size_per_gpu=layout_micro_batch, **backend.extra_non_tensor,
    )
    output = backend.compute_log_prob(batch)
    if output is None or ps.SERVED_KEY not in output.keys() or "log_probs" not in output.keys():
        reason = _PREFIX_SHARED_REFUSED[_worker_of(backend)] = (
            "the workers' engine did not apply the prefix-shared layout; run the workers with the repro "
            "engine vendor (+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR=repro)"
        )
        logging.getLogger("verl_repro").warning("repro.scoring_mode=prefix_shared falls back to naive for this run: %s", reason)
        return score_naive(inputs, backend, micro_batch_size)
    token_log_probs = ps.scored_from_slots(layout, order, is_padding, output["log_probs"])
    j_base, j_cuts = _scatter_j(inputs, layout.copy_row, layout.copy_slot, ps.copy_means(layout, token_log_probs))
    served = output[ps.SERVED_KEY].values().cpu()[ps.slot_of_sample(order, is_padding, len(layout))]
    scored_tokens = ps.fed_tokens(layout, served == ps.SERVED_NAIVE)
    return ScoredJ(j_base=j_base, j_cuts=j_cuts, num_sequences=len(layout), scored_tokens=scored_tokens)
