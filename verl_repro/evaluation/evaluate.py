"""Offline evaluation of a model on the math test sets: avg@n, unbiased pass@k, length, ``</think>`` share.

For each problem of each benchmark (a veRL parquet written by ``scripts/prepare_data.py``) the
model samples ``n`` responses — with vLLM on a GPU, or HF ``generate`` on a CPU (small models,
CI) — and every response is graded by the same :class:`~verl_repro.rewards.MathVerifier` the
training reward uses (text after the first ``</think>``, last ``\\boxed{}``, math-verify,
per-sample deadline). Reported per benchmark:

* ``avg@n``: mean correctness over all ``n`` samples of all problems (the expected pass@1);
* ``pass@k`` for k = 1, 2, 4, ... ≤ n: the unbiased estimator of Chen et al. (2021),
  ``1 − C(n−c, k) / C(n, k)`` per problem with ``c`` correct samples, averaged over problems;
* mean response length in tokens, and the shares of responses with ``</think>``, with a found
  answer, and that hit the grading deadline; the number of problems whose ground truth is unusable
  (``no_ground_truth_problems``: graded wrong, as in training).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from verl_repro import UsageError
from verl_repro.rewards import MathRewardConfig, MathVerifier


def pass_at_k(num_samples: np.ndarray | int, num_correct: np.ndarray | int, k: int) -> np.ndarray:
    """Unbiased pass@k per problem: ``1 − C(n−c, k) / C(n, k)``.

    num_samples, num_correct: int arrays of one shape ``[P]`` (or scalars), ``0 <= c <= n``;
    ``k <= n`` everywhere. Returns float64 ``[P]``. Computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)``
    (no huge binomials), vectorized over problems; a problem with ``n − c < k`` has pass@k = 1.
    """
    n = np.atleast_1d(np.asarray(num_samples, dtype=np.int64))
    c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
    n, c = np.broadcast_arrays(n, c)
    if k < 1 or np.any(n < k):
        raise ValueError(f"pass@k needs 1 <= k <= n samples per problem, got k={k}, n min {int(n.min())}")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("num_correct must be in [0, num_samples]")
    i = np.arange(1, int(n.max()) + 1, dtype=np.float64)[None, :]
    in_product = (i > (n - c)[:, None]) & (i <= n[:, None])
    factors = np.where(in_product, 1.0 - k / i, 1.0)
    all_wrong = np.prod(factors, axis=1)
    return np.where(n - c < k, 1.0, 1.0 - all_wrong)


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2**j for j in range(int(math.log2(n)) + 1)] if n >= 1 else []
    return ks + ([n] if n not in ks else [])


@dataclass
class Completion:
    """One sampled response: decoded text (special tokens kept) and its length in tokens."""

    text: str
    num_tokens: int


@dataclass
class BenchmarkResult:
    """Metrics of one benchmark; accuracies in percent."""

    name: str
    num_problems: int
    samples_per_problem: int
    avg_at_n: float
    pass_at_k: dict[int, float]
    mean_response_tokens: float
    think_end_share: float
    answer_found_share: float
    timed_out_share: float
    per_problem_correct: list[int] = field(default_factory=list)
    no_ground_truth_problems: int = 0
    """Problems whose ground truth is unusable (None, NaN, empty, ...): every sample graded wrong."""


def summarize(name: str, correct: np.ndarray, num_tokens: np.ndarray, has_think_end: np.ndarray,
              answer_found: np.ndarray, timed_out: np.ndarray, ks: Sequence[int] | None = None) -> BenchmarkResult:
    """Metrics from per-sample arrays, each ``[P, n]`` (bool / int / float), P problems x n samples."""
    problems, n = correct.shape
    ks = list(ks) if ks else default_ks(n)
    if any(not 1 <= k <= n for k in ks):  # a k past n used to drop its column without a word
        raise ValueError(f"pass@k needs 1 <= k <= n = {n} samples per problem, got ks={ks}")
    per_problem = correct.sum(axis=1).astype(np.int64)
    return BenchmarkResult(
        name=name,
        num_problems=problems,
        samples_per_problem=n,
        avg_at_n=100.0 * float(correct.mean()),
        pass_at_k={k: 100.0 * float(pass_at_k(np.full(problems, n), per_problem, k).mean()) for k in ks},
        mean_response_tokens=float(num_tokens.mean()),
        think_end_share=float(has_think_end.mean()),
        answer_found_share=float(answer_found.mean()),
        timed_out_share=float(timed_out.mean()),
        per_problem_correct=per_problem.tolist(),
    )


# ----------------------------------------------------------------------------- generation


def _prompt_token_ids(tokenizer, messages_list: Sequence[list[dict]]) -> list[list[int]]:
    # Token ids straight from the chat template: re-tokenizing its text would add a second BOS.
    ids = []
    for messages in messages_list:
        encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        ids.append(list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded))
    return ids


def generate_hf(model_path: str, messages_list: Sequence[list[dict]], n: int, max_new_tokens: int, temperature: float,
                top_p: float, seed: int = 0, batch_size: int = 8) -> list[list[Completion]]:
    """Sample ``n`` responses per prompt with HF ``generate`` (CPU or a single GPU; for small models);
    ``temperature=0`` decodes greedily. Top-k is off, as in :func:`generate_vllm`."""
    import torch

    from verl_repro.analysis.frontend import load_model, pad_token_id
    from verl_repro.analysis.hf_scoring import sample_responses

    model, tokenizer, _ = load_model(model_path)
    generation_eos = model.generation_config.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id, *(generation_eos if isinstance(generation_eos, list) else [generation_eos])} - {None})
    torch.manual_seed(seed)
    prompt_ids = _prompt_token_ids(tokenizer, messages_list)
    # A prompt's n samples side by side, batch_size prompts per generate call.
    repeated = [ids for ids in prompt_ids for _ in range(n)]
    response_ids, response_mask = sample_responses(
        model, repeated, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_token_id=eos_ids,
        pad_id=pad_token_id(tokenizer), micro_batch_size=batch_size * n, greedy=temperature == 0,
    )
    lengths = response_mask.sum(dim=1).tolist()
    completions = [
        Completion(tokenizer.decode(response_ids[row, :length].tolist(), skip_special_tokens=False), length)
        for row, length in enumerate(lengths)
    ]
    return [completions[index * n : (index + 1) * n] for index in range(len(prompt_ids))]


def generate_vllm(model_path: str, messages_list: Sequence[list[dict]], n: int, max_new_tokens: int, temperature: float,
                  top_p: float, seed: int = 0, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                  max_model_len: int | None = None) -> list[list[Completion]]:
    """Sample ``n`` responses per prompt with vLLM (GPU)."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_ids = _prompt_token_ids(tokenizer, messages_list)
    longest_prompt = max(map(len, prompt_ids))
    llm = LLM(
        model=model_path, tensor_parallel_size=tensor_parallel_size, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len or longest_prompt + max_new_tokens,
    )
    # skip_special_tokens=False: </think> must survive decoding (it is a special token in some tokenizers).
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed, skip_special_tokens=False)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return [[Completion(sample.text, len(sample.token_ids)) for sample in output.outputs] for output in outputs]


