"""``verl-repro inversion``: the entropy–gradient inversion signature of a model (CorR-PO, docs/corrpo.md).

For every response (read from a file, or sampled with HF ``generate``) it computes, teacher-forced
exactly as veRL's old-log-prob pass does, the per-token entropy ``H_t`` and logit-gradient norm
``g_t = ||softmax(z_t/τ) − onehot(y_t)||₂`` (:func:`verl_repro.kernels.token_stats_from_logits`), then

* per response: ``ρ_i`` (Spearman and Pearson) over its in-scope tokens — the quantity the
  ``corrpo`` estimator regularizes — split by correctness;
* pooled: the correlation over all in-scope tokens of all responses;
* per unique token: the correlation across vocabulary entries of their mean ``H`` and mean ``g``;
* the parameter-gradient fingerprint (small models): for the most frequent unique tokens, the norm
  of ``∂z_{t,y}/∂θ`` — the gradient of the token's own raw logit at one of its occurrences — over
  chosen parameters θ (default: attention projections), Frobenius or nuclear, correlated across
  tokens with the entropy at that occurrence.

It writes ``summary.json`` (NaN-free: undefined statistics are ``null``) and PNG plots.

Input rows are read by :mod:`verl_repro.analysis.frontend` (jsonl / json / parquet; its docstring
lists the field names): a rendered ``prompt`` / ``input`` string is used as is, a message list gets
the chat template, a bare ``question`` / ``problem`` becomes the user turn with the boxed-answer
hint; a row without a response gets ``--samples-per-prompt`` sampled ones; ``score`` (veRL's
rollout dumps) is the outcome score.

Correctness: a row's ``score`` when given (correct when > 0, as in the ``corrpo`` metrics), else the
math verifier (``verl_repro.rewards.MathVerifier``: last ``\\boxed{}`` after the first ``</think>``,
compared by math-verify; a model whose tokenizer has no ``</think>`` is graded on the whole response),
else unknown. veRL's dumps are decoded with ``skip_special_tokens=True``: their text has no
``</think>``, so every token counts as thinking there.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from verl_repro.algorithms.padding import pad_token_lists
from verl_repro.analysis import figures
from verl_repro.analysis.frontend import (
    USER_SUFFIX,
    Trajectory,
    bundled_problems,
    encode,
    end_token_ids,
    grade_responses,
    load_model,
    pad_token_id,
    read_rows,
    render_prompt,
    to_trajectory,
)
from verl_repro import UsageError
from verl_repro.cli import claim_output_dir, count, number
from verl_repro.config import CORRELATION_KINDS, TOKEN_SCOPES, CorrConfig

DEFAULT_FINGERPRINT_PARAMS = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight$"
FINGERPRINT_NORMS = ("fro", "nuc")


DEFAULT_OUTPUT_PARENT = "outputs/inversion"


def _regex(text: str) -> str:
    import re

    try:
        re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression ({error}): {text!r}") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CorrConfig()
    parser.add_argument("--model", default=None, help="HF checkpoint path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default=None, help="jsonl / parquet of prompts (+ responses); default: the bundled demo problems, sampled")
    parser.add_argument("--output-dir", default=None, help=f"must be empty (default: a new numbered folder under {DEFAULT_OUTPUT_PARENT}/)")
    parser.add_argument("--limit", type=count(optional_limit=True), default=None, help="use the first N rows (default: all)")
    parser.add_argument("--samples-per-prompt", type=count(), default=4, help="responses sampled per prompt without a response")
    parser.add_argument("--max-new-tokens", type=count(), default=256)
    parser.add_argument("--temperature", type=number(above=0), default=1.0, help="sampling temperature, and τ of the statistics (as veRL's old-log-prob pass)")
    parser.add_argument("--top-p", type=number(above=0, maximum=1), default=1.0)
    parser.add_argument("--greedy", action="store_true", help="decode greedily instead of sampling (statistics still at --temperature)")
    parser.add_argument("--generation-batch-size", type=count(), default=8, help="prompts per generate call")
    parser.add_argument("--kind", choices=CORRELATION_KINDS, default=defaults.kind, help="correlation for the headline ρ (both are reported)")
    parser.add_argument("--scope", choices=TOKEN_SCOPES, default=defaults.scope, help="repro.corr.scope")
    parser.add_argument("--min-tokens", type=count(minimum=3), default=defaults.min_tokens, help="repro.corr.min_tokens")
    parser.add_argument("--think-end-token", default="</think>")
    parser.add_argument("--matrices", default=",".join(defaults.matrices), help="repro.corr.matrices of the param_grad signal (comma-separated)")
    parser.add_argument("--norm", choices=("nuc", "fro"), default=defaults.norm, help="repro.corr.norm of the param_grad signal")
    parser.add_argument("--aggregate", choices=("mean", "sum"), default=defaults.aggregate, help="repro.corr.aggregate of the param_grad signal")
    parser.add_argument("--fingerprint-params", type=_regex, default=DEFAULT_FINGERPRINT_PARAMS, help="regex over parameter names (re.search)")
    parser.add_argument("--fingerprint-norm", choices=FINGERPRINT_NORMS, default="fro", help="matrix norm of each parameter's gradient")
    parser.add_argument("--fingerprint-tokens", type=count(minimum=0), default=64, help="most frequent unique tokens fingerprinted; 0 disables")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default="float32",
                        help="model dtype; float64 (CPU, small models) makes the statistics exact to float32 rounding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ----------------------------------------------------------------------------- inputs


@dataclass
class Sample:
    """One response to analyse: token ids of prompt and response, and what grades it."""

    row: int
    sample: int
    prompt_ids: list[int]
    response_ids: list[int]
    response_text: str
    ground_truth: Optional[str]
    score: Optional[float]


def load_rows(path: str | Path | None) -> list[Trajectory]:
    """The rows of ``--data`` as trajectories (a response is optional); ``None``: the bundled demo problems."""
    if path is None:
        return bundled_problems()
    return [to_trajectory(f"row {row}", record, need_response=False) for row, (_, record) in enumerate(read_rows(path, "--data"))]


def render_prompt_ids(tokenizer, trajectory: Trajectory) -> list[int]:
    """Prompt token ids: a bare question is the chat's user turn with the boxed-answer hint, a
    rendered prompt is used as is, a message list gets the chat template."""
    text = render_prompt(tokenizer, trajectory.prompt, "chat" if trajectory.is_question else "raw", suffix=USER_SUFFIX)
    return encode(tokenizer, [text])[0]


def sample_responses(model, tokenizer, prompt_ids: list[list[int]], n: int, *, max_new_tokens: int, temperature: float,
                     top_p: float, batch_size: int, progress: bool, greedy: bool = False) -> list[list[list[int]]]:
    """``n`` sampled responses per prompt (HF ``generate``, left-padded batches).

    Returns, per prompt, ``n`` lists of response ids, each cut after its first end-of-sequence
    token (kept, as veRL keeps it in the response).
    """
    import torch
    from tqdm.auto import tqdm

    from verl_repro.analysis import hf_scoring

    pad_id, eos_ids = pad_token_id(tokenizer), end_token_ids(model, tokenizer)
    rows = [list(ids) for ids in prompt_ids for _ in range(n)]
    with tqdm(total=len(rows), desc="sampling", unit="response", disable=not progress) as bar, torch.no_grad():
        response_ids, response_mask = hf_scoring.sample_responses(
            model, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            eos_token_id=eos_ids, pad_id=pad_id, micro_batch_size=batch_size * n, progress=bar.update, greedy=greedy,
        )
    flat = [response_ids[row, : int(response_mask[row].sum())].tolist() for row in range(len(rows))]
    return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]


# ----------------------------------------------------------------------------- correctness


def grade(samples: list[Sample], tokenizer, think_end_token: Optional[str]) -> tuple[list[Optional[bool]], str]:
    """Correctness per sample (``None``: unknown) and a word on how it was decided."""
    correct: list[Optional[bool]] = [None if s.score is None else s.score > 0 for s in samples]
    to_grade = [i for i, s in enumerate(samples) if s.score is None and s.ground_truth]
    if not to_grade:
        return correct, "score" if any(c is not None for c in correct) else "unknown"
    graded = grade_responses(
        [samples[i].response_text for i in to_grade], [samples[i].ground_truth for i in to_grade],
        require_think_end=think_end_token is not None, think_end_token=think_end_token or "</think>",
        strip_texts=tokenizer.all_special_tokens,
    )
    for i, value in zip(to_grade, graded):
        correct[i] = value
    return correct, "math-verify"


# ----------------------------------------------------------------------------- statistics


def _stat(value: Any) -> Optional[float]:
    """A JSON-safe float: non-finite → ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def flat_correlations(x, y) -> dict[str, Optional[float]]:
    """Spearman and Pearson of two 1-D tensors (``None`` when undefined)."""
    from verl_repro.algorithms import masked_correlation

    x, y = x.reshape(1, -1), y.reshape(1, -1)
    mask = x.new_ones(x.shape, dtype=bool)
    out: dict[str, Optional[float]] = {"num_points": int(x.shape[1])}
    for kind in CORRELATION_KINDS:
        result = masked_correlation(x, y, mask, kind=kind, min_tokens=2) if x.shape[1] else None
        out[kind] = _stat(result.rho[0]) if result is not None and bool(result.defined[0]) else None
    return out


