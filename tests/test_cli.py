"""Every command, walked through bad inputs: a non-zero exit, one line on stderr naming the
problem, no traceback — and nothing computed first (each case is refused in well under a second
of work: argument parsing, reading the named files, claiming the output folder).

The subcommands of ``verl-repro`` and the two scripts (``scripts/evaluate.py`` and
``scripts/prepare_data.py``, whose code is ``verl_repro.evaluation.evaluate.main`` and
``verl_repro.evaluation.datasets.main``) run in-process; each case names the input and a piece of the message
the user must see.
"""

from __future__ import annotations

import json

import pytest

from verl_repro.cli import main
from verl_repro.evaluation import datasets
from verl_repro.evaluation import evaluate as evaluation

COMMANDS = {"verl-repro": main, "evaluate.py": evaluation.main, "prepare_data.py": datasets.main}


@pytest.fixture
def files(tmp_path):
    """Inputs the cases point at: a used output folder, a file, a metrics file per kind of damage."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "summary.json").write_text("{}")
    (tmp_path / "a_file.txt").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    (tmp_path / "noprompt.jsonl").write_text('{"response": "b"}\n')
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 0.5}}) + "\n")
    for name, step in (("null_step", "null"), ("half_step", "1.5"), ("inf_step", "Infinity"), ("list_step", "[1]")):
        (tmp_path / f"{name}.jsonl").write_text('{"step": %s, "data": {}}\n' % step)
    (tmp_path / "not_metrics.jsonl").write_text('{"loss": 1}\n')
    _benchmark(tmp_path / "bench.parquet", [("What is 1 plus 1?", "2"), ("What is 2 plus 2?", "4")])
    (tmp_path / "empty_bench.parquet").write_bytes(b"")
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "model_world_size_2_rank_0.pt").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "math_500.parquet").write_bytes(b"an earlier set")
    (tmp_path / "truncated.jsonl").write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "ans')
    (tmp_path / "empty_folder").mkdir()
    return tmp_path


def _benchmark(path, problems):
    import pandas as pd

    rows = datasets.verl_rows([datasets.Problem(p, a, str(i)) for i, (p, a) in enumerate(problems)], "b", "test")
    pd.DataFrame(rows).to_parquet(path)


# (argv with {tmp} for the fixture's folder, a piece of the one stderr line)
CASES = {
    "unknown subcommand": (["bogus"], "invalid choice: 'bogus'"),
    "info: unknown flag": (["info", "--bogus"], "unrecognized arguments: --bogus"),
    # analyze
    "analyze: negative limit": (["analyze", "--limit", "-1"], "--limit: must be an int >= 1, got '-1'; leave the option out for no limit"),
    "analyze: zero limit": (["analyze", "--limit", "0"], "--limit: must be an int >= 1, got '0'"),
    "analyze: zero samples": (["analyze", "--samples-per-prompt", "0"], "--samples-per-prompt: must be an int >= 1"),
    "analyze: text count": (["analyze", "--max-new-tokens", "many"], "--max-new-tokens: must be an int >= 1, got 'many'"),
    "analyze: nan temperature": (["analyze", "--temperature", "nan"], "--temperature: must be a finite number > 0, got 'nan'"),
    "analyze: one grid point": (["analyze", "--grid-points", "1"], "--grid-points: must be an int >= 2"),
    "analyze: weight above 1": (["analyze", "--stability-weight", "2"], "--stability-weight: must be in [0, 1], got 2.0"),
    # repro.* options: the setting's own check (ReproConfig.validate), at parse, naming the option
    "analyze: zero segments": (["analyze", "--num-segments", "0"], "--num-segments: must be a positive int, got 0"),
    "analyze: fractional segments": (["analyze", "--num-segments", "2.5"], "--num-segments: must be an int, got '2.5'"),
    "analyze: unknown no-think-end": (["analyze", "--no-think-end", "maybe"], "--no-think-end: must be one of ('skip', 'use_end')"),
    "demo walkthrough: nan alpha": (["demo", "--walkthrough", "--alpha", "nan"], "--alpha: must be a finite number, got nan"),
    "analyze: step word": (["analyze", "--step", "first"], "--step: must be a step number or 'last'"),
    "analyze: missing trajectories": (["analyze", "--trajectories", "{tmp}/missing.jsonl"], "--trajectories {tmp}/missing.jsonl does not exist"),
    "analyze: broken trajectories": (["analyze", "--trajectories", "{tmp}/bad.jsonl"], "--trajectories {tmp}/bad.jsonl:2 is not valid JSON"),
    "analyze: used output folder": (["analyze", "--output-dir", "{tmp}/used"], "--output-dir {tmp}/used is not empty"),
    "analyze: output folder is a file": (["analyze", "--output-dir", "{tmp}/a_file.txt"], "--output-dir {tmp}/a_file.txt is a file"),
    "analyze: empty boundary pattern": (["analyze", "--boundary-patterns", ""], "repro.boundary_patterns must be a non-empty list"),
    "analyze: labels alone": (["analyze", "--labels", "a", "b"], "--labels names the runs of --compare"),
    "analyze: missing phrases file": (["analyze", "--backtracking-phrases", "@{tmp}/missing.txt"], "{tmp}/missing.txt: No such file"),
    # inversion
    "inversion: negative limit": (["inversion", "--limit", "-1"], "--limit: must be an int >= 1, got '-1'"),
    "inversion: bad regex": (["inversion", "--fingerprint-params", "("], "--fingerprint-params: not a regular expression"),
    "inversion: negative fingerprint tokens": (["inversion", "--fingerprint-tokens", "-1"], "--fingerprint-tokens: must be an int >= 0"),
    "inversion: top-p above 1": (["inversion", "--top-p", "1.5"], "--top-p: must be a finite number > 0 and <= 1"),
    "inversion: two min tokens": (["inversion", "--min-tokens", "2"], "--min-tokens: must be an int >= 3"),
    "inversion: unknown matrix": (["inversion", "--matrices", "w_proj"], "repro.corr.matrices must be a non-empty list of distinct names"),
    "inversion: missing data": (["inversion", "--data", "{tmp}/missing.jsonl"], "--data {tmp}/missing.jsonl does not exist"),
    "inversion: row without prompt": (["inversion", "--data", "{tmp}/noprompt.jsonl"], "row 0: no prompt"),
    "inversion: used output folder": (["inversion", "--output-dir", "{tmp}/used"], "--output-dir {tmp}/used is not empty"),
    # plot
    "plot: folder as metrics": (["plot", "{tmp}/run"], "{tmp}/run is a folder, not a metrics file; did you mean {tmp}/run/metrics.jsonl?"),
    "plot: missing metrics": (["plot", "{tmp}/missing.jsonl"], "{tmp}/missing.jsonl does not exist"),
    "plot: null step": (["plot", "{tmp}/null_step.jsonl"], "null_step.jsonl:1: the step must be a whole number, got null"),
    "plot: fractional step": (["plot", "{tmp}/half_step.jsonl"], "the step must be a whole number, got 1.5"),
    "plot: infinite step": (["plot", "{tmp}/inf_step.jsonl"], "the step must be a whole number, got Infinity"),
    "plot: list step": (["plot", "{tmp}/list_step.jsonl"], "the step must be a whole number, got [1]"),
    "plot: foreign jsonl": (["plot", "{tmp}/not_metrics.jsonl"], "not_metrics.jsonl:1 is not a veRL metrics line"),
    "plot: output without .png": (["plot", "{tmp}/run/metrics.jsonl", "--output", "{tmp}/curves"], "--output must name a .png file"),
    "plot: labels count": (["plot", "{tmp}/run/metrics.jsonl", "--labels", "a", "b"], "2 --labels for 1 metrics files"),
    # demo
    "demo: zero steps": (["demo", "--steps", "0"], "--steps: must be an int >= 1, got '0'"),
    "demo: group of one": (["demo", "--group-size", "1"], "--group-size: must be an int >= 2"),
    "demo: negative learning rate": (["demo", "--lr=-1e-6"], "--lr: must be a finite number > 0"),
    "demo: unknown method": (["demo", "--methods", "ppo"], "--methods: invalid choice: 'ppo'"),
    "demo walkthrough: zero problems": (["demo", "--walkthrough", "--num-problems", "0"], "--num-problems: must be an int >= 1"),
    "demo walkthrough: missing problems": (["demo", "--walkthrough", "--problems", "{tmp}/missing.jsonl"], "--problems {tmp}/missing.jsonl does not exist"),
    "demo walkthrough: broken problems": (["demo", "--walkthrough", "--problems", "{tmp}/bad.jsonl"], "bad.jsonl:2 is not valid JSON"),
    "demo walkthrough: used output folder": (["demo", "--walkthrough", "--output-dir", "{tmp}/used"], "--output-dir {tmp}/used is not empty"),
    # cpu-run
    "cpu-run: unknown flag": (["cpu-run", "--bogus"], "unrecognized arguments: --bogus"),
    "cpu-run: bare word": (["cpu-run", "total_training_steps"], "unrecognized arguments: total_training_steps"),
    "cpu-run: smoke on a file": (["cpu-run", "--smoke", "{tmp}/a_file.txt"], "--smoke {tmp}/a_file.txt is a file"),
    "cpu-run: used run folder": (["cpu-run", "--run-dir", "{tmp}/used"], "--run-dir {tmp}/used is not empty"),
}
EVALUATE = ["evaluate.py", "--model", "{tmp}/model", "--data", "b={tmp}/bench.parquet"]
CASES.update({
    # scripts/evaluate.py: each used to be found after sampling everything, or not at all
    "evaluate: negative max problems": (EVALUATE + ["--max-problems", "-1"], "--max-problems: must be an int >= 1, got '-1'"),
    "evaluate: zero k": (EVALUATE + ["--ks", "0"], "--ks: must be an int >= 1, got '0'"),
    "evaluate: zero samples": (EVALUATE + ["--n", "0"], "--n: must be an int >= 1, got '0'"),
    "evaluate: k past n": (EVALUATE + ["--ks", "4", "--n", "2"], "--ks 4 exceeds --n 2"),
    "evaluate: zero grading timeout": (EVALUATE + ["--grading-timeout", "0"], "--grading-timeout: must be a finite number >= 0.1"),
    "evaluate: nan grading timeout": (EVALUATE + ["--grading-timeout", "nan"], "--grading-timeout: must be a finite number >= 0.1, got 'nan'"),
    "evaluate: zero batch size": (EVALUATE + ["--batch-size", "0"], "--batch-size: must be an int >= 1"),
    "evaluate: greedy with n samples": (EVALUATE + ["--temperature", "0", "--n", "4"], "--temperature 0 is greedy decoding"),
    "evaluate: used output folder": (EVALUATE + ["--out", "{tmp}/used"], "--out {tmp}/used is not empty"),
    "evaluate: missing benchmark": (["evaluate.py", "--model", "{tmp}/model", "--data", "b={tmp}/missing.parquet"], "missing benchmark files: {tmp}/missing.parquet"),
    "evaluate: unreadable benchmark": (["evaluate.py", "--model", "{tmp}/model", "--data", "b={tmp}/empty_bench.parquet"], "{tmp}/empty_bench.parquet: not a readable parquet file"),
    "evaluate: no benchmark": (["evaluate.py", "--model", "{tmp}/model"], "no benchmark: give --data NAME=PARQUET"),
    "evaluate: sharded checkpoint": (["evaluate.py", "--model", "{tmp}/sharded", "--data", "b={tmp}/bench.parquet"], "is a veRL FSDP checkpoint (sharded): merge it"),
    "evaluate: missing model": (["evaluate.py", "--model", "{tmp}/missing_model", "--data", "b={tmp}/bench.parquet"], "--model {tmp}/missing_model: no such folder"),
    # scripts/prepare_data.py
    "prepare: existing set": (["prepare_data.py", "math_500", "--out", "{tmp}/prepared"], "--out {tmp}/prepared/math_500.parquet already exists"),
    "prepare: truncated jsonl": (["prepare_data.py", "math_500", "--out", "{tmp}/new", "--source", "{tmp}/truncated.jsonl"], "truncated.jsonl:2 is not valid JSON"),
    "prepare: folder without data": (["prepare_data.py", "math_500", "--out", "{tmp}/new", "--source", "{tmp}/empty_folder"], "files under this folder"),
    "prepare: hub offline": (["prepare_data.py", "math_500", "--out", "{tmp}/new"], "HuggingFaceH4/MATH-500: cannot load it from the hub"),
    "prepare: negative max rows": (["prepare_data.py", "math_500", "--out", "{tmp}/new", "--max-rows", "-1"], "--max-rows: must be an int >= 1"),
    "prepare: template without problem": (["prepare_data.py", "math_500", "--out", "{tmp}/new", "--prompt-template", "x"], "--prompt-template must contain {problem}"),
    "prepare: missing exclude": (["prepare_data.py", "math_500", "--out", "{tmp}/new", "--exclude", "{tmp}/missing.parquet"], "--exclude {tmp}/missing.parquet is not a file"),
    "prepare: unknown set": (["prepare_data.py", "math_501", "--out", "{tmp}/new"], "invalid choice: 'math_501'"),
})


def run_command(argv: list[str]) -> int:
    command, argv = (argv[0], argv[1:]) if argv[0] in COMMANDS else ("verl-repro", argv)
    try:
        return COMMANDS[command](argv)
    except SystemExit as exit_:  # argparse exits; everything else returns its code
        return exit_.code


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_line_naming_it(name, files, capsys):
    argv, needle = CASES[name]
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    needle = needle.replace("{tmp}", str(files))
    code = run_command(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code not in (0, None), captured.out
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    command = argv[0] if argv[0] in COMMANDS else "verl-repro"
    assert needle in lines[0] and lines[0].startswith(command), lines[0]
