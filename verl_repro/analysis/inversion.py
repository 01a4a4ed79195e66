"""``verl-repro inversion``: the entropy–gradient inversion signature of a model (CorR-PO, DESIGN §3).

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

Input rows (jsonl or parquet), field names tried in order:

* prompt: ``prompt`` / ``input`` (a rendered string used as is, or a list of chat messages that gets
  the chat template), ``question`` / ``problem`` (a bare question: chat template, user turn);
* response: ``response`` / ``output`` — absent: ``--samples-per-prompt`` responses are sampled;
* ground truth: ``ground_truth`` / ``gts`` / ``answer`` / ``reward_model.ground_truth``;
* outcome score: ``score`` (veRL's rollout dumps: ``input``, ``output``, ``gts``, ``score``).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from verl_repro.config import CORRELATION_KINDS, TOKEN_SCOPES, CorrConfig

DEFAULT_FINGERPRINT_PARAMS = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight$"
FINGERPRINT_NORMS = ("fro", "nuc")
PROMPT_KEYS = ("prompt", "input", "question", "problem")
BARE_QUESTION_KEYS = ("question", "problem")
RESPONSE_KEYS = ("response", "output")
GROUND_TRUTH_KEYS = ("ground_truth", "gts", "answer")
BOXED_HINT = "\nPut the final answer in \\boxed{}."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CorrConfig()
    parser.add_argument("--model", default=None, help="HF checkpoint path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default=None, help="jsonl / parquet of prompts (+ responses); default: the bundled demo problems, sampled")
    parser.add_argument("--output-dir", default="outputs/inversion")
    parser.add_argument("--limit", type=int, default=None, help="use the first N rows")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="responses sampled per prompt without a response")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, and τ of the statistics (as veRL's old-log-prob pass)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--generation-batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--kind", choices=CORRELATION_KINDS, default=defaults.kind, help="correlation for the headline ρ (both are reported)")
    parser.add_argument("--scope", choices=TOKEN_SCOPES, default=defaults.scope, help="repro.corr.scope")
    parser.add_argument("--min-tokens", type=int, default=defaults.min_tokens, help="repro.corr.min_tokens")
    parser.add_argument("--think-end-token", default="</think>")
    parser.add_argument("--fingerprint-params", default=DEFAULT_FINGERPRINT_PARAMS, help="regex over parameter names (re.search)")
    parser.add_argument("--fingerprint-norm", choices=FINGERPRINT_NORMS, default="fro", help="matrix norm of each parameter's gradient")
    parser.add_argument("--fingerprint-tokens", type=int, default=64, help="most frequent unique tokens fingerprinted; 0 disables")
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


def _first(record: dict, keys: Iterable[str]) -> tuple[Optional[str], Any]:
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return key, value
    return None, None


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from parquet → Python lists / numbers, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_records(path: str | Path | None) -> list[dict]:
    """Rows of a ``.jsonl`` / ``.json`` (list) / ``.parquet`` file; ``None``: the bundled demo problems."""
    if path is None:
        from importlib.resources import files

        text = files("verl_repro").joinpath("data/demo_problems.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd

        return [_plain(row) for row in pd.read_parquet(path).to_dict(orient="records")]
    text = path.read_text()
    if path.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"--data {path}: a .json file must hold a list of rows")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"--data {path}:{number}: not a JSON line ({error.msg})") from None
    return rows


def render_prompt(record: dict, tokenizer, row: int) -> list[int]:
    """Prompt token ids of a row (see the module docstring for the accepted fields)."""
    key, prompt = _first(record, PROMPT_KEYS)
    if prompt is None:
        raise ValueError(f"row {row}: no prompt (looked for {', '.join(PROMPT_KEYS)})")
    if isinstance(prompt, list) or key in BARE_QUESTION_KEYS:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt) + BOXED_HINT}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages) + "\n"
    else:
        text = str(prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _ground_truth(record: dict) -> Optional[str]:
    _, value = _first(record, GROUND_TRUTH_KEYS)
    if value is None and isinstance(record.get("reward_model"), dict):
        value = record["reward_model"].get("ground_truth")
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


def _score(record: dict) -> Optional[float]:
    value = record.get("score")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def sample_responses(model, tokenizer, prompt_ids: list[list[int]], n: int, *, max_new_tokens: int, temperature: float,
                     top_p: float, batch_size: int, progress: bool) -> list[list[list[int]]]:
    """``n`` sampled responses per prompt (HF ``generate``, left-padded batches).

    Returns, per prompt, ``n`` lists of response ids, each cut after its first end-of-sequence
    token (kept, as veRL keeps it in the response).
    """
    import torch
    from tqdm.auto import tqdm

    from verl_repro.analysis import hf_scoring

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    rows = [list(ids) for ids in prompt_ids for _ in range(n)]
    with tqdm(total=len(rows), desc="sampling", unit="response", disable=not progress) as bar, torch.no_grad():
        response_ids, response_mask = hf_scoring.sample_responses(
            model, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            eos_token_id=eos_ids, pad_id=pad_id, micro_batch_size=batch_size * n, progress=bar.update,
        )
    flat = [response_ids[row, : int(response_mask[row].sum())].tolist() for row in range(len(rows))]
    return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]


# ----------------------------------------------------------------------------- correctness


def _fallback_correct(response: str, ground_truth: str, think_end_token: Optional[str]) -> bool:
    """Without ``verl_repro.rewards``: last ``\\boxed{}`` after ``</think>`` equals the ground truth as a string."""
    if think_end_token and think_end_token in response:
        response = response.split(think_end_token, 1)[1]
    start = max(response.rfind("\\boxed{"), -1)
    if start < 0:
        return False
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin, len(response)):
        if response[position] == "{":
            depth += 1
        elif response[position] == "}":
            if depth == 0:
                return response[begin:position].replace(" ", "") == ground_truth.replace(" ", "")
            depth -= 1
    return False


def grade(samples: list[Sample], tokenizer, think_end_token: Optional[str]) -> tuple[list[Optional[bool]], str]:
    """Correctness per sample (``None``: unknown) and a word on how it was decided."""
    correct: list[Optional[bool]] = [None if s.score is None else s.score > 0 for s in samples]
    to_grade = [i for i, s in enumerate(samples) if s.score is None and s.ground_truth]
    if not to_grade:
        return correct, "score" if any(c is not None for c in correct) else "unknown"
    try:
        from verl_repro.rewards import MathRewardConfig, MathVerifier
    except ImportError:
        for i in to_grade:
            correct[i] = _fallback_correct(samples[i].response_text, samples[i].ground_truth, think_end_token)
        return correct, "boxed string match"
    config = MathRewardConfig(require_think_end=think_end_token is not None, think_end_token=think_end_token or "</think>")
    verifier = MathVerifier(config, strip_texts=tuple(tokenizer.all_special_tokens))
    try:
        for i in to_grade:
            correct[i] = verifier.score(samples[i].response_text, samples[i].ground_truth).acc > 0
    finally:
        verifier.close()
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
        raise ValueError(f"--fingerprint-params {param_pattern!r} matches no parameter of the model")
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


def _progress_note(message: str, progress: bool) -> None:
    if progress:
        print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_repro.algorithms import masked_correlation, scope_mask
    from verl_repro.analysis import plots
    from verl_repro.analysis.hf_scoring import response_token_stats

    CorrConfig(kind=args.kind, scope=args.scope, min_tokens=args.min_tokens).validate()
    if args.samples_per_prompt < 1:
        raise SystemExit("--samples-per-prompt must be >= 1")
    if args.temperature <= 0:
        raise SystemExit("--temperature must be > 0")
    progress = not args.no_progress
    timings: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(args.seed)

    # 1. model and data
    if args.model is None:
        from verl_repro.demo_model import smollm2_checkpoint

        _progress_note("loading embedded SmolLM2-135M-Instruct (the first run converts the GGUF) ...", progress)
        model_path = smollm2_checkpoint()
    else:
        model_path = Path(args.model)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, args.dtype)).to(device).eval()
    records = load_records(args.data)[: args.limit]
    if not records:
        raise SystemExit(f"--data {args.data}: no rows")
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
        prompt_ids = render_prompt(record, tokenizer, row)
        _, response = _first(record, RESPONSE_KEYS)
        if response is None:
            to_sample.append((row, prompt_ids))
            continue
        response_ids = list(tokenizer(str(response), add_special_tokens=False)["input_ids"])
        samples.append(Sample(row, 0, prompt_ids, response_ids, str(response), _ground_truth(record), _score(record)))
    if to_sample:
        sampled = sample_responses(
            model, tokenizer, [ids for _, ids in to_sample], args.samples_per_prompt,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            batch_size=args.generation_batch_size, progress=progress,
        )
        for (row, prompt_ids), responses in zip(to_sample, sampled):
            for k, response_ids in enumerate(responses):
                text = tokenizer.decode(response_ids, skip_special_tokens=False)
                samples.append(Sample(row, k, prompt_ids, response_ids, text, _ground_truth(records[row]), None))
        samples.sort(key=lambda s: (s.row, s.sample))
    timings["sample"] = time.perf_counter() - phase
    empty = sum(1 for s in samples if not s.response_ids)

    # 3. per-token statistics (teacher-forced, as veRL's old-log-prob pass)
    phase = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = max(max((len(s.response_ids) for s in samples), default=1), 1)
    response_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(samples), length), dtype=torch.bool)
    for i, s in enumerate(samples):
        response_ids[i, : len(s.response_ids)] = torch.tensor(s.response_ids, dtype=torch.long)
        response_mask[i, : len(s.response_ids)] = True
    entropy = torch.zeros(len(samples), length)
    grad_norm = torch.zeros(len(samples), length)
    from tqdm.auto import tqdm

    for i in tqdm(range(len(samples)), desc="token statistics", unit="response", disable=not progress):
        if not samples[i].response_ids:
            continue
        stats = response_token_stats(
            model, [samples[i].prompt_ids], response_ids[i : i + 1], response_mask[i : i + 1],
            temperature=args.temperature, pad_id=pad_id,
        )
        entropy[i], grad_norm[i] = stats.entropy[0], stats.grad_norm[0]
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
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_paths = _plot(output_dir, flat_entropy, flat_grad, responses, args.kind, fingerprint_points, args.fingerprint_norm, plots)
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
        },
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
        "fingerprint": fingerprint_summary,
        "plots": [str(p) for p in plot_paths],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "responses": responses,
    }
    summary_path = output_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    _print_summary(summary, summary_path)
    return 0


def _plot(output_dir: Path, entropy, grad_norm, responses: list[dict], kind: str, fingerprint_points: list[dict], norm: str, plots) -> list[Path]:
    paths = []
    figure, ax = plots.new_figure()
    plots.scatter_with_trend(ax, entropy.numpy(), grad_norm.numpy())
    ax.set_xlabel("token entropy H (nats)")
    ax.set_ylabel("logit-gradient norm g = ||p − onehot(y)||")
    ax.set_title("entropy vs logit-gradient norm (in-scope tokens)")
    paths.append(plots.save_figure(figure, output_dir / "entropy_vs_grad_norm.png"))

    figure, ax = plots.new_figure()
    groups = {"correct": [], "incorrect": [], "unknown": []}
    for r in responses:
        if r[f"rho_{kind}"] is not None:
            groups[{True: "correct", False: "incorrect", None: "unknown"}[r["correct"]]].append(r[f"rho_{kind}"])
    plots.histogram_by_group(ax, groups, bins=20, value_range=(-1.0, 1.0))
    ax.set_xlabel(f"per-response ρ(H, g) ({kind})")
    ax.set_ylabel("responses")
    ax.set_title("per-response entropy–gradient correlation")
    paths.append(plots.save_figure(figure, output_dir / "rho_histogram.png"))

    if fingerprint_points:
        figure, ax = plots.new_figure()
        xs = [p["entropy"] for p in fingerprint_points]
        ys = [p["param_grad_norm"] for p in fingerprint_points]
        plots.scatter_with_trend(ax, xs, ys, num_bins=8, point_size=14, label=f"{len(xs)} unique tokens")
        ax.set_xlabel("token entropy H at the occurrence (nats)")
        ax.set_ylabel(f"||∂z_y/∂θ|| ({norm})")
        ax.set_title("parameter-gradient fingerprint")
        paths.append(plots.save_figure(figure, output_dir / "fingerprint.png"))
    return paths


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
    print(f"per-response ρ ({kind}): mean {_format(per['mean'])}, correct {_format(per['correct_mean'])}, incorrect {_format(per['incorrect_mean'])}")
    pooled, unique = summary["pooled_tokens"], summary["unique_tokens"]
    print(f"pooled tokens: spearman {_format(pooled['spearman'])}, pearson {_format(pooled['pearson'])}")
    print(f"unique tokens ({unique['num_points']}): spearman {_format(unique['spearman'])}, pearson {_format(unique['pearson'])}")
    if summary["fingerprint"] is not None:
        fp = summary["fingerprint"]["entropy_vs_param_grad_norm"]
        print(f"fingerprint ({fp['num_points']} tokens, {summary['fingerprint']['norm']}): spearman {_format(fp['spearman'])}, pearson {_format(fp['pearson'])}")
    print(f"wrote {path} and {len(summary['plots'])} plots in {summary['seconds']['total']:.1f} s")