def unique_token_means(token_ids, entropy, grad_norm):
    """Per unique token id: ``(ids [U], counts [U], mean H [U], mean g [U])`` over 1-D inputs."""
    import torch

    ids, inverse, counts = torch.unique(token_ids, return_inverse=True, return_counts=True)
    mean_entropy = torch.zeros(ids.shape, dtype=torch.float64).index_add_(0, inverse, entropy.double()) / counts
    mean_grad = torch.zeros(ids.shape, dtype=torch.float64).index_add_(0, inverse, grad_norm.double()) / counts
    return ids, counts, mean_entropy, mean_grad


def parameter_gradient_norm(gradients, norm: str) -> float:
    """``sqrt(Σ_p ||G_p||²)`` over parameters; matrices use the ``fro`` or ``nuc`` norm, vectors the 2-norm."""
    import torch

    total = 0.0
    for gradient in gradients:
        gradient = gradient.double()
        if gradient.dim() == 2:
            value = torch.linalg.matrix_norm(gradient, ord=norm)
        else:
            value = gradient.norm()
        total += float(value) ** 2
    return math.sqrt(total)


def fingerprint(model, samples: list[Sample], occurrences: list[tuple[int, int]], param_pattern: str, norm: str,
                progress: bool) -> tuple[list[float], list[str]]:
    """Gradient norm of the raw logit ``z_{t, y_t}`` w.r.t. the chosen parameters, per occurrence.

    Args:
        occurrences: ``(sample index, response position)`` pairs.
        param_pattern: regex (``re.search``) over ``model.named_parameters()`` names.
        norm: ``fro`` | ``nuc``; see :func:`parameter_gradient_norm`.

    Returns:
        ``(norms in the order of occurrences, names of the parameters used)``.
    """
    import re

    import torch
    from tqdm.auto import tqdm

    names, params = [], []
    for name, param in model.named_parameters():
        if re.search(param_pattern, name):
            names.append(name)
            params.append(param)
    if not params:
        raise UsageError(f"--fingerprint-params {param_pattern!r} matches no parameter of the model")
    device = params[0].device
    by_sample: dict[int, list[tuple[int, int]]] = {}
    for order, (index, position) in enumerate(occurrences):
        by_sample.setdefault(index, []).append((order, position))
    norms = [math.nan] * len(occurrences)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        with tqdm(total=len(occurrences), desc="fingerprint", unit="token", disable=not progress) as bar:
            for index, wanted in by_sample.items():
                sample = samples[index]
                ids = torch.tensor([sample.prompt_ids + sample.response_ids], device=device)
                prompt_length = len(sample.prompt_ids)
                logits = model(input_ids=ids).logits[0]
                for order, position in wanted:
                    # Logits at p predict token p + 1: response token t is predicted at prompt_length - 1 + t.
                    raw_logit = logits[prompt_length - 1 + position, sample.response_ids[position]]
                    gradients = torch.autograd.grad(raw_logit, params, retain_graph=True)
                    norms[order] = parameter_gradient_norm(gradients, norm)
                    bar.update(1)
                del logits
    finally:
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
    return norms, names


