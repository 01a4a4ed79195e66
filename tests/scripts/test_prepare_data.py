"""Data preparation on small local files shaped like each hub source (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from verl_repro.evaluation import datasets as rd

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "prepare_data.py"

AIME_PROBLEM = "Find the number of ordered pairs $(x, y)$ of integers with $x^2 + y^2 = 25$."


def write_dapo(path: Path) -> None:
    """BytedTsinghua-SIA/DAPO-Math-17k: veRL-format rows, every problem repeated (~100x upstream)."""
    rows = []
    for copy in range(3):
        for index, (problem, answer) in enumerate([("What is $1+1$?", "2"), (AIME_PROBLEM, "12"), ("Compute $3 \\cdot 4$.", "12")]):
            rows.append(
                {
                    "data_source": "math_dapo",
                    "prompt": [{"role": "user", "content": rd.DAPO_PREFIX + problem + rd.DAPO_SUFFIX}],
                    "ability": "MATH",
                    "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
                    "extra_info": {"index": f"uuid-{index}-{copy}"},
                }
            )
    pd.DataFrame(rows).to_parquet(path)


def write_deepscaler(path: Path) -> None:
    """agentica-org/DeepScaleR-Preview-Dataset: deepscaler.json, a JSON array of problem / answer / solution."""
    rows = [
        {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "answer": "\\frac{3}{4}", "solution": "..."},
        {"problem": "Solve $x + 1 = 3$.", "answer": "2", "solution": "..."},
        {"problem": "A problem whose answer was lost.", "answer": "", "solution": "..."},
        {"problem": "Solve  $x + 1 = 3$.", "answer": "2", "solution": "duplicate up to whitespace"},
    ]
    path.write_text(json.dumps(rows))


def write_math_lighteval(directory: Path) -> None:
    """DigitalLearningGmbH/MATH-lighteval snapshot: data/{train,test}-*.parquet, answer inside the solution."""
    (directory / "data").mkdir(parents=True)
    train = [
        {"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 1", "type": "Prealgebra",
         "solution": "Divide by 2: $\\boxed{\\frac{1}{2}}$."},
        {"problem": "What is $\\{1,2\\} \\cup \\{3\\}$?", "level": "Level 2", "type": "Algebra",
         "solution": "First \\boxed{2}, then the union is $\\boxed{\\{1,2,3\\}}$."},
        {"problem": "No boxed answer here.", "level": "Level 3", "type": "Algebra", "solution": "It is 4."},
    ]
    test = [{"problem": "A test problem.", "level": "Level 1", "type": "Algebra", "solution": "$\\boxed{7}$"}]
    pd.DataFrame(train).to_parquet(directory / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame(test).to_parquet(directory / "data" / "test-00000-of-00001.parquet")


def write_aime_2024(path: Path) -> None:
    """HuggingFaceH4/aime_2024: id / problem / solution / answer / url / year."""
    rows = [
        {"id": 60, "problem": AIME_PROBLEM, "solution": "...", "answer": "12", "url": "https://aops", "year": "2024"},
        {"id": 61, "problem": "Find $2^{10} \\bmod 1000$.", "solution": "...", "answer": "24", "url": "https://aops", "year": "2024"},
    ]
    pd.DataFrame(rows).to_parquet(path)


def write_aime_2025(directory: Path) -> None:
    """opencompass/AIME2025 snapshot: aime2025-I.jsonl and aime2025-II.jsonl with question / answer."""
    directory.mkdir(parents=True)
    (directory / "aime2025-I.jsonl").write_text(json.dumps({"question": "Find $5 \\cdot 14$.", "answer": "70"}) + "\n")
    (directory / "aime2025-II.jsonl").write_text(
        json.dumps({"question": "Find $3^4$.", "answer": "81"}) + "\n" + json.dumps({"question": "Find $2^5$.", "answer": "32"}) + "\n"
    )


def write_amc_2023(path: Path) -> None:
    """math-ai/amc23: id / question / answer / url (some mirrors store the answer as a float)."""
    pd.DataFrame([{"id": 0, "question": "What is $27$?", "answer": 27.0, "url": "u"},
                  {"id": 1, "question": "What is $2.5$?", "answer": 2.5, "url": "u"}]).to_parquet(path)


def write_math_500(path: Path) -> None:
    """HuggingFaceH4/MATH-500: problem / solution / answer / subject / level / unique_id (jsonl upstream)."""
    rows = [{"problem": "Compute $\\sqrt{16}$.", "solution": "...", "answer": "4", "subject": "Algebra", "level": 1,
             "unique_id": "test/algebra/1.json"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    paths = {
        "dapo_math_17k": base / "dapo-math-17k.parquet",
        "deepscaler": base / "deepscaler.json",
        "math_train": base / "MATH-lighteval",
        "aime_2024": base / "aime_2024.parquet",
        "aime_2025": base / "AIME2025",
        "amc_2023": base / "amc23.parquet",
        "math_500": base / "test.jsonl",
    }
    write_dapo(paths["dapo_math_17k"])
    write_deepscaler(paths["deepscaler"])
    write_math_lighteval(paths["math_train"])
    write_aime_2024(paths["aime_2024"])
    write_aime_2025(paths["aime_2025"])
    write_amc_2023(paths["amc_2023"])
    write_math_500(paths["math_500"])
    return paths


def _read(path: Path) -> list[dict]:
    return pd.read_parquet(path).to_dict("records")


EXPECTED = {
    # name: [(problem, answer)] in order, after cleaning
    "dapo_math_17k": [("What is $1+1$?", "2"), (AIME_PROBLEM, "12"), ("Compute $3 \\cdot 4$.", "12")],
    "deepscaler": [("What is $\\frac{1}{2} + \\frac{1}{4}$?", "\\frac{3}{4}"), ("Solve $x + 1 = 3$.", "2")],
    "math_train": [("Simplify $\\frac{2}{4}$.", "\\frac{1}{2}"), ("What is $\\{1,2\\} \\cup \\{3\\}$?", "\\{1,2,3\\}")],
    "aime_2024": [(AIME_PROBLEM, "12"), ("Find $2^{10} \\bmod 1000$.", "24")],
    "aime_2025": [("Find $5 \\cdot 14$.", "70"), ("Find $3^4$.", "81"), ("Find $2^5$.", "32")],
    "amc_2023": [("What is $27$?", "27"), ("What is $2.5$?", "2.5")],
    "math_500": [("Compute $\\sqrt{16}$.", "4")],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_source_becomes_verl_rows(sources, tmp_path, name):
    path, stats = rd.prepare(name, tmp_path, source=sources[name])
    rows = _read(path)
    assert [(r["extra_info"]["problem"], r["reward_model"]["ground_truth"]) for r in rows] == EXPECTED[name]
    for index, row in enumerate(rows):
        assert row["data_source"] == name and row["ability"] == "math"
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert message["content"] == row["extra_info"]["problem"] + "\n" + rd.R1_INSTRUCTION
        assert row["reward_model"]["style"] == "rule"
        assert row["extra_info"]["index"] == index
        assert row["extra_info"]["split"] == ("train" if name in rd.TRAIN_SETS else "test")
    assert stats.written == len(EXPECTED[name])


def test_cleaning_counts(sources, tmp_path):
    _, dapo = rd.prepare("dapo_math_17k", tmp_path, source=sources["dapo_math_17k"])
    assert (dapo.loaded, dapo.duplicates, dapo.written) == (9, 6, 3)
    _, deepscaler = rd.prepare("deepscaler", tmp_path, source=sources["deepscaler"])
    assert (deepscaler.loaded, deepscaler.missing_problem_or_answer, deepscaler.duplicates) == (4, 1, 1)
    _, math_train = rd.prepare("math_train", tmp_path, source=sources["math_train"])
    assert (math_train.loaded, math_train.missing_problem_or_answer) == (3, 1)  # the test split file is not read


def test_conflicting_duplicates_keep_the_first_and_are_counted():
    stats = rd.PrepareStats()
    kept = rd.clean([rd.Problem("Q", "1", "a"), rd.Problem(" q ", "2", "b"), rd.Problem("Q", "1", "c")], stats=stats)
    assert kept == [rd.Problem("Q", "1", "a")]
    assert (stats.duplicates, stats.conflicting_duplicates) == (2, 1)


def test_hub_ids_configs_and_splits(monkeypatch):
    """Without a local path each loader asks ``datasets`` for the verified hub id / config / split."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"question": "q", "answer": "1"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rd.load_rows(rd.SOURCES["aime_2025"])
    rd.load_rows(rd.SOURCES["math_train"])
    rd.load_rows(rd.SOURCES["math_500"], source="someone/MATH-500-mirror")
    assert calls == [
        ("opencompass/AIME2025", "AIME2025-I", "test"),
        ("opencompass/AIME2025", "AIME2025-II", "test"),
        ("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
        ("someone/MATH-500-mirror", None, "test"),
    ]
    assert {name: (spec.hub_id, spec.split) for name, spec in rd.SOURCES.items()} == {
        "dapo_math_17k": ("BytedTsinghua-SIA/DAPO-Math-17k", "train"),
        "deepscaler": ("agentica-org/DeepScaleR-Preview-Dataset", "train"),
        "math_train": ("DigitalLearningGmbH/MATH-lighteval", "train"),
        "aime_2024": ("HuggingFaceH4/aime_2024", "train"),
        "aime_2025": ("opencompass/AIME2025", "test"),
        "amc_2023": ("math-ai/amc23", "test"),
        "math_500": ("HuggingFaceH4/MATH-500", "test"),
    }


def test_wrong_columns_name_the_missing_column(tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame([{"problem": "x", "solution": "y"}]).to_parquet(bad)
    with pytest.raises(ValueError, match="'answer' missing"):
        rd.prepare("aime_2024", tmp_path / "out", source=bad)


def test_cli_prepares_test_sets_first_and_decontaminates_training(sources, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "dapo_math_17k", "aime_2024", "--out", str(out),
         "--source", f"dapo_math_17k={sources['dapo_math_17k']}", "--source", f"aime_2024={sources['aime_2024']}",
         "--prompt-template", "Problem: {problem}\nAnswer in \\boxed{}."],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["data_set"] for r in reports] == ["aime_2024", "dapo_math_17k"]
    assert reports[1]["contaminated"] == 3  # the AIME problem, in all 3 DAPO copies
    dapo = _read(out / "dapo_math_17k.parquet")
    assert AIME_PROBLEM not in [r["extra_info"]["problem"] for r in dapo]
    assert dapo[0]["prompt"][0]["content"] == "Problem: What is $1+1$?\nAnswer in \\boxed{}."

    usage = subprocess.run([sys.executable, str(SCRIPT), "aime_2024", "math_500", "--out", str(out), "--source", "x.parquet"],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert usage.returncode == 2 and "NAME=PATH" in usage.stderr


def test_verl_rl_dataset_reads_the_written_parquet(sources, tmp_path, tiny_tokenizer):
    """veRL's own RLHFDataset loads what prepare() writes, with the chat prompt and ground truth intact."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    path, _ = rd.prepare("aime_2025", tmp_path, source=sources["aime_2025"])
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 256, "filter_overlong_prompts": True,
                               "truncation": "error", "return_raw_chat": True})
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tiny_tokenizer, config=config)
    assert len(dataset) == 3
    item = dataset[2]
    assert item["raw_prompt"] == [{"role": "user", "content": "Find $2^5$.\n" + rd.R1_INSTRUCTION}]
    assert item["reward_model"]["ground_truth"] == "32" and item["data_source"] == "aime_2025"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_answers_are_written_by_the_one_ground_truth_rule(tmp_path):
    """A list answer is written as a list, not its Python repr; an empty list counts as missing; \\boxed is unwrapped."""
    source = tmp_path / "mirror.jsonl"
    rows = [{"problem": "Two roots?", "answer": ["4", "5"]}, {"problem": "One root?", "answer": ["6"]},
            {"problem": "No answer?", "answer": []}, {"problem": "Boxed?", "answer": ["\\boxed{7}"]}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path, stats = rd.prepare("math_500", tmp_path / "out", source=source)
    written = _read(path)
    assert [list(r["reward_model"]["ground_truth"]) for r in written] == [["4", "5"], ["6"], ["7"]]
    assert stats.missing_problem_or_answer == 1 and stats.written == 3
    assert rd.answer_text(["4", "5"]) == ("4", "5") and rd.answer_text(["6"]) == "6" and rd.answer_text(None) == ""
    assert rd.answer_text(27.0) == "27" and rd.answer_text(float("nan")) == "" and rd.answer_text(True) == ""


def test_single_answer_sets_keep_plain_strings(sources, tmp_path):
    path, _ = rd.prepare("amc_2023", tmp_path, source=sources["amc_2023"])
    assert [r["reward_model"]["ground_truth"] for r in _read(path)] == ["27", "2.5"]


def test_bad_inputs_are_one_line_errors(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _cli("math_500", "--out", str(out), "--source", str(empty))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"prepare_data.py: error: math_500: {empty}: the file is empty"

    # a mistyped local path is not sent to the hub as a dataset id
    for typo in ("./MATH-500/test.jsnol", str(tmp_path / "nothere.parquet"), "data/math500/test.jsonl"):
        result = _cli("math_500", "--out", str(out), "--source", typo)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"--source {typo}: no such file or directory" in result.stderr
    assert not rd.looks_like_path("someone/MATH-500-mirror") and rd.looks_like_path("x.parquet")

    for bad in ("-1", "0", "two"):
        result = _cli("math_500", "--out", str(out), "--max-rows", bad)
        assert result.returncode == 2 and f"--max-rows: must be an int >= 1, got '{bad}'" in result.stderr
    with pytest.raises(ValueError, match="max_rows must be an int >= 1, got -1"):
        rd.prepare("math_500", out, source=empty, max_rows=-1)
    assert not out.exists()


def test_max_rows_keeps_exactly_that_many(sources, tmp_path):
    path, stats = rd.prepare("aime_2025", tmp_path, source=sources["aime_2025"], max_rows=2)
    assert stats.written == 2 and len(_read(path)) == 2


def test_a_decimal_answer_column_is_usable(tmp_path):
    """A pyarrow decimal128 answer column used to be read as unusable: 0 rows written, exit 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from decimal import Decimal

    source = tmp_path / "decimals.parquet"
    table = pa.table({"problem": ["Half of 5?", "Tiny?"],
                      "answer": pa.array([Decimal("2.50"), Decimal("0.00002")], type=pa.decimal128(10, 5))})
    pq.write_table(table, source)
    path, stats = rd.prepare("math_500", tmp_path / "out", source=source)
    assert [r["reward_model"]["ground_truth"] for r in _read(path)] == ["2.5", "0.00002"] and stats.written == 2


def test_nothing_usable_is_an_error_not_an_empty_set(tmp_path):
    source = tmp_path / "no_answers.jsonl"
    source.write_text(json.dumps({"problem": "Q?", "answer": None}) + "\n")
    with pytest.raises(ValueError, match=r"no usable row: 1 loaded, 1 without a problem or a usable answer"):
        rd.prepare("math_500", tmp_path / "out", source=source)
    assert not (tmp_path / "out" / "math_500.parquet").exists()


def test_cli_never_overwrites_and_names_broken_sources(sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert rd.main(["aime_2024", "--out", str(out), "--source", str(sources["aime_2024"])]) == 0
    first = (out / "aime_2024.parquet").read_bytes()
    capsys.readouterr()
    assert rd.main(["aime_2024", "--out", str(out), "--source", str(sources["aime_2024"])]) == 2
    assert capsys.readouterr().err == (f"prepare_data.py: error: --out {out / 'aime_2024.parquet'} already exists; results "
                                       "never overwrite earlier ones: name a new path or remove it\n")
    assert (out / "aime_2024.parquet").read_bytes() == first
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "ans')
    assert rd.main(["math_500", "--out", str(out), "--source", str(truncated)]) == 2
    assert capsys.readouterr().err == f"prepare_data.py: error: math_500: {truncated}:2 is not valid JSON (Unterminated string starting at); a truncated download?\n"
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    assert rd.main(["math_500", "--out", str(out), "--source", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prepare_data.py: error: math_500: {corrupt}: not readable as parquet rows (") and err.count("\n") == 1
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    assert rd.main(["math_500", "--out", str(out), "--source", str(empty_folder)]) == 2
    assert "no ['.csv', '.json', '.jsonl', '.parquet'] files under this folder" in capsys.readouterr().err
