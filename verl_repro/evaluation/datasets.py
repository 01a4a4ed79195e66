"""Training and test sets for the math recipes, written as veRL RL parquet.

Every source is loaded with HF ``datasets`` from its hub id or from a local copy (a file or a
directory, e.g. a ``huggingface-cli download`` snapshot), turned into ``(problem, answer)``
records, deduplicated by normalized problem text (optionally also against other sets, to keep
test problems out of training), and written as the rows veRL's ``RLHFDataset`` reads:

    data_source   str                    e.g. "aime_2024" (veRL groups validation metrics by it)
    prompt        [{"role": "user", "content": problem + R1 instruction}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"split", "index", "source_id", "problem", "answer"}

Answers are read with :func:`verl_repro.rewards.ground_truth_answers`, the rule training,
evaluation and scoring use: ``answer`` is one canonical string, or, in a set where some problem
has several accepted answers, a list of strings for every row (a parquet column has one type);
an unusable answer (None, NaN, bool, dict, empty list) counts as missing and the row is dropped.

Hub ids and column names were checked against the dataset cards (see ``SOURCES``). DAPO-Math-17k
ships every problem about 100 times and wraps it in its own "Answer:" instruction; that wrapper
is removed so all sets share the R1-style prompt the recipes use. MATH (train) has no answer
column: the answer is the last ``\\boxed{}`` of the reference solution.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from verl_repro import UsageError

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PROBLEM_PLACEHOLDER = "{problem}"
DEFAULT_PROMPT_TEMPLATE = PROBLEM_PLACEHOLDER + "\n" + R1_INSTRUCTION

# DAPO-Math-17k's own wrapper around each problem (BytedTsinghua-SIA/DAPO-Math-17k, prompt[0].content).
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

LOCAL_EXTENSIONS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


@dataclass(frozen=True)
class Problem:
    """One math problem: statement, ground-truth answer and where it came from."""

    problem: str
    answer: str | tuple[str, ...]
    """One accepted answer, or several (see :func:`answer_text`); ``""`` when unusable."""
    source_id: str


@dataclass(frozen=True)
class SourceSpec:
    """Where a data set lives on the hub and how its rows map to :class:`Problem`."""

    name: str
    hub_id: str
    split: str
    to_problem: Callable[[dict, int], Problem]
    configs: tuple[str | None, ...] = (None,)
    role: str = "test"
    description: str = ""


def answer_text(value: Any) -> str | tuple[str, ...]:
    """A source's answer by the package's ground-truth rule (:func:`verl_repro.rewards.ground_truth_answers`):
    one text (integral floats without ``.0``: AMC answers come as floats), a tuple when there are
    several accepted answers, ``""`` when unusable (None, NaN, bool, dict, empty)."""
    from verl_repro.rewards.ground_truth import ground_truth_answers

    answers = ground_truth_answers(value)
    if not answers:
        return ""
    return answers[0] if len(answers) == 1 else answers


def _column(row: dict, key: str) -> Any:
    if key not in row:
        raise UsageError(f"column {key!r} missing; the file has columns {sorted(row)}")
    return row[key]


def _simple(problem_key: str, answer_key: str, id_key: str | None = None, id_prefix: str = "") -> Callable[[dict, int], Problem]:
    def to_problem(row: dict, index: int) -> Problem:
        source_id = f"{id_prefix}{row[id_key]}" if id_key and row.get(id_key) is not None else f"{id_prefix}{index}"
        return Problem(_problem_text(_column(row, problem_key)), answer_text(_column(row, answer_key)), source_id)

    return to_problem


def _problem_text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def _dapo_problem(row: dict, index: int) -> Problem:
    messages = _column(row, "prompt")
    content = str(messages[0]["content"]) if len(messages) else ""
    problem = content.removeprefix(DAPO_PREFIX).removesuffix(DAPO_SUFFIX).strip()
    reward_model = _column(row, "reward_model") or {}
    extra = row.get("extra_info") or {}
    return Problem(problem, answer_text(reward_model.get("ground_truth")), str(extra.get("index", index)))


def _math_train_problem(row: dict, index: int) -> Problem:
    from verl_repro.rewards.math_verifier import last_boxed_answer

    answer = last_boxed_answer(str(_column(row, "solution") or ""), max_chars=10_000) or ""
    return Problem(str(_column(row, "problem") or "").strip(), answer, f"{row.get('type', '')}/{index}")


def _aime_2025_problem(row: dict, index: int) -> Problem:
    return Problem(str(_column(row, "question") or "").strip(), answer_text(_column(row, "answer")), f"{row.get('_config', '')}/{index}")


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            "dapo_math_17k", "BytedTsinghua-SIA/DAPO-Math-17k", "train", _dapo_problem, role="train",
            description="DAPO-Math-17k: veRL-format rows (prompt messages, reward_model.ground_truth), each problem ~100x",
        ),
        SourceSpec(
            "deepscaler", "agentica-org/DeepScaleR-Preview-Dataset", "train", _simple("problem", "answer"), role="train",
            description="DeepScaleR-Preview: ~40k problems, columns problem / answer / solution",
        ),
        SourceSpec(
            "math_train", "DigitalLearningGmbH/MATH-lighteval", "train", _math_train_problem, configs=("default",), role="train",
            description="MATH train split (7.5k): columns problem / level / solution / type; answer = last \\boxed{} of solution",
        ),
        SourceSpec(
            "aime_2024", "HuggingFaceH4/aime_2024", "train", _simple("problem", "answer", "id", "aime24-"),
            description="AIME 2024 I+II (30): columns id / problem / solution / answer / url / year (one 'train' split)",
        ),
        SourceSpec(
            "aime_2025", "opencompass/AIME2025", "test", _aime_2025_problem, configs=("AIME2025-I", "AIME2025-II"),
            description="AIME 2025 I+II (30): configs AIME2025-I / AIME2025-II, columns question / answer",
        ),
        SourceSpec(
            "amc_2023", "math-ai/amc23", "test", _simple("question", "answer", "id", "amc23-"),
            description="AMC 2023 (40): columns id / question / answer / url",
        ),
        SourceSpec(
            "math_500", "HuggingFaceH4/MATH-500", "test", _simple("problem", "answer", "unique_id"),
            description="MATH-500: columns problem / solution / answer / subject / level / unique_id",
        ),
    )
}
TRAIN_SETS = tuple(name for name, spec in SOURCES.items() if spec.role == "train")
TEST_SETS = tuple(name for name, spec in SOURCES.items() if spec.role == "test")


# ----------------------------------------------------------------------------- loading


def _local_files(directory: Path, split: str) -> list[str]:
    """Data files under a local directory; when some file names carry the split, only those."""
    files = sorted(
        path for path in glob.glob(str(directory / "**" / "*"), recursive=True)
        if Path(path).suffix in LOCAL_EXTENSIONS and "/." not in path
    )
    if not files:
        raise UsageError(f"{directory}: no {sorted(LOCAL_EXTENSIONS)} files under this folder")
    with_split = [p for p in files if re.search(rf"(^|[/_.-]){re.escape(split)}([_.-]|$)", os.path.relpath(p, directory))]
    return with_split or files


@contextmanager
def _datasets_quiet_on_failure():
    """datasets logs a failed read as an error of its own before raising; the one line this package
    prints names the file and the cause, so datasets' log is held back while it reads."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_json_lines(file: str) -> None:
    """Every line of a jsonl is a JSON object: a truncated or corrupt line is named here, by number
    (datasets would log a parse error and raise one that names no line)."""
    with open(file, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{file}:{number} is not valid JSON ({error.msg}); a truncated download?") from None


def _load_local(path: Path, split: str) -> list[dict]:
    import datasets

    files = [str(path)] if path.is_file() else _local_files(path, split)
    rows: list[dict] = []
    for file in files:
        builder = LOCAL_EXTENSIONS.get(Path(file).suffix)
        if builder is None:
            raise UsageError(f"{file}: unsupported file type; use one of {sorted(LOCAL_EXTENSIONS)}")
        if os.path.getsize(file) == 0:  # datasets' json builder dies with a bare StopIteration on it
            raise UsageError(f"{file}: the file is empty")
        if Path(file).suffix == ".jsonl":
            _check_json_lines(file)
        try:
            with _datasets_quiet_on_failure():
                dataset = datasets.load_dataset(builder, data_files=file, split="train")
        except Exception as error:  # a json that is no table, a corrupt parquet: datasets' errors do not say which file
            raise UsageError(f"{file}: not readable as {builder} rows ({_first_line(error)})") from error
        config = Path(file).stem
        rows.extend(dict(row, _config=config) for row in dataset)
    return rows


def looks_like_path(source: str | os.PathLike) -> bool:
    """A hub id is ``owner/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.parquet``) is a path."""
    text = os.fspath(source)
    return (
        isinstance(source, os.PathLike)
        or text.startswith((".", "/", "~"))
        or text.count("/") != 1
        or Path(text).suffix in LOCAL_EXTENSIONS
    )


def load_rows(spec: SourceSpec, source: str | os.PathLike | None = None) -> list[dict]:
    """Raw rows of ``spec`` from ``source``: a local file / directory, a hub id, or None (``spec.hub_id``).

    A ``source`` that looks like a path (:func:`looks_like_path`) but does not exist is an error,
    not a hub id to try.
    """
    if source is not None and Path(source).expanduser().exists():
        return _load_local(Path(source).expanduser(), spec.split)
    if source is not None and looks_like_path(source):
        raise UsageError(f"--source {os.fspath(source)}: no such file or directory (a hub id is written owner/name)")
    import datasets

    hub_id = str(source) if source is not None else spec.hub_id
    rows: list[dict] = []
    for config in spec.configs:
        try:
            dataset = datasets.load_dataset(hub_id, config, split=spec.split)
        except Exception as error:  # offline, a wrong id, no access: one line, and what to do
            raise UsageError(f"{hub_id}: cannot load it from the hub ({_first_line(error)}); "
                             "without network access, download it and pass --source PATH") from error
        rows.extend(dict(row, _config=config or "") for row in dataset)
    return rows


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# ----------------------------------------------------------------------------- cleaning


def normalize_problem(text: str) -> str:
    """Key for deduplication: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class PrepareStats:
    """What happened to the rows of one source (printed by ``scripts/prepare_data.py``)."""

    loaded: int = 0
    missing_problem_or_answer: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0
    """Duplicates whose answer differs from the kept copy's (the first one is kept)."""
    contaminated: int = 0
    """Dropped because the problem appears in a ``--exclude`` set."""
    written: int = 0
    extra: dict = field(default_factory=dict)


def clean(problems: Iterable[Problem], exclude: set[str] = frozenset(), stats: PrepareStats | None = None) -> list[Problem]:
    """Drop empty records, problems in ``exclude`` (normalized texts) and duplicates (first kept)."""
    stats = stats if stats is not None else PrepareStats()
    kept: dict[str, Problem] = {}
    for record in problems:
        if not record.problem or not record.answer:
            stats.missing_problem_or_answer += 1
            continue
        key = normalize_problem(record.problem)
        if key in exclude:
            stats.contaminated += 1
            continue
        if key in kept:
            stats.duplicates += 1
            if kept[key].answer != record.answer:
                stats.conflicting_duplicates += 1
            continue
        kept[key] = record
    return list(kept.values())


def verl_rows(problems: list[Problem], data_source: str, split: str, prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> list[dict]:
    """veRL RL-dataset rows (see the module docstring) with the recipes' R1-style prompt."""
    if PROBLEM_PLACEHOLDER not in prompt_template:
        raise UsageError(f"the prompt template must contain {PROBLEM_PLACEHOLDER}, got {prompt_template!r}")
    if any(isinstance(record.answer, tuple) for record in problems):
        # Several accepted answers somewhere: every row stores a list (one parquet type per column).
        problems = [
            dataclasses.replace(record, answer=list(record.answer) if isinstance(record.answer, tuple) else [record.answer])
            for record in problems
        ]
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": prompt_template.replace(PROBLEM_PLACEHOLDER, record.problem)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": record.answer},
            "extra_info": {
                "split": split,
                "index": index,
                "source_id": record.source_id,
                "problem": record.problem,
                "answer": record.answer,
            },
        }
        for index, record in enumerate(problems)
    ]