# ----------------------------------------------------------------------------- the command


def response_param_grad(model, prompt_ids: list[int], response_ids: list[int], matrices, norm: str, aggregate: str):
    """``s_t`` of CorR-PO's ``param_grad`` signal for each response token, teacher-forced: the norm of
    ``∂z[t, y_t]/∂W`` at the position that predicts ``y_t`` (raw logits, no temperature), ``[len(response)]``."""
    import torch

    from verl_repro.gradients import FAST_MATRICES, UnsupportedModelError, forward_with_logit_gradient_norms, logit_gradient_norms

    device = next(model.parameters()).device
    tokens = torch.tensor([prompt_ids + response_ids], dtype=torch.long, device=device)
    targets = torch.roll(tokens, -1, dims=1)
    measure = torch.zeros_like(tokens, dtype=torch.bool)
    start = len(prompt_ids) - 1
    measure[0, start : start + len(response_ids)] = True
    # q/v/o have the fast form; k_proj (no low-rank form under RoPE) takes per-token autograd
    fast = [m for m in matrices if m in FAST_MATRICES]
    exact = [m for m in matrices if m not in FAST_MATRICES]
    columns: dict[str, torch.Tensor] = {}
    if fast:
        try:
            _, norms = forward_with_logit_gradient_norms(model, tokens, targets, measure_mask=measure, matrices=fast,
                                                         norm=norm, return_logits=False)
        except UnsupportedModelError:
            exact = list(matrices)
        else:
            columns.update({m: norms[..., i] for i, m in enumerate(fast)})
    if exact:
        norms = logit_gradient_norms(model, tokens, targets, measure_mask=measure, matrices=exact, norm=norm, method="exact")[:, :, 0]
        columns.update({m: norms[..., i] for i, m in enumerate(exact)})
    norms = torch.stack([columns[m].float() for m in matrices], dim=-1)
    combined = norms.sum(-1) if aggregate == "sum" else norms.mean(-1)
    return combined[0, start : start + len(response_ids)]


