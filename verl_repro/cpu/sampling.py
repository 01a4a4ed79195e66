"""Batched autoregressive sampling with per-token log-probs for any HF causal LM.

The decode loop is written out (rather than calling ``model.generate``) so that the semantics
are the ones veRL's trainer assumes and do not drift with transformers releases:

* temperature ``T``: logits are divided by ``T``; ``T == 0`` means greedy decoding;
* top-k (``k <= 0``: off) is applied before top-p (``p >= 1``: off), both on the
  temperature-scaled distribution, as vLLM does;
* the returned log-prob of a sampled token is ``log_softmax(logits / T)[token]`` over the full
  vocabulary, without the top-k/top-p truncation: the same quantity as veRL's actor computes
  in its old-log-prob pass (``logits / T`` then ``log_softmax``), so the two can be compared;
  for greedy decoding (``T == 0``) it is the log-prob at ``T = 1``;
* a sequence ends after its first end-of-sequence token (included in the output, as vLLM
  returns it) or after ``max_new_tokens`` tokens;
* given one random generator per prompt, each row draws from its own stream (one uniform per
  token, inverse CDF), so a response does not depend on which other prompts share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from verl_repro.algorithms.padding import pad_token_lists


@dataclass(frozen=True)
class SamplingSettings:
    """One request's sampling parameters, normalized (hashable: requests are batched by it)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 16
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class SampledSequence:
    """token_ids: response tokens; log_probs: one float per token; finish_reason: "stop" | "length"."""

    token_ids: list[int]
    log_probs: list[float]
    finish_reason: str


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k, then outside the top-p nucleus, with ``-inf``.

    logits: [B, V] float, already temperature-scaled. Returns a new [B, V] tensor. The nucleus
    keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the token
    that crosses the threshold is kept), and always at least one token.
    """
    filtered = logits.clone()
    vocab_size = filtered.shape[-1]
    if 0 < top_k < vocab_size:
        kth_largest = torch.topk(filtered, top_k, dim=-1).values[..., -1:]
        filtered = filtered.masked_fill(filtered < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(filtered, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # probability mass strictly before each token; a token is dropped once that mass >= top_p
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_index, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    return filtered


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw, one token per row.

    probs: [B, V] float, non-negative (rows need not sum to 1); uniforms: [B] float in [0, 1).
    Returns [B] long: the first token whose cumulative probability exceeds ``u · Σp``. A token of
    probability 0 is never drawn."""
    cdf = probs.double().cumsum(-1)
    targets = uniforms.double()[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    # u · Σp can round up to Σp itself: fall back to the last token of non-zero probability
    last_possible = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(drawn, last_possible)


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on tokens already in prompt or response. seen: [B, V] bool."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    settings: SamplingSettings,
    eos_token_ids: set[int],
    pad_token_id: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> list[SampledSequence]:
    """Sample one response per prompt with a KV cache, prompts left-padded into one batch.

    model: HF causal LM (``model(input_ids, attention_mask, position_ids, past_key_values,
    use_cache)`` → ``.logits [B, L, V]``, ``.past_key_values``). prompts: token ids, each
    non-empty. generator: one for the whole batch, or one per prompt (each row then draws from its
    own stream). Returns one :class:`SampledSequence` per prompt, in order.
    """
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("sample_batch needs at least one prompt and no empty prompt")
    row_generators = None if generator is None or isinstance(generator, torch.Generator) else list(generator)
    if row_generators is not None and len(row_generators) != len(prompts):
        raise ValueError(f"sample_batch got {len(row_generators)} generators for {len(prompts)} prompts")
    device = next(model.parameters()).device
    batch_size = len(prompts)
    input_ids, attention_mask = pad_token_lists(prompts, pad_token_id, left=True)
    input_ids, attention_mask = input_ids.to(device), attention_mask.long().to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)

    output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    logits = output.logits[:, -1, :].float()
    past_key_values = output.past_key_values
    next_position = position_ids[:, -1:] + 1

    seen = None
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros((batch_size, logits.shape[-1]), dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, attention_mask.bool())

    tokens_out = torch.full((batch_size, settings.max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    log_probs_out = torch.zeros((batch_size, settings.max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    stopped_on_eos = torch.zeros(batch_size, dtype=torch.bool, device=device)

    for step in range(settings.max_new_tokens):
        if seen is not None:
            logits = _apply_repetition_penalty(logits, seen, settings.repetition_penalty)
        scale = 1.0 if settings.greedy else settings.temperature
        log_probs = torch.log_softmax(logits / scale, dim=-1)
        if settings.greedy:
            next_tokens = logits.argmax(dim=-1)
        else:
            filtered = filter_top_k_top_p(logits / scale, settings.top_k, settings.top_p)
            probs = torch.softmax(filtered, dim=-1)
            if row_generators is None:
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
            else:
                uniforms = torch.stack([torch.rand((), dtype=torch.float64, generator=g) for g in row_generators])
                next_tokens = draw_tokens(probs, uniforms.to(probs.device))
        active = ~finished
        tokens_out[:, step] = torch.where(active, next_tokens, torch.full_like(next_tokens, pad_token_id))
        log_probs_out[:, step] = torch.where(
            active, log_probs.gather(-1, next_tokens[:, None]).squeeze(-1), torch.zeros_like(log_probs[:, 0])
        )
        lengths += active.long()
        hit_eos = active & torch.isin(next_tokens, eos)
        stopped_on_eos |= hit_eos
        finished |= hit_eos
        if bool(finished.all()) or step + 1 == settings.max_new_tokens:
            break
        if seen is not None:
            seen.scatter_(1, next_tokens[:, None], active[:, None])
        attention_mask = torch.cat([attention_mask, active.long()[:, None]], dim=-1)
        output = model(
            input_ids=tokens_out[:, step : step + 1],
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=past_key_values,
            use_cache=True,
        )
        logits = output.logits[:, -1, :].float()
        past_key_values = output.past_key_values
        next_position = next_position + 1

    results = []
    for row in range(batch_size):
        length = int(lengths[row])
        results.append(
            SampledSequence(
                token_ids=tokens_out[row, :length].tolist(),
                log_probs=log_probs_out[row, :length].tolist(),
                finish_reason="stop" if bool(stopped_on_eos[row]) else "length",
            )
        )
    return results