def resolve_backend(backend: str) -> str:
    """``auto`` → ``vllm`` when vLLM is installed and a GPU is visible, else ``hf``."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def check_model_path(model: str) -> None:
    """Refuse, before any work, a model that cannot load: a veRL FSDP checkpoint folder (with the
    command that converts it), or a local path that does not exist (a hub id is ``org/name``)."""
    path = Path(model).expanduser()
    if path.is_dir() and list(path.glob("model_world_size_*_rank_*.pt")):
        raise UsageError(
            f"--model {model} is a veRL FSDP checkpoint (sharded): merge it into an HF model with "
            f"'python -m verl.model_merger merge --backend fsdp --local_dir {model} --target_dir {model}/merged_hf', "
            f"then evaluate {model}/merged_hf"
        )
    looks_local = path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1
    if not path.exists() and (looks_local or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise UsageError(f"--model {model}: no such folder" + ("" if looks_local else " (and the hub is offline)"))


# ----------------------------------------------------------------------------- evaluation


class BenchmarkError(UsageError):
    """A benchmark file cannot be evaluated (empty, or not a veRL RL parquet); the message names the file."""


def load_benchmark(path: str | os.PathLike, max_problems: int | None = None) -> tuple[list[list[dict]], list]:
    """Chat prompts and raw ground truths of a veRL parquet (``prompt``, ``reward_model.ground_truth``).

    The ground truths are left raw: the verifier reads each with
    :func:`verl_repro.rewards.ground_truth_answers` (a list matches when any entry does; None, NaN
    and other unusable values are wrong and counted as ``no_ground_truth``).
    """
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow's messages do not say which file
        raise BenchmarkError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from error
    missing = [column for column in ("prompt", "reward_model") if column not in frame.columns]
    if missing:
        raise BenchmarkError(f"{path}: no {missing} column; expected a veRL RL parquet (scripts/prepare_data.py writes one)")
    if max_problems is not None:
        if max_problems < 1:  # head(-1) would quietly drop the last problem
            raise ValueError(f"max_problems must be >= 1 (None: all), got {max_problems}")
        frame = frame.head(max_problems)
    if len(frame) == 0:
        raise BenchmarkError(f"{path}: the benchmark has no problems")
    prompts = [[{"role": str(m["role"]), "content": str(m["content"])} for m in messages] for messages in frame["prompt"]]
    truths = [rm.get("ground_truth") if hasattr(rm, "get") else None for rm in frame["reward_model"]]
    return prompts, truths


GenerateFn = Callable[[Sequence[list[dict]]], list[list[Completion]]]


def evaluate(benchmarks: dict[str, str | os.PathLike], generate: GenerateFn, n: int,
             reward_config: MathRewardConfig | None = None, ks: Sequence[int] | None = None,
             max_problems: int | None = None, strip_texts: Sequence[str] = ()) -> tuple[dict[str, BenchmarkResult], list[dict]]:
    """Generate for all benchmarks in one call (vLLM batches best that way), grade, summarize.

    ``generate(prompts) -> [[Completion] * n] * len(prompts)``. Returns the per-benchmark results
    and one record per sample (benchmark, problem index, sample index, tokens, grade, text).
    """
    loaded = {name: load_benchmark(path, max_problems) for name, path in benchmarks.items()}
    all_prompts = [p for prompts, _ in loaded.values() for p in prompts]
    completions = generate(all_prompts)
    if len(completions) != len(all_prompts) or any(len(c) != n for c in completions):
        raise RuntimeError(f"generation returned {len(completions)} prompts with sample counts {sorted({len(c) for c in completions})}, expected n={n}")

    verifier = MathVerifier(reward_config or MathRewardConfig(num_processes=min(8, os.cpu_count() or 1)), strip_texts=tuple(strip_texts))
    truths = [t for _, gts in loaded.values() for t in gts]

    async def grade_all():
        tasks = [verifier.ascore(c.text, truths[i]) for i, samples in enumerate(completions) for c in samples]
        return await asyncio.gather(*tasks)

    try:
        verifier.start()
        grades = asyncio.run(grade_all())
    finally:
        verifier.close()

    results: dict[str, BenchmarkResult] = {}
    samples: list[dict] = []
    offset = 0
    for name, (prompts, _) in loaded.items():
        count = len(prompts)
        block = [grades[(offset + i) * n:(offset + i + 1) * n] for i in range(count)]
        texts = completions[offset:offset + count]

        def field_of(attr: str) -> np.ndarray:
            return np.array([[getattr(g, attr) for g in row] for row in block], dtype=np.float64).reshape(count, n)

        tokens = np.array([[c.num_tokens for c in row] for row in texts], dtype=np.float64).reshape(count, n)
        results[name] = summarize(name, field_of("acc") > 0.5, tokens, field_of("has_think_end"), field_of("answer_found"), field_of("timed_out"), ks)
        results[name].no_ground_truth_problems = int((field_of("no_ground_truth") > 0.5).any(axis=1).sum())
        for i in range(count):
            for j in range(n):
                samples.append({"benchmark": name, "problem": i, "sample": j, "num_tokens": texts[i][j].num_tokens,
                                **block[i][j].extra_info(), "text": texts[i][j].text})
        offset += count
    return results, samples


def markdown_table(results: dict[str, BenchmarkResult], model: str = "") -> str:
    """One row per benchmark: problems, n, avg@n, pass@k columns, mean tokens, ``</think>`` share."""
    ks = sorted({k for r in results.values() for k in r.pass_at_k})
    header = ["benchmark", "problems", "n", "avg@n (%)"] + [f"pass@{k} (%)" for k in ks] + ["mean tokens", "</think> share", "answer found"]
    lines = ([f"**{model}**", ""] if model else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results.values():
        cells = [r.name, str(r.num_problems), str(r.samples_per_problem), f"{r.avg_at_n:.1f}"]
        cells += [f"{r.pass_at_k[k]:.1f}" if k in r.pass_at_k else "" for k in ks]
        cells += [f"{r.mean_response_tokens:.0f}", f"{r.think_end_share:.2f}", f"{r.answer_found_share:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, results: dict[str, BenchmarkResult], settings: dict, samples: list[dict] | None = None) -> dict[str, Path]:
    """``results.json`` (settings + metrics), ``results.md`` (table), optionally ``samples.jsonl``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "benchmarks": {name: asdict(r) for name, r in results.items()}}
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["markdown"].write_text(markdown_table(results, str(settings.get("model", ""))))
    if samples is not None:
        paths["samples"] = out / "samples.jsonl"
        with open(paths["samples"], "w") as handle:
            for record in samples:
                handle.write(json.dumps(record) + "\n")
    return paths