def run(args: argparse.Namespace) -> int:
    import torch

    from verl_repro.algorithms import masked_correlation, scope_mask
    from verl_repro.analysis.hf_scoring import response_token_stats

    matrices = [m.strip() for m in args.matrices.split(",") if m.strip()]
    CorrConfig(kind=args.kind, scope=args.scope, min_tokens=args.min_tokens, matrices=matrices, norm=args.norm,
               aggregate=args.aggregate).validate()
    progress = not args.no_progress
    timings: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(args.seed)

    # 1. data, the output folder, the model: everything that can be refused before any work
    records = load_rows(args.data)[: args.limit]
    if not records:
        raise UsageError(f"--data {args.data}: no rows")
    output_dir = claim_output_dir(args.output_dir, DEFAULT_OUTPUT_PARENT)
    print(f"verl-repro inversion: results in {output_dir}", flush=True)
    model, tokenizer, model_path = load_model(args.model, device=args.device, dtype=args.dtype, progress=progress)
    device = next(model.parameters()).device
    if args.fingerprint_tokens > 0 and not any(re.search(args.fingerprint_params, name) for name, _ in model.named_parameters()):
        raise UsageError(f"--fingerprint-params {args.fingerprint_params!r} matches no parameter of the model")
    think_end_id: Optional[int] = None
    try:
        from verl_repro.algorithms import think_end_token_id

        think_end_id = think_end_token_id(tokenizer, args.think_end_token)
    except ValueError:
        pass  # not a thinking model: every response token is "thinking" (scope_mask's no-</think> rule)
    timings["load"] = time.perf_counter() - started

    # 2. responses: given, or sampled
    phase = time.perf_counter()
    samples: list[Sample] = []
    to_sample: list[tuple[int, list[int]]] = []
    for row, record in enumerate(records):
        ids = render_prompt_ids(tokenizer, record)
        if record.response is None:
            to_sample.append((row, ids))
            continue
        response_ids = encode(tokenizer, [record.response])[0]
        samples.append(Sample(row, 0, ids, response_ids, record.response, record.ground_truth, record.score))
    if to_sample:
        sampled = sample_responses(
            model, tokenizer, [ids for _, ids in to_sample], args.samples_per_prompt,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            batch_size=args.generation_batch_size, progress=progress, greedy=args.greedy,
        )
        for (row, prompt_ids), responses in zip(to_sample, sampled):
            for k, response_ids in enumerate(responses):
                text = tokenizer.decode(response_ids, skip_special_tokens=False)
                samples.append(Sample(row, k, prompt_ids, response_ids, text, records[row].ground_truth, None))
        samples.sort(key=lambda s: (s.row, s.sample))
    timings["sample"] = time.perf_counter() - phase
    empty = sum(1 for s in samples if not s.response_ids)

    # 3. per-token statistics (teacher-forced, as veRL's old-log-prob pass)
    phase = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    response_ids, response_mask = pad_token_lists([s.response_ids for s in samples], pad_id)
    length = response_ids.shape[1]
    entropy = torch.zeros(len(samples), length)
    grad_norm = torch.zeros(len(samples), length)
    param_grad = torch.zeros(len(samples), length)
    from tqdm.auto import tqdm

    for i in tqdm(range(len(samples)), desc="token statistics", unit="response", disable=not progress):
        if not samples[i].response_ids:
            continue
        stats = response_token_stats(
            model, [samples[i].prompt_ids], response_ids[i : i + 1], response_mask[i : i + 1],
            temperature=args.temperature, pad_id=pad_id,
        )
        entropy[i], grad_norm[i] = stats.entropy[0], stats.grad_norm[0]
        values = response_param_grad(model, samples[i].prompt_ids, samples[i].response_ids, matrices, args.norm, args.aggregate)
        param_grad[i, : values.numel()] = values.float().cpu()
    timings["token_stats"] = time.perf_counter() - phase

    # 4. correctness and correlations
    phase = time.perf_counter()
    correct, graded_by = grade(samples, tokenizer, args.think_end_token if think_end_id is not None else None)
    timings["grade"] = time.perf_counter() - phase
    scoped, has_think_end = scope_mask(response_mask, args.scope, response_ids, -1 if think_end_id is None else think_end_id)
    per_kind = {kind: masked_correlation(entropy.double(), grad_norm.double(), scoped, kind=kind, min_tokens=args.min_tokens) for kind in CORRELATION_KINDS}
    headline = per_kind[args.kind]
    flat_ids, flat_entropy, flat_grad = response_ids[scoped], entropy[scoped].double(), grad_norm[scoped].double()
    unique_ids, unique_counts, unique_entropy, unique_grad = unique_token_means(flat_ids, flat_entropy, flat_grad)

    responses = []
    for i, s in enumerate(samples):
        mask_i = scoped[i]
        responses.append(
            {
                "row": s.row,
                "sample": s.sample,
                "response_tokens": len(s.response_ids),
                "scope_tokens": int(mask_i.sum()),
                "has_think_end": bool(has_think_end[i]),
                "correct": correct[i],
                "defined": bool(headline.defined[i]),
                "rho_spearman": _stat(per_kind["spearman"].rho[i]) if bool(per_kind["spearman"].defined[i]) else None,
                "rho_pearson": _stat(per_kind["pearson"].rho[i]) if bool(per_kind["pearson"].defined[i]) else None,
                "entropy_mean": _stat(entropy[i][mask_i].double().mean()) if bool(mask_i.any()) else None,
                "grad_norm_mean": _stat(grad_norm[i][mask_i].double().mean()) if bool(mask_i.any()) else None,
                "response": s.response_text,
            }
        )

    def per_response_summary(kind: str) -> dict[str, Optional[float]]:
        values = [(r[f"rho_{kind}"], r["correct"]) for r in responses]
        return {
            "mean": _mean(v for v, _ in values),
            "correct_mean": _mean(v for v, c in values if c is True),
            "incorrect_mean": _mean(v for v, c in values if c is False),
        }

    # The paper's statistic for both signals: Spearman across unique tokens (mean H and mean s per
    # token id over the whole sample set), per model; and per-response ρ as CorR-PO regularizes it.
    signals = {}
    for signal, strength in (("param_grad", param_grad), ("softmax_grad", grad_norm)):
        flat_strength = strength[scoped].double()
        _, _, signal_entropy, signal_unique = unique_token_means(flat_ids, flat_entropy, flat_strength)
        rhos = masked_correlation(entropy.double(), strength.double(), scoped, kind="spearman", min_tokens=args.min_tokens)
        correct_mask = torch.tensor([c is True for c in correct], dtype=torch.bool)
        incorrect_mask = torch.tensor([c is False for c in correct], dtype=torch.bool)
        signals[signal] = {
            "unique_tokens": flat_correlations(signal_entropy, signal_unique),
            "per_response_spearman": {
                "mean": _mean(_stat(v) for v in rhos.rho[rhos.defined]),
                "correct_mean": _mean(_stat(v) for v in rhos.rho[rhos.defined & correct_mask]),
                "incorrect_mean": _mean(_stat(v) for v in rhos.rho[rhos.defined & incorrect_mask]),
                "defined": int(rhos.defined.sum()),
            },
            "pooled_tokens": flat_correlations(flat_entropy, flat_strength),
        }
    signals["param_grad"]["definition"] = {"matrices": matrices, "norm": args.norm, "aggregate": args.aggregate, "layer": -1}
    for i, record in enumerate(responses):
        mask_i = scoped[i]
        record["param_grad_mean"] = _stat(param_grad[i][mask_i].double().mean()) if bool(mask_i.any()) else None

    # 5. parameter-gradient fingerprint of the most frequent unique tokens
    phase = time.perf_counter()
    fingerprint_summary = None
    fingerprint_points: list[dict] = []
    if args.fingerprint_tokens > 0 and unique_ids.numel() > 0:
        # Most frequent first; ties by id, so the choice is deterministic.
        order = sorted(range(unique_ids.numel()), key=lambda u: (-int(unique_counts[u]), int(unique_ids[u])))[: args.fingerprint_tokens]
        rows_idx, positions = scoped.nonzero(as_tuple=True)  # row-major: the first hit of an id is its first occurrence
        first_hit: dict[int, int] = {}
        for hit, token in enumerate(flat_ids.tolist()):
            first_hit.setdefault(token, hit)
        occurrences = [(int(rows_idx[first_hit[int(unique_ids[u])]]), int(positions[first_hit[int(unique_ids[u])]])) for u in order]
        norms, param_names = fingerprint(model, samples, occurrences, args.fingerprint_params, args.fingerprint_norm, progress)
        for u, (i, t), value in zip(order, occurrences, norms):
            token = int(unique_ids[u])
            fingerprint_points.append(
                {
                    "token_id": token,
                    "text": tokenizer.decode([token]),
                    "count": int(unique_counts[u]),
                    "sample": i,
                    "position": t,
                    "entropy": _stat(entropy[i, t]),
                    "grad_norm": _stat(grad_norm[i, t]),
                    "param_grad_norm": _stat(value),
                }
            )
        fp_entropy = torch.tensor([p["entropy"] for p in fingerprint_points], dtype=torch.float64)
        fp_norm = torch.tensor([p["param_grad_norm"] for p in fingerprint_points], dtype=torch.float64)
        fingerprint_summary = {
            "norm": args.fingerprint_norm,
            "param_pattern": args.fingerprint_params,
            "num_params": len(param_names),
            "params": param_names,
            "entropy_vs_param_grad_norm": flat_correlations(fp_entropy, fp_norm),
            "tokens": fingerprint_points,
        }
    timings["fingerprint"] = time.perf_counter() - phase

    # 6. summary and plots
    plot_paths = figures.plot_inversion(output_dir, flat_entropy.numpy(), flat_grad.numpy(), responses, args.kind, fingerprint_points, args.fingerprint_norm)
    timings["total"] = time.perf_counter() - started
    summary = {
        "model": str(model_path),
        "data": args.data,
        "settings": {
            "kind": args.kind,
            "scope": args.scope,
            "min_tokens": args.min_tokens,
            "temperature": args.temperature,
            "think_end_token": args.think_end_token,
            "think_end_id": think_end_id,
            "dtype": args.dtype,
            "device": str(device),
            "samples_per_prompt": args.samples_per_prompt if to_sample else None,
            "max_new_tokens": args.max_new_tokens if to_sample else None,
            "seed": args.seed,
            "matrices": matrices,
            "norm": args.norm,
            "aggregate": args.aggregate,
        },
        "sampling": sampling_settings(args, sampled=len(to_sample) > 0, given=len(to_sample) < len(records)),
        "counts": {
            "rows": len(records),
            "responses": len(samples),
            "sampled_responses": sum(1 for s in samples if s.row in {row for row, _ in to_sample}),
            "empty_responses": empty,
            "scope_tokens": int(scoped.sum()),
            "responses_without_think_end": int((~has_think_end).sum()),
            "skipped": int(headline.skipped.sum()),
            "skipped_few_tokens": int(headline.too_few_tokens.sum()),
            "skipped_zero_variance": int(headline.zero_variance.sum()),
            "correct": sum(1 for c in correct if c is True),
            "incorrect": sum(1 for c in correct if c is False),
            "unknown_correctness": sum(1 for c in correct if c is None),
        },
        "correctness_from": graded_by,
        "rho_mean": per_response_summary(args.kind)["mean"],
        "per_response": {kind: per_response_summary(kind) for kind in CORRELATION_KINDS},
        "pooled_tokens": flat_correlations(flat_entropy, flat_grad),
        "unique_tokens": flat_correlations(unique_entropy, unique_grad),
        "signals": signals,
        "fingerprint": fingerprint_summary,
        "plots": [str(p) for p in plot_paths],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "responses": responses,
    }
    summary_path = output_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    _print_summary(summary, summary_path)
    return 0


