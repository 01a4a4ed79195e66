"""Direct HF-model passes of the offline tools: sampling, and the per-token statistics of responses.

``sample_responses`` samples with HF ``generate``; ``response_token_stats`` gives the per-token
entropy / logit-gradient norm of responses (teacher-forced), as veRL's old-log-prob pass would.
J at the cuts is :func:`verl_repro.scoring.score_j`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from verl_repro.algorithms.padding import pad_token_lists
from verl_repro.kernels import check_temperature


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
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt_ids[b]) - 1 : -1]
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
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one response per prompt with HF ``generate`` (left-padded micro-batches); the one
    generate loop of the offline tools, the demo walkthrough and ``scripts/evaluate.py``.

    Args:
        prompt_ids: N token lists (rendered prompts, no padding); repeat a prompt for n samples.
        temperature: sampling temperature (> 0; top-k off).
        greedy: decode greedily (the most likely token each step; ``temperature`` and ``top_p`` unused).
        top_p: nucleus sampling threshold (1.0: off).
        eos_token_id: the end-of-sequence id, or several (e.g. a model's ``generation_config``).
        progress: optional callable ``progress(num_done)`` called after each micro-batch.
    Returns:
        response_ids ``[N, T] long`` right-padded with ``pad_id`` and response_mask ``[N, T] bool``:
        a response ends with its first end-of-sequence token (kept, as vLLM returns it) or after
        ``max_new_tokens`` tokens.
    """
    if not greedy:
        check_temperature(temperature, "sampling temperature")
    device = next(model.parameters()).device
    eos_ids = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long)
    chunks_ids, chunks_mask = [], []
    for start in range(0, len(prompt_ids), micro_batch_size):
        rows = prompt_ids[start : start + micro_batch_size]
        input_ids, attention = pad_token_lists(rows, pad_id, left=True)
        width = input_ids.shape[1]
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.long().to(device), max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, eos_token_id=eos_ids.tolist(),
            # Greedy clears the sampling knobs so that a model's generation_config cannot re-enable them.
            **({"do_sample": False, "temperature": None, "top_p": None, "top_k": None} if greedy
               else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}),
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
