#!/usr/bin/env python3
"""Evaluate a model on the math test sets: avg@n, pass@k, mean length, </think> share (thin CLI over
``verl_repro.evaluation.evaluate``). Results go to OUT/results.json and OUT/results.md.

    python scripts/evaluate.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data-dir ~/data/verl_repro --out eval/base
    python scripts/evaluate.py --model ckpt/global_step_300/actor/merged_hf --data aime_2024=~/data/verl_repro/aime_2024.parquet \\
        --n 32 --max-new-tokens 32768 --out eval/step300
    python scripts/evaluate.py --model TINY_DIR --data-dir DATA --backend hf --n 4 --max-new-tokens 64 --out /tmp/eval   # CPU

A veRL checkpoint (``.../global_step_N/actor``) is sharded: merge it first with
``python -m verl.model_merger merge --backend fsdp --local_dir .../actor --target_dir .../actor/merged_hf``.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from verl_repro.evaluation import evaluate as evaluation
from verl_repro.evaluation.datasets import TEST_SETS
from verl_repro.rewards import MathRewardConfig


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model id or directory (a merged checkpoint)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PARQUET", help="a benchmark (repeatable)")
    parser.add_argument("--data-dir", type=Path, help=f"directory with {', '.join(TEST_SETS)} parquet files (those present are used)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--n", type=int, default=16, help="samples per problem (avg@n, pass@k for k <= n)")
    parser.add_argument("--ks", type=int, nargs="*", help="pass@k values to report (default 1, 2, 4, ... <= n)")
    parser.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="auto: vLLM on a GPU, HF generate otherwise")
    parser.add_argument("--max-new-tokens", type=int, default=8192, help="response budget (paper: 8k; 32768 for long-context evaluation)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-problems", type=int, help="first N problems of each benchmark (quick checks)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM only")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM only")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per HF generate call")
    parser.add_argument("--grading-timeout", type=float, default=5.0, help="per-response grading deadline, seconds")
    parser.add_argument("--save-samples", action="store_true", help="also write OUT/samples.jsonl with every response")
    args = parser.parse_args(argv)
    benchmarks = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--data {item!r}: write NAME=PARQUET")
        benchmarks[name] = os.path.expanduser(path)
    if args.data_dir is not None:
        for name in TEST_SETS:
            path = args.data_dir.expanduser() / f"{name}.parquet"
            if path.exists() and name not in benchmarks:
                benchmarks[name] = str(path)
    if not benchmarks:
        parser.error("no benchmark: give --data NAME=PARQUET or a --data-dir with prepared test sets (scripts/prepare_data.py test --out DIR)")
    missing = [path for path in benchmarks.values() if not Path(path).exists()]
    if missing:
        parser.error(f"missing benchmark files: {missing}")
    args.benchmarks = benchmarks
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # before any model is loaded: an empty or foreign benchmark file is one line, not a traceback
        for path in args.benchmarks.values():
            evaluation.load_benchmark(path, args.max_problems)
    except evaluation.BenchmarkError as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    evaluation.check_model_path(args.model)
    backend = evaluation.resolve_backend(args.backend)
    sampling = dict(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if backend == "vllm":
        generate = partial(evaluation.generate_vllm, args.model, tensor_parallel_size=args.tensor_parallel_size,
                           gpu_memory_utilization=args.gpu_memory_utilization, **sampling)
    else:
        generate = partial(evaluation.generate_hf, args.model, batch_size=args.batch_size, **sampling)

    from transformers import AutoTokenizer

    special_texts = AutoTokenizer.from_pretrained(args.model).all_special_tokens
    results, samples = evaluation.evaluate(
        args.benchmarks, generate, args.n,
        reward_config=MathRewardConfig(timeout_s=args.grading_timeout, num_processes=min(8, os.cpu_count() or 1)),
        ks=args.ks, max_problems=args.max_problems, strip_texts=special_texts,
    )
    settings = {"model": args.model, "backend": backend, **sampling, "benchmarks": args.benchmarks, "max_problems": args.max_problems}
    paths = evaluation.write_results(args.out, results, settings, samples if args.save_samples else None)
    print(paths["markdown"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