def sampling_settings(args: argparse.Namespace, *, sampled: bool, given: bool) -> dict[str, Any]:
    """How the measured responses were produced: ρ moves with it (greedy responses give a more
    negative ρ than sampled ones), so the statistic is reported beside it."""
    decoding = "greedy" if args.greedy else f"temperature {args.temperature:g}, top-p {args.top_p:g}"
    parts = []
    if sampled:
        parts.append(f"sampled here: {decoding}, {args.samples_per_prompt} per prompt, ≤ {args.max_new_tokens} new tokens, seed {args.seed}")
    if given:
        parts.append(f"given in {args.data} (their sampling settings are whatever produced them)")
    return {
        "sampled": sampled,
        "given": given,
        "greedy": bool(args.greedy) if sampled else None,
        "temperature": args.temperature if sampled and not args.greedy else None,
        "top_p": args.top_p if sampled and not args.greedy else None,
        "statistics_temperature": args.temperature,
        "description": "; ".join(parts) + f"; statistics at temperature {args.temperature:g}",
    }


def _format(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _print_summary(summary: dict, path: Path) -> None:
    counts = summary["counts"]
    kind = summary["settings"]["kind"]
    per = summary["per_response"][kind]
    print(
        f"{counts['responses']} responses, {counts['scope_tokens']} in-scope tokens "
        f"({counts['skipped']} responses skipped; correctness from {summary['correctness_from']}: "
        f"{counts['correct']} correct, {counts['incorrect']} incorrect, {counts['unknown_correctness']} unknown)"
    )
    print(f"responses: {summary['sampling']['description']}")
    print("Spearman ρ(H, s) across unique tokens (the paper's statistic; reasoning models ≈ -0.65, base models -0.17..+0.15),")
    print(f"  on those responses (ρ depends on how they were sampled); param_grad: {summary['settings']['aggregate']} "
          f"{summary['settings']['norm']} norm over {', '.join(summary['settings']['matrices'])} of the last layer:")
    for signal, values in summary["signals"].items():
        unique, per_signal = values["unique_tokens"], values["per_response_spearman"]
        print(
            f"  {signal:<12} unique tokens ({unique['num_points']}) {_format(unique['spearman'])}; "
            f"per response mean {_format(per_signal['mean'])} (correct {_format(per_signal['correct_mean'])}, "
            f"incorrect {_format(per_signal['incorrect_mean'])})"
        )
    print(f"softmax_grad per-response ρ ({kind}): mean {_format(per['mean'])}, correct {_format(per['correct_mean'])}, incorrect {_format(per['incorrect_mean'])}")
    pooled, unique = summary["pooled_tokens"], summary["unique_tokens"]
    print(f"pooled tokens: spearman {_format(pooled['spearman'])}, pearson {_format(pooled['pearson'])}")
    print(f"unique tokens ({unique['num_points']}): spearman {_format(unique['spearman'])}, pearson {_format(unique['pearson'])}")
    if summary["fingerprint"] is not None:
        fp = summary["fingerprint"]["entropy_vs_param_grad_norm"]
        print(f"fingerprint ({fp['num_points']} tokens, {summary['fingerprint']['norm']}): spearman {_format(fp['spearman'])}, pearson {_format(fp['pearson'])}")
    print(f"wrote {path} and {len(summary['plots'])} plots in {summary['seconds']['total']:.1f} s")