# ----------------------------------------------------------------------------- command line

USAGE = """Evaluate a model on the math test sets: avg@n, pass@k, mean length, </think> share.
Results go to OUT/results.json and OUT/results.md (OUT: --out, or a new numbered folder under outputs/evaluate/).

    python scripts/evaluate.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data-dir ~/data/verl_repro --out eval/base
    python scripts/evaluate.py --model ckpt/global_step_300/actor/merged_hf --data aime_2024=~/data/verl_repro/aime_2024.parquet \\
        --n 32 --max-new-tokens 32768 --out eval/step300
    python scripts/evaluate.py --model TINY_DIR --data-dir DATA --backend hf --n 4 --max-new-tokens 64 --out /tmp/eval   # CPU

A veRL checkpoint (.../global_step_N/actor) is sharded: merge it first with
python -m verl.model_merger merge --backend fsdp --local_dir .../actor --target_dir .../actor/merged_hf.
"""
DEFAULT_OUTPUT_PARENT = "outputs/evaluate"


def parse_args(argv: Sequence[str] | None):
    """The options of ``scripts/evaluate.py``, every one checked here, before any benchmark or model loads."""
    import argparse

    from verl_repro.cli import ArgumentParser, count, number
    from verl_repro.evaluation.datasets import TEST_SETS
    from verl_repro.rewards.math_verifier import MIN_TIMEOUT_S

    parser = ArgumentParser(prog="evaluate.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model id or directory (a merged checkpoint)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PARQUET", help="a benchmark (repeatable)")
    parser.add_argument("--data-dir", type=Path, help=f"directory with {', '.join(TEST_SETS)} parquet files (those present are used)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"an empty or new folder for the results (default: a new numbered folder under {DEFAULT_OUTPUT_PARENT}/)")
    parser.add_argument("--n", type=count(), default=16, help="samples per problem (avg@n, pass@k for k <= n)")
    parser.add_argument("--ks", type=count(), nargs="*", help="pass@k values to report, each <= n (default 1, 2, 4, ... <= n)")
    parser.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="auto: vLLM on a GPU, HF generate otherwise")
    parser.add_argument("--max-new-tokens", type=count(), default=8192, help="response budget (paper: 8k; 32768 for long-context evaluation)")
    parser.add_argument("--temperature", type=number(minimum=0), default=0.6, help="0: greedy decoding (then --n 1)")
    parser.add_argument("--top-p", type=number(above=0, maximum=1), default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-problems", type=count(optional_limit=True), help="first N problems of each benchmark (quick checks)")
    parser.add_argument("--tensor-parallel-size", type=count(), default=1, help="vLLM only")
    parser.add_argument("--gpu-memory-utilization", type=number(above=0, maximum=1), default=0.9, help="vLLM only")
    parser.add_argument("--batch-size", type=count(), default=8, help="prompts per HF generate call")
    parser.add_argument("--grading-timeout", type=number(minimum=MIN_TIMEOUT_S), default=5.0, help="per-response grading deadline, seconds")
    parser.add_argument("--save-samples", action="store_true", help="also write OUT/samples.jsonl with every response")
    args = parser.parse_args(argv)
    if args.temperature == 0 and args.n > 1:
        parser.error(f"--temperature 0 is greedy decoding: its --n {args.n} samples would all be the same; use --n 1 or a temperature > 0")
    too_large = [k for k in args.ks or () if k > args.n]
    if too_large:
        parser.error(f"--ks {too_large[0]} exceeds --n {args.n}: pass@k needs k <= n samples per problem")
    benchmarks = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--data {item!r}: write NAME=PARQUET")
        benchmarks[name] = os.path.expanduser(path)
    if args.data_dir is not None:
        if not args.data_dir.expanduser().is_dir():
            parser.error(f"--data-dir {args.data_dir} is not a folder")
        for name in TEST_SETS:
            path = args.data_dir.expanduser() / f"{name}.parquet"
            if path.exists() and name not in benchmarks:
                benchmarks[name] = str(path)
    if not benchmarks:
        parser.error("no benchmark: give --data NAME=PARQUET or a --data-dir with prepared test sets (scripts/prepare_data.py test --out DIR)")
    missing = [path for path in benchmarks.values() if not Path(path).is_file()]
    if missing:
        parser.error(f"missing benchmark files: {', '.join(missing)}")
    args.benchmarks = benchmarks
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/evaluate.py``: a bad option, benchmark file or model path is one line on stderr before any work."""
    from verl_repro.cli import report_usage_errors

    return report_usage_errors("evaluate.py", lambda: _run(parse_args(argv)))


def _run(args) -> int:
    from functools import partial

    from verl_repro.cli import claim_output_dir

    for path in args.benchmarks.values():  # an empty or foreign benchmark file: refused before any model loads
        load_benchmark(path, args.max_problems)
    check_model_path(args.model)
    out = claim_output_dir(args.out, DEFAULT_OUTPUT_PARENT, "--out")
    print(f"evaluate.py: results in {out}", flush=True)
    backend = resolve_backend(args.backend)
    sampling = dict(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if backend == "vllm":
        generate = partial(generate_vllm, args.model, tensor_parallel_size=args.tensor_parallel_size,
                           gpu_memory_utilization=args.gpu_memory_utilization, **sampling)
    else:
        generate = partial(generate_hf, args.model, batch_size=args.batch_size, **sampling)

    from transformers import AutoTokenizer

    special_texts = AutoTokenizer.from_pretrained(args.model).all_special_tokens
    results, samples = evaluate(
        args.benchmarks, generate, args.n,
        reward_config=MathRewardConfig(timeout_s=args.grading_timeout, num_processes=min(8, os.cpu_count() or 1)),
        ks=args.ks, max_problems=args.max_problems, strip_texts=special_texts,
    )
    settings = {"model": args.model, "backend": backend, **sampling, "benchmarks": args.benchmarks, "max_problems": args.max_problems}
    paths = write_results(out, results, settings, samples if args.save_samples else None)
    print(paths["markdown"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
