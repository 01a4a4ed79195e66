"""Direct HF-model passes used by the offline tools and as the oracle of the veRL scoring path.

``answer_log_likelihood`` is the naive RePro scorer written plainly: one sequence per cut,
``context + answer``, and J = mean log-prob of the answer tokens. ``response_token_stats`` gives
the per-token entropy / logit-gradient norm of sampled responses (teacher-forced), as veRL's
old-log-prob pass would.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


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
        ids, mask = _pad_right([list(contexts[i]) + list(answers[i]) for i in rows], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logp = log_probs.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        answer_mask = torch.zeros_like(token_logp)
        for row, i in enumerate(rows):
            begin = len(contexts[i]) - 1  # logits at position p predict token p + 1
            answer_mask[row, begin : begin + len(answers[i])] = 1.0
        out[rows] = (token_logp * answer_mask).sum(-1) / answer_mask.sum(-1)
    return out


def score_cuts(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: torch.Tensor,
    cuts: torch.Tensor,
    cut_mask: torch.Tensor,
    answer_ids: Sequence[Sequence[int]],
    micro_batch_size: int = 8,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive RePro scoring: J_b (cut 0) and J at every valid cut, one sequence per cut.

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


@torch.no_grad()
def response_token_stats(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    pad_id: int = 0,
):
    """Teacher-forced per-token statistics of each response token under ``model``.

    Returns a ``TokenStats`` of ``[B, T]`` float32 tensors (log p_y, entropy, Σp², g), zero on padding.
    """
    from verl_repro.kernels import TokenStats, token_stats_from_logits

    device = next(model.parameters()).device
    batch, length = response_ids.shape
    fields = {name: torch.zeros(batch, length) for name in TokenStats._fields}
    for b in range(batch):
        n = int(response_mask[b].sum())
        if n == 0:
            continue
        ids = torch.tensor([list(prompt_ids[b]) + response_ids[b, :n].tolist()], device=device)
        logits = model(input_ids=ids).logits[0, len(prompt_ids[b]) - 1 : -1]
        stats = token_stats_from_logits(logits, response_ids[b, :n].to(device), temperature=temperature)
        for name in TokenStats._fields:
            fields[name][b, :n] = getattr(stats, name).float().cpu()
    return TokenStats(**fields)


@torch.no_grad()
def sample_responses(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | Sequence[int],
    pad_id: int,
    micro_batch_size: int = 16,
    progress=None,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one response per prompt with HF ``generate`` (left-padded micro-batches).

    Args:
        prompt_ids: N token lists (rendered prompts, no padding); repeat a prompt for n samples.
        temperature: sampling temperature (> 0; top-k off).
        top_p: nucleus sampling threshold (1.0: off).
        eos_token_id: the end-of-sequence id, or several (e.g. a model's ``generation_config``).
        progress: optional callable ``progress(num_done)`` called after each micro-batch.
    Returns:
        response_ids ``[N, T] long`` right-padded with ``pad_id`` and response_mask ``[N, T] bool``:
        a response ends with its first end-of-sequence token (kept, as vLLM returns it) or after
        ``max_new_tokens`` tokens.
    """
    if temperature <= 0:
        raise ValueError(f"sampling temperature must be > 0, got {temperature!r}")
    device = next(model.parameters()).device
    eos_ids = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long)
    chunks_ids, chunks_mask = [], []
    for start in range(0, len(prompt_ids), micro_batch_size):
        rows = [list(ids) for ids in prompt_ids[start : start + micro_batch_size]]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
            temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, eos_token_id=eos_ids.tolist(),
        )[:, width:].cpu()
        is_eos = torch.isin(generated, eos_ids)
        after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # keep the eos itself, drop the padding after it
        chunks_ids.append(generated.masked_fill(after_eos, pad_id))
        chunks_mask.append(~after_eos)
        if progress is not None:
            progress(len(rows))
    length = max(ids.shape[1] for ids in chunks_ids)
    response_ids = torch.cat([torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=pad_id) for ids in chunks_ids])
    response_mask = torch.cat([torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=False) for mask in chunks_mask])
    return response_ids, response_mask
