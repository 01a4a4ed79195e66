"""RePro's J at the cuts written plainly: one right-padded sequence ``prompt + response[:c] + answer``
per cut, one HF forward per micro-batch.

It is the oracle that the scorers of :mod:`verl_repro.scoring` (prefix-shared and naive) are tested
and benchmarked against, and shares no code with them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from verl_repro.algorithms.padding import pad_token_lists


@torch.no_grad()
def answer_log_likelihood(
    model,
    contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    micro_batch_size: int = 8,
    pad_id: int = 0,
) -> torch.Tensor:
    """J for each ``(context, answer)`` pair: mean over answer tokens of ``log π(a_i | context, a_<i)``.

    Returns ``[N] float32``; an empty answer gives NaN (the caller's fallback counts it).
    """
    if len(contexts) != len(answers):
        raise ValueError(f"{len(contexts)} contexts but {len(answers)} answers")
    device = next(model.parameters()).device
    out = torch.full((len(contexts),), float("nan"), dtype=torch.float32)
    order = sorted(range(len(contexts)), key=lambda i: -(len(contexts[i]) + len(answers[i])))
    for start in range(0, len(order), micro_batch_size):
        rows = [i for i in order[start : start + micro_batch_size] if len(answers[i]) > 0]
        if not rows:
            continue
        ids, mask = pad_token_lists([list(contexts[i]) + list(answers[i]) for i in rows], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logp = log_probs.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        answer_mask = torch.zeros_like(token_logp)
        for row, i in enumerate(rows):
            begin = len(contexts[i]) - 1  # logits at position p predict token p + 1
            answer_mask[row, begin : begin + len(answers[i])] = 1.0
        out[rows] = (token_logp * answer_mask).sum(-1) / answer_mask.sum(-1)
    return out


def score_cuts_oracle(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    micro_batch_size: int = 8,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle of RePro scoring: J_b (cut 0) and J at every valid cut, one right-padded HF
    forward per micro-batch of ``context + answer`` sequences, written as plainly as possible and
    sharing no code with :mod:`verl_repro.scoring`.

    Args:
        prompt_ids: B token lists (no padding).
        response_ids: ``[B, T] long`` right-padded responses.
        cuts, cut_mask: ``[B, K]`` from ``select_cuts``.
        answer_ids: B rendered-answer token lists.
    Returns:
        j_base ``[B]`` and j_cuts ``[B, K]`` (float32; NaN where not scored).
    """
    contexts, answers, slots = [], [], []
    for b in range(len(prompt_ids)):
        if not bool(cut_mask[b].any()) or len(answer_ids[b]) == 0:
            continue
        response = response_ids[b].tolist()
        contexts.append(list(prompt_ids[b]))
        answers.append(answer_ids[b])
        slots.append((b, -1))
        for k in torch.nonzero(cut_mask[b]).flatten().tolist():
            contexts.append(list(prompt_ids[b]) + response[: int(cuts[b, k])])
            answers.append(answer_ids[b])
            slots.append((b, k))
    j_base = torch.full((len(prompt_ids),), float("nan"))
    j_cuts = torch.full(tuple(cuts.shape), float("nan"))
    if contexts:
        values = answer_log_likelihood(model, contexts, answers, micro_batch_size, pad_id)
        for (b, k), value in zip(slots, values.tolist()):
            if k < 0:
                j_base[b] = value
            else:
                j_cuts[b, k] = value
    return j_base, j_cuts
