#!/usr/bin/env python3
"""Prepare the recipes' data as veRL parquet (thin CLI over ``verl_repro.evaluation.datasets``).

    python scripts/prepare_data.py all --out ~/data/verl_repro          # every set below, from the hub
    python scripts/prepare_data.py aime_2024 math_500 --out DIR          # some sets
    python scripts/prepare_data.py deepscaler --source ./deepscaler.json --out DIR   # a local copy
    python scripts/prepare_data.py test dapo_math_17k --source aime_2025=./AIME2025 --out DIR

Names: training sets dapo_math_17k, deepscaler, math_train; test sets aime_2024, aime_2025,
amc_2023, math_500; groups ``train``, ``test``, ``all``. Test sets are written first, and
training sets drop any problem that appears in a test set already in ``--out``
(``--no-decontaminate`` keeps them). One JSON line per set reports the counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verl_repro.evaluation import datasets as repro_datasets


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    groups = {"train": repro_datasets.TRAIN_SETS, "test": repro_datasets.TEST_SETS, "all": repro_datasets.TEST_SETS + repro_datasets.TRAIN_SETS}
    epilog = "\n".join(f"  {name:<14} {spec.hub_id:<42} {spec.description}" for name, spec in repro_datasets.SOURCES.items())
    parser = argparse.ArgumentParser(
        description=__doc__, epilog="data sets:\n" + epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", metavar="NAME", choices=sorted(repro_datasets.SOURCES) + sorted(groups))
    parser.add_argument("--out", required=True, type=Path, help="output directory for <name>.parquet")
    parser.add_argument(
        "--source", action="append", default=[], metavar="[NAME=]PATH_OR_HUB_ID",
        help="local file / directory or hub id to read instead of the default hub id (NAME= needed with several sets)",
    )
    parser.add_argument("--prompt-template", default=repro_datasets.DEFAULT_PROMPT_TEMPLATE, help="must contain {problem}")
    parser.add_argument("--exclude", action="append", default=[], type=Path, help="parquet whose problems are dropped (repeatable)")
    parser.add_argument("--no-decontaminate", action="store_true", help="keep training problems that appear in test sets in --out")
    parser.add_argument("--max-rows", type=_positive_int, default=None, help="keep at most this many rows per set (after dedup)")
    args = parser.parse_args(argv)

    names: list[str] = []
    for name in args.names:
        for expanded in groups.get(name, (name,)):
            if expanded not in names:
                names.append(expanded)
    # Test sets first, so training sets can be decontaminated against them.
    args.names = [n for n in names if n in repro_datasets.TEST_SETS] + [n for n in names if n in repro_datasets.TRAIN_SETS]

    sources: dict[str, str] = {}
    for item in args.source:
        name, sep, value = item.partition("=")
        if sep and name in repro_datasets.SOURCES:
            sources[name] = value
        elif len(args.names) == 1:
            sources[args.names[0]] = item
        else:
            parser.error(f"--source {item!r}: with several data sets write NAME=PATH (NAME one of {args.names})")
    unknown = sorted(set(sources) - set(args.names))
    if unknown:
        parser.error(f"--source given for {unknown}, which is not being prepared")
    args.sources = sources
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in args.names:
        exclude = list(args.exclude)
        if name in repro_datasets.TRAIN_SETS and not args.no_decontaminate:
            exclude += [args.out / f"{test}.parquet" for test in repro_datasets.TEST_SETS if (args.out / f"{test}.parquet").exists()]
        try:
            path, stats = repro_datasets.prepare(
                name, args.out, source=args.sources.get(name), prompt_template=args.prompt_template,
                exclude=exclude, max_rows=args.max_rows,
            )
        except (ValueError, KeyError, FileNotFoundError) as error:  # bad input files: one line naming the file or column
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"prepare_data.py: error: {name}: {message}", file=sys.stderr)
            return 2
        print(repro_datasets.stats_json(name, path, stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
