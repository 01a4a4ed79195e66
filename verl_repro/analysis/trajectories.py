"""``verl-repro analyze``: RePro's view of reasoning trajectories — J̃ curves, backtracking, tokens.

For every trajectory (prompt + response + ground truth) the tool computes, with a Hugging Face
checkpoint as the policy:

* ``J̃`` — the mean log-prob of the rendered ground-truth answer appended after the response
  prefix — at *every* step boundary before ``</think>`` and at ``e + 1`` (docs/repro.md), plus
  ``J_b = J̃(0)``;
* the cuts RePro's top-k entropy selection would pick (``repro.num_segments``) and, at those cuts,
  the magnitude, stability and combined scores that training would turn into process rewards;
* correctness (the math-verify grader of :mod:`verl_repro.rewards`), response length, the number
  of backtracking phrases (:mod:`verl_repro.analysis.backtracking`) and whether ``</think>`` is
  present.

It writes ``trajectories.jsonl`` (one record per trajectory), ``summary.json`` (per-group means;
the J̃ curve of each group on ``--grid-points`` normalized step positions, see
:mod:`verl_repro.analysis.summary`) and PNG plots (:func:`verl_repro.analysis.figures.plot_run`).
``--compare A B`` does this for two checkpoints (or reads two earlier outputs) and adds one table
and one figure.

Inputs (read by :mod:`verl_repro.analysis.frontend`): veRL rollout dumps
(``trainer.rollout_data_dir``: ``<step>.jsonl`` files with ``input``, ``output``, ``gts``,
``score``, ``step``), plain jsonl / parquet with ``prompt`` / ``response`` / ``ground_truth``
(``prompt`` may be a chat message list, ``reward_model.ground_truth`` is read too), or prompts to
sample responses from (``--prompts``; veRL's dataset parquet works).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from verl_repro.analysis import figures
from verl_repro.analysis.frontend import (
    PROMPT_FORMATS,
    SYSTEM_PROMPT,
    USER_SUFFIX,
    Trajectory,
    bundled_problems,
    encode,
    end_token_ids,
    grade_responses,
    load_model,
    load_trajectories,
    pad_token_id,
    render_prompt,
)
from verl_repro.analysis.summary import compare_table, markdown_table, summarize
from verl_repro import UsageError
from verl_repro.cli import claim_output_dir, count, number
from verl_repro.config import SCORING_MODES, add_setting_arguments, settings_from_arguments
from verl_repro.scoring import score_j


# ----------------------------------------------------------------------------- the analysis


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def lookup_cut_values(all_cuts, all_mask, all_values, cuts, cut_mask):
    """Values at ``cuts [B, K]`` (a subset of each row's ``all_cuts [B, A]``) read from
    ``all_values [B, A]``; NaN where ``cut_mask`` is False. Raises if a cut is not in ``all_cuts``."""
    import torch

    sentinel = torch.iinfo(torch.long).max
    sorted_cuts = all_cuts.masked_fill(~all_mask, sentinel).contiguous()
    index = torch.searchsorted(sorted_cuts, cuts.contiguous()).clamp(max=all_cuts.shape[1] - 1)
    if bool((cut_mask & (sorted_cuts.gather(1, index) != cuts)).any()):
        raise AssertionError("a top-k cut is not among the step boundaries")
    return torch.where(cut_mask, all_values.gather(1, index), torch.tensor(float("nan"), dtype=all_values.dtype))


@dataclass
class TokenizedBatch:
    """``B`` trajectories as the policy's tokens; ``response_texts`` are what the grader and the
    backtracking counter read."""

    ids: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_texts: list[str]
    ground_truths: list[str | None]
    meta: list[dict]


def analyze_batch(model, tokenizer, batch: TokenizedBatch, correct: Sequence[bool | None], *, config, backtracking,
                  temperature: float = 1.0, scoring_mode: str = "auto", max_tokens_per_pass: int = 16384) -> tuple[list[dict], dict]:
    """Per-trajectory records for one batch (see the module docstring; every list in a record is
    over cuts, ascending) and the scorer's ``{"mode", "scored_tokens", "naive_tokens"}``.
    ``config`` is a :class:`~verl_repro.config.ReproConfig`."""
    import torch

    from verl_repro import algorithms as alg
    from verl_repro.analysis.hf_scoring import response_token_stats

    pad_id = pad_token_id(tokenizer)
    response_ids, response_mask = alg.pad_token_lists(batch.response_ids, pad_id)
    think_end_id = _think_end_id(tokenizer, config.think_end_token)
    boundaries = alg.step_boundaries(tokenizer, config.boundary_patterns)
    entropy = response_token_stats(model, batch.prompt_ids, response_ids, response_mask, temperature=temperature, pad_id=pad_id).entropy

    # Every boundary is a top-k selection with k = T (all candidates kept); training's cuts are a subset.
    select = lambda k: alg.select_cuts(response_ids, response_mask, entropy, boundaries, think_end_id, k, no_think_end=config.no_think_end)
    all_cuts, all_mask, has_think_end = select(max(response_ids.shape[1], 1))
    topk_cuts, topk_mask, _ = select(config.num_segments)
    full_answers = config.answer_token_ids(tokenizer, batch.ground_truths)
    answers = [ids[: config.max_answer_tokens] for ids in full_answers]
    j_base, j_all, scoring = score_j(model, batch.prompt_ids, response_ids, all_cuts, all_mask, answers,
                                     mode=scoring_mode, max_tokens_per_pass=max_tokens_per_pass)
    j_base, j_all = j_base.double(), j_all.double()
    j_topk = lookup_cut_values(all_cuts, all_mask, j_all, topk_cuts, topk_mask)

    nonfinite, near_zero = alg.invalid_j_rows(j_all, j_base, all_mask, config.j_base_eps)
    usable_row = topk_mask.any(dim=1) & ~nonfinite & ~near_zero
    usable = topk_mask & usable_row.unsqueeze(1)
    safe_j = torch.where(usable, j_topk, 0.0)
    safe_base = torch.where(usable_row, j_base, -1.0)
    magnitude = alg.magnitude_scores(safe_j, safe_base, config.j_base_eps)
    stability = alg.stability_scores(safe_j, safe_base, usable, config.stability_ema or None)
    combined = alg.repro_scores(j_topk, j_base, topk_mask, config.stability_weight, config.j_base_eps, stability_ema=config.stability_ema or None)

    records = []
    for b in range(len(batch.ids)):
        num_tokens = int(response_mask[b].sum())
        if num_tokens == 0:
            fallback = "empty_response"
        elif batch.ground_truths[b] is None or not answers[b]:
            fallback = "no_ground_truth"
        elif not bool(all_mask[b].any()):
            fallback = "no_think_end"
        elif bool(nonfinite[b]):
            fallback = "nonfinite_j"
        elif bool(near_zero[b]):
            fallback = "j_base_near_zero"
        else:
            fallback = None
        scored = fallback is None
        boundaries = all_cuts[b][all_mask[b]].tolist()
        chosen = topk_mask[b]
        counts = backtracking.count(batch.response_texts[b])
        records.append({
            "id": batch.ids[b],
            "correct": correct[b],
            "ground_truth": batch.ground_truths[b],
            "response_tokens": num_tokens,
            "has_think_end": bool(has_think_end[b]),
            "thinking_tokens": int(all_cuts[b][all_mask[b]][-1]) if bool(all_mask[b].any()) else None,
            "backtracking": sum(counts.values()),
            "backtracking_by_phrase": {p: n for p, n in counts.items() if n},
            "boundaries": boundaries,
            "j_base": _finite(j_base[b]) if scored else None,
            "j_curve": [_finite(j_base[b])] + [_finite(v) for v in j_all[b][all_mask[b]]] if scored else None,
            "topk_cuts": topk_cuts[b][chosen].tolist(),
            "j_topk": [_finite(v) for v in j_topk[b][chosen]] if scored else None,
            "magnitude": magnitude[b][chosen].tolist() if scored else None,
            "stability": stability[b][chosen].tolist() if scored else None,
            "score": combined[b][chosen].tolist() if scored else None,
            "final_magnitude": float(magnitude[b][chosen][-1]) if scored else None,
            "final_stability": float(stability[b][chosen][-1]) if scored else None,
            "final_score": float(combined[b][chosen][-1]) if scored else None,
            "fallback": fallback,
            "answer_truncated": len(full_answers[b]) > config.max_answer_tokens,
            "meta": batch.meta[b],
            "response": batch.response_texts[b],
        })
    return records, scoring


def _think_end_id(tokenizer, token: str) -> int:
    """``</think>``'s id, or -1 when the tokenizer has none (a non-thinking model: the response end
    acts as ``e`` under ``no_think_end=use_end``)."""
    from verl_repro.algorithms import think_end_token_id

    try:
        return think_end_token_id(tokenizer, token)
    except ValueError:
        return -1


def analyze(model, tokenizer, batch: TokenizedBatch, *, config, backtracking, temperature: float = 1.0,
            scoring_mode: str = "auto", max_tokens_per_pass: int = 16384, batch_size: int = 16,
            require_think_end: bool | None = None, progress: bool = False) -> tuple[list[dict], dict]:
    """Grade every trajectory, then :func:`analyze_batch` in chunks of ``batch_size`` (progress bar).

    Returns the records and the scoring totals ``{"modes", "scored_tokens", "naive_tokens", "seconds"}``.
    """
    from tqdm.auto import tqdm

    if require_think_end is None:
        require_think_end = _think_end_id(tokenizer, config.think_end_token) >= 0
    correct = grade_responses(
        batch.response_texts, batch.ground_truths, require_think_end=require_think_end,
        think_end_token=config.think_end_token, strip_texts=[t for t in tokenizer.all_special_tokens if t != config.think_end_token],
    )
    records, totals = [], {"modes": [], "scored_tokens": 0, "naive_tokens": 0, "seconds": 0.0}
    started = time.perf_counter()
    with tqdm(total=len(batch.ids), desc="scoring J̃", unit="traj", disable=not progress) as bar:
        for start in range(0, len(batch.ids), batch_size):
            chunk = slice(start, start + batch_size)
            part = TokenizedBatch(*(getattr(batch, name)[chunk] for name in TokenizedBatch.__dataclass_fields__))
            part_records, scoring = analyze_batch(model, tokenizer, part, correct[chunk], config=config, backtracking=backtracking,
                                                  temperature=temperature, scoring_mode=scoring_mode, max_tokens_per_pass=max_tokens_per_pass)
            records += part_records
            totals["modes"] = sorted(set(totals["modes"]) | {scoring["mode"]})
            totals["scored_tokens"] += scoring["scored_tokens"]
            totals["naive_tokens"] += scoring["naive_tokens"]
            bar.update(len(part.ids))
    totals["seconds"] = round(time.perf_counter() - started, 2)
    return records, totals


# ----------------------------------------------------------------------------- CLI


# The repro.* settings this tool exposes (their defaults and help: verl_repro.config.ReproConfig).
REPRO_KEYS = ("num_segments", "stability_weight", "stability_ema", "answer_template", "max_answer_tokens", "boundary_patterns", "no_think_end")
DEFAULT_OUTPUT_PARENT = "outputs/analyze"


def _step_choice(text: str) -> str:
    if text != "last" and not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"must be a step number or 'last', got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to analyze")
    source.add_argument("--model", default=None, help="HF checkpoint path (default: embedded SmolLM2-135M-Instruct)")
    source.add_argument("--trajectories", nargs="+", default=None, metavar="PATH",
                        help="jsonl / parquet / veRL rollout_data_dir with prompt+response+ground_truth; with --compare, one shared or one per run")
    source.add_argument("--prompts", default=None, help="jsonl / parquet of prompts (+ ground truth) to sample responses from (default: bundled demo problems)")
    source.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                        help="two checkpoints (or two earlier analyze output directories) side by side")
    source.add_argument("--labels", nargs=2, default=None, metavar=("LABEL_A", "LABEL_B"), help="names of the compared runs")
    source.add_argument("--step", type=_step_choice, default=None, help="veRL dumps: analyze one training step (an int, or 'last')")
    source.add_argument("--limit", type=count(optional_limit=True), default=None, help="at most this many trajectories / prompts (default: all)")
    source.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="auto",
                        help="string prompts: raw text (default for trajectories) or wrapped in the chat template (default for --prompts)")
    source.add_argument("--system-prompt", default=None, help="system message for --prompt-format chat")
    source.add_argument("--prompt-suffix", default=None, help="appended to string prompts for --prompt-format chat")
    sampling = parser.add_argument_group("sampling (--prompts)")
    sampling.add_argument("--samples-per-prompt", type=count(), default=3)
    sampling.add_argument("--max-new-tokens", type=count(), default=256)
    sampling.add_argument("--temperature", type=number(above=0), default=1.0,
                          help="rollout temperature: samples with it, and top-k ranks the entropy of softmax(logits / T) as veRL's old-log-prob pass does")
    sampling.add_argument("--seed", type=int, default=0)
    repro = parser.add_argument_group("RePro (repro.* keys)")
    # no_think_end: a response without </think> is scored up to its end, so every trajectory has a curve.
    add_setting_arguments(repro, REPRO_KEYS, no_think_end="use_end")
    repro.add_argument("--scoring-mode", choices=("auto", *SCORING_MODES), default="auto",
                       help="J̃ scorer (auto: prefix-shared, which scores naive on models whose attention cannot take its mask)")
    other = parser.add_argument_group("other")
    other.add_argument("--backtracking-phrases", default=None, help="comma-separated phrases, or @file (one per line)")
    other.add_argument("--backtracking-scope", choices=("thinking", "all"), default="thinking")
    other.add_argument("--require-think-end", choices=("auto", "yes", "no"), default="auto",
                       help="grading: only text after </think> counts (auto: when the tokenizer has </think>)")
    other.add_argument("--grid-points", type=count(minimum=2), default=11, help="points of the normalized step grid")
    other.add_argument("--batch-size", type=count(), default=16, help="trajectories per scoring chunk")
    other.add_argument("--tokens-per-pass", type=count(), default=16384, help="tokens per J̃ scoring forward (naive: padded)")
    other.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    other.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    other.add_argument("--no-progress", action="store_true")
    other.add_argument("--output-dir", default=None,
                       help=f"must be empty (default: a new numbered folder under {DEFAULT_OUTPUT_PARENT}/)")


def _settings(args):
    from verl_repro.analysis.backtracking import BacktrackingCounter, parse_phrases
    from verl_repro.config import ReproConfig

    config = ReproConfig(**settings_from_arguments(args, REPRO_KEYS)).validate()
    counter = BacktrackingCounter(parse_phrases(args.backtracking_phrases), args.backtracking_scope, config.think_end_token)
    return config, counter


def _tokenize_trajectories(tokenizer, trajectories: Sequence[Trajectory], prompt_format: str, system_prompt, suffix) -> TokenizedBatch:
    prompts = [render_prompt(tokenizer, t.prompt, prompt_format, system_prompt, suffix) for t in trajectories]
    responses = [t.response for t in trajectories]
    return TokenizedBatch(
        ids=[t.id for t in trajectories], prompt_ids=encode(tokenizer, prompts), response_ids=encode(tokenizer, responses),
        response_texts=responses,
        ground_truths=[t.ground_truth for t in trajectories], meta=[dict(t.meta) for t in trajectories],
    )


def _sample(model, tokenizer, problems: Sequence[Trajectory], args, prompt_format, system_prompt, suffix, progress: bool) -> TokenizedBatch:
    import torch
    from tqdm.auto import tqdm

    from verl_repro.analysis.hf_scoring import sample_responses

    torch.manual_seed(args.seed)
    n = args.samples_per_prompt
    prompt_ids = encode(tokenizer, [render_prompt(tokenizer, p.prompt, prompt_format, system_prompt, suffix) for p in problems])
    rows = [ids for ids in prompt_ids for _ in range(n)]
    pad_id = pad_token_id(tokenizer)
    eos_ids = end_token_ids(model, tokenizer)
    with tqdm(total=len(rows), desc="sampling", unit="resp", disable=not progress) as bar:
        response_ids, response_mask = sample_responses(
            model, rows, max_new_tokens=args.max_new_tokens, temperature=args.temperature, eos_token_id=eos_ids,
            pad_id=pad_id, micro_batch_size=args.batch_size, progress=bar.update,
        )
    lengths = response_mask.sum(1)
    finished = response_ids.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    finished = torch.isin(finished, torch.tensor(eos_ids)) & (lengths > 0)
    # The end-of-turn token is not part of the reasoning (a dump's decoded text has none either).
    responses = [response_ids[b, : n_b - int(f)].tolist() for b, (n_b, f) in enumerate(zip(lengths.tolist(), finished.tolist()))]
    # Keep special tokens: </think> may be one, and the grader strips the others itself.
    texts = tokenizer.batch_decode(responses, skip_special_tokens=False)
    return TokenizedBatch(
        ids=[f"{p.id}#{s}" for p in problems for s in range(n)], prompt_ids=rows, response_ids=responses, response_texts=texts,
        ground_truths=[p.ground_truth for p in problems for _ in range(n)],
        meta=[{**p.meta, "prompt_id": p.id, "sample": s, "finished": bool(finished[i * n + s])}
              for i, p in enumerate(problems) for s in range(n)],
    )


def analyze_run(model_path, args, trajectories_path: str | None, output_dir: Path, title: str = "") -> tuple[dict, list[dict]]:
    """Analyze one checkpoint on trajectories (or responses it samples) and write its outputs."""
    started = time.time()
    config, counter = _settings(args)
    progress = not args.no_progress
    if trajectories_path is not None:  # the rows first: a bad file costs no model load
        trajectories = load_trajectories(trajectories_path, step=args.step, limit=args.limit)
    elif args.prompts is not None:
        problems = load_trajectories(args.prompts, need_response=False, limit=args.limit, flag="--prompts")
    else:
        problems = bundled_problems(args.limit)
    model, tokenizer, model_path = load_model(model_path, device=args.device, dtype=args.dtype, progress=progress)
    if trajectories_path is not None:
        prompt_format = "raw" if args.prompt_format == "auto" else args.prompt_format
        batch = _tokenize_trajectories(tokenizer, trajectories, prompt_format, args.system_prompt, args.prompt_suffix or "")
        source = {"trajectories": str(trajectories_path)}
    else:
        system_prompt, suffix = args.system_prompt, args.prompt_suffix
        if args.prompts is None:
            system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
            suffix = USER_SUFFIX if suffix is None else suffix
        prompt_format = "chat" if args.prompt_format == "auto" else args.prompt_format
        batch = _sample(model, tokenizer, problems, args, prompt_format, system_prompt, suffix or "", progress)
        source = {"prompts": args.prompts or "bundled demo problems", "samples_per_prompt": args.samples_per_prompt,
                  "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
    require = {"auto": None, "yes": True, "no": False}[args.require_think_end]
    records, scoring = analyze(model, tokenizer, batch, config=config, backtracking=counter, temperature=args.temperature,
                      scoring_mode=args.scoring_mode, max_tokens_per_pass=args.tokens_per_pass, batch_size=args.batch_size,
                      require_think_end=require, progress=progress)
    summary = summarize(records, args.grid_points)
    summary.update({
        "model": str(model_path),
        "source": source,
        "config": {"num_segments": config.num_segments, "stability_weight": config.stability_weight,
                   "stability_ema": config.stability_ema, "answer_template": config.answer_template,
                   "no_think_end": config.no_think_end, "boundary_patterns": list(config.boundary_patterns),
                   "backtracking_phrases": list(counter.phrases), "backtracking_scope": counter.scope},
        "scoring": scoring,
        "seconds": round(time.time() - started, 1),
    })
    write_run(output_dir, summary, records, title)
    return summary, records


def write_run(output_dir: Path, summary: dict, records: Sequence[dict], title: str = "") -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    with open(output_dir / "trajectories.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    return figures.plot_run(records, summary, output_dir, title)


def load_run(directory: str | Path) -> tuple[dict, list[dict]]:
    """An earlier ``analyze`` output: ``(summary, records)``."""
    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    records = [json.loads(line) for line in (directory / "trajectories.jsonl").read_text().splitlines() if line.strip()]
    return summary, records


def _print_summary(summary: dict, label: str = "") -> None:
    head = f"{label}: " if label else ""
    accuracy = "n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.2f}"
    print(f"{head}{summary['num_trajectories']} trajectories, accuracy {accuracy}, fallbacks "
          f"{ {k: v for k, v in summary['fallbacks'].items() if v} or 'none'}")
    fmt = lambda v: "   n/a" if v is None else f"{v:6.2f}"
    print(f"  {'group':<10}{'n':>4} {'tokens':>7} {'backtr':>6} {'J_b':>6} {'J_end':>6} {'S_magn':>6} {'S_stab':>6}")
    for name, g in summary["groups"].items():
        print(f"  {name:<10}{g['count']:>4} {fmt(g['response_tokens_mean']):>7} {fmt(g['backtracking_mean'])} "
              f"{fmt(g['j_base_mean'])} {fmt(g['j_end_mean'])} {fmt(g['final_magnitude_mean'])} {fmt(g['final_stability_mean'])}")


def _label_of(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).resolve().name) or "run"


def _check_inputs(args: argparse.Namespace) -> None:
    """Everything an analyze run can refuse, before a model is loaded or a folder created."""
    if args.trajectories and len(args.trajectories) > (2 if args.compare else 1):
        raise UsageError(f"--trajectories takes {'one or two paths with --compare' if args.compare else 'one path'}, "
                         f"got {len(args.trajectories)}")
    if args.labels and not args.compare:
        raise UsageError("--labels names the runs of --compare; give --compare RUN_A RUN_B")
    _settings(args)  # repro.* keys and the backtracking phrases (an @file must exist)
    for path in args.trajectories or []:  # read now, so that a bad row of the second run stops the first
        load_trajectories(path, step=args.step, limit=args.limit)
    if args.prompts is not None:
        load_trajectories(args.prompts, need_response=False, limit=args.limit, flag="--prompts")
    for spec in args.compare or []:
        if not Path(spec).exists() and Path(spec).is_absolute():
            raise UsageError(f"--compare {spec} does not exist (a checkpoint or an earlier analyze output folder)")


def run(args: argparse.Namespace) -> int:
    started = time.time()
    _check_inputs(args)
    output_dir = claim_output_dir(args.output_dir, DEFAULT_OUTPUT_PARENT)
    print(f"verl-repro analyze: results in {output_dir}", flush=True)
    if args.compare is None:
        trajectories = args.trajectories[0] if args.trajectories else None
        summary, _ = analyze_run(args.model, args, trajectories, output_dir)
        _print_summary(summary)
        print(f"wrote {output_dir}/summary.json, trajectories.jsonl, j_curves.png, scores.png, backtracking.png "
              f"in {time.time() - started:.1f} s")
        return 0

    labels = list(args.labels) if args.labels else [_label_of(spec) for spec in args.compare]
    if labels[0] == labels[1]:
        labels = [f"{labels[0]}_a", f"{labels[1]}_b"]
    runs = []
    for i, (spec, label) in enumerate(zip(args.compare, labels)):
        if (Path(spec) / "summary.json").exists():
            summary, records = load_run(spec)
            write_run(output_dir / label, summary, records, f"{label}: ")
        else:
            trajectories = args.trajectories[min(i, len(args.trajectories) - 1)] if args.trajectories else None
            summary, records = analyze_run(spec, args, trajectories, output_dir / label, f"{label}: ")
        _print_summary(summary, label)
        runs.append((label, summary, records))
    rows = compare_table([s for _, s, _ in runs])
    table = markdown_table(rows, labels)
    (output_dir / "compare.md").write_text(table + "\n")
    (output_dir / "compare.json").write_text(json.dumps({"labels": labels, "rows": rows}, indent=2, allow_nan=False))
    figures.plot_compare(runs, output_dir / "compare.png")
    print("\n" + table)
    print(f"\nwrote {output_dir}/compare.md, compare.json, compare.png (+ one folder per run) in {time.time() - started:.1f} s")
    return 0