def read_problems(parquet_path: str | os.PathLike) -> list[str]:
    """Problem texts of a parquet written by :func:`prepare` (for ``--exclude``)."""
    import pandas as pd

    frame = pd.read_parquet(parquet_path, columns=["extra_info"])
    return [str(info["problem"]) for info in frame["extra_info"]]


def prepare(
    name: str,
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    exclude: Iterable[str | os.PathLike] = (),
    max_rows: int | None = None,
) -> tuple[Path, PrepareStats]:
    """Load, clean and write one data set as ``out_dir/<name>.parquet``; returns the path and counts.

    ``exclude``: parquet files written by this function whose problems must not appear here
    (e.g. the test sets, when preparing a training set).
    """
    import pandas as pd

    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(SOURCES)}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be an int >= 1, got {max_rows!r}")
    spec = SOURCES[name]
    stats = PrepareStats()
    raw = load_rows(spec, source)
    stats.loaded = len(raw)
    excluded = {normalize_problem(text) for path in exclude for text in read_problems(path)}
    problems = clean((spec.to_problem(row, index) for index, row in enumerate(raw)), excluded, stats)
    if max_rows is not None:
        problems = problems[:max_rows]
    rows = verl_rows(problems, name, "train" if spec.role == "train" else "test", prompt_template)
    if not rows:  # a set of nothing must not pass as prepared
        raise UsageError(f"no usable row: {stats.loaded} loaded, {stats.missing_problem_or_answer} without a problem "
                         f"or a usable answer, {stats.duplicates} duplicates, {stats.contaminated} in excluded sets")
    stats.written = len(rows)
    out_path = Path(out_dir) / f"{name}.parquet"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out_path, index=False)
    return out_path, stats


def stats_json(name: str, path: Path, stats: PrepareStats) -> str:
    fields = {k: v for k, v in stats.__dict__.items() if k != "extra"}
    return json.dumps({"data_set": name, "path": str(path), **fields, **stats.extra})


# ----------------------------------------------------------------------------- command line

USAGE = """Prepare the recipes' data as veRL parquet.

    python scripts/prepare_data.py all --out ~/data/verl_repro          # every set below, from the hub
    python scripts/prepare_data.py aime_2024 math_500 --out DIR          # some sets
    python scripts/prepare_data.py deepscaler --source ./deepscaler.json --out DIR   # a local copy
    python scripts/prepare_data.py test dapo_math_17k --source aime_2025=./AIME2025 --out DIR

Names: training sets dapo_math_17k, deepscaler, math_train; test sets aime_2024, aime_2025,
amc_2023, math_500; groups train, test, all. Test sets are written first, and training sets drop
any problem that appears in a test set already in --out (--no-decontaminate keeps them). A set
already in --out is never overwritten. One JSON line per set reports the counts.
"""


def parse_args(argv: Sequence[str] | None):
    """The options of ``scripts/prepare_data.py``, every one checked before any data set loads."""
    import argparse

    from verl_repro.cli import ArgumentParser, check_new_file, count

    groups = {"train": TRAIN_SETS, "test": TEST_SETS, "all": TEST_SETS + TRAIN_SETS}
    epilog = "\n".join(f"  {name:<14} {spec.hub_id:<42} {spec.description}" for name, spec in SOURCES.items())
    parser = ArgumentParser(prog="prepare_data.py", description=USAGE, epilog="data sets:\n" + epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", metavar="NAME", choices=sorted(SOURCES) + sorted(groups))
    parser.add_argument("--out", required=True, type=Path, help="output directory for <name>.parquet (existing sets are refused)")
    parser.add_argument(
        "--source", action="append", default=[], metavar="[NAME=]PATH_OR_HUB_ID",
        help="local file / directory or hub id to read instead of the default hub id (NAME= needed with several sets)",
    )
    parser.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE, help=f"must contain {PROBLEM_PLACEHOLDER}")
    parser.add_argument("--exclude", action="append", default=[], type=Path, help="parquet whose problems are dropped (repeatable)")
    parser.add_argument("--no-decontaminate", action="store_true", help="keep training problems that appear in test sets in --out")
    parser.add_argument("--max-rows", type=count(optional_limit=True), default=None, help="keep at most this many rows per set (after dedup)")
    args = parser.parse_args(argv)

    names: list[str] = []
    for name in args.names:
        for expanded in groups.get(name, (name,)):
            if expanded not in names:
                names.append(expanded)
    # Test sets first, so training sets can be decontaminated against them.
    args.names = [n for n in names if n in TEST_SETS] + [n for n in names if n in TRAIN_SETS]

    sources: dict[str, str] = {}
    for item in args.source:
        name, sep, value = item.partition("=")
        if sep and name in SOURCES:
            sources[name] = value
        elif len(args.names) == 1:
            sources[args.names[0]] = item
        else:
            parser.error(f"--source {item!r}: with several data sets write NAME=PATH (NAME one of {args.names})")
    unknown = sorted(set(sources) - set(args.names))
    if unknown:
        parser.error(f"--source given for {unknown}, which is not being prepared")
    args.sources = sources
    if PROBLEM_PLACEHOLDER not in args.prompt_template:
        parser.error(f"--prompt-template must contain {PROBLEM_PLACEHOLDER}, got {args.prompt_template!r}")
    for path in args.exclude:
        if not path.is_file():
            parser.error(f"--exclude {path} is not a file")
    for name in args.names:  # a set already prepared is never overwritten, and is refused before any set loads
        check_new_file(args.out / f"{name}.parquet", "--out")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/prepare_data.py``: one JSON line per prepared set; a bad input is one line on stderr."""
    from verl_repro.cli import report_usage_errors

    return report_usage_errors("prepare_data.py", lambda: _run(parse_args(argv)))


def _run(args) -> int:
    for name in args.names:
        exclude = list(args.exclude)
        if name in TRAIN_SETS and not args.no_decontaminate:
            exclude += [args.out / f"{test}.parquet" for test in TEST_SETS if (args.out / f"{test}.parquet").exists()]
        try:
            path, stats = prepare(name, args.out, source=args.sources.get(name), prompt_template=args.prompt_template,
                                  exclude=exclude, max_rows=args.max_rows)
        except UsageError as error:  # which set it was, in front of what went wrong
            raise UsageError(f"{name}: {error}") from error
        print(stats_json(name, path, stats), flush=True)
    return 0
