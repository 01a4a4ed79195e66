"""What the repository's own text must not hold.

* citations of documents outside the repository (an internal design document, a sibling folder):
  code and docs cite pages under ``docs/``;
* issue numbers in comments and docstrings: a comment says why, not which ticket;
* the package probing for its own modules (``find_spec("verl_repro...")``, ``hasattr`` on one of its
  modules): a broken import of ours must fail loudly, not turn into a silent downgrade.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

OUTSIDE_DOCUMENT = re.compile(r"DESIGN\s*§|DESIGN\.md|\.\./shared|shared/DESIGN")
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues?[ -]?#?\d+\b|\(#\d+\)")
SELF_DETECTION = re.compile(
    r"find_spec\(\s*(?:module_name|f?[\"']verl_repro)|_module_exists|hasattr\(\s*(?:alg|algorithms|verl_repro)\b"
)


def _tracked(*suffixes: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if name.endswith(suffixes) and (ROOT / name).resolve() != THIS]


def _hits(pattern: re.Pattern, files: list[Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if pattern.search(line)
    ]


@pytest.fixture(scope="module")
def text_files():
    files = _tracked(".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".cfg", "Makefile")
    assert any(path.name == "README.md" for path in files) and any(path.suffix == ".py" for path in files)
    return files


def test_no_citation_of_documents_outside_the_repository(text_files):
    # The README test names the patterns it forbids; that line is the check, not a citation.
    files = [path for path in text_files if path.name != "test_readme.py"]
    assert not _hits(OUTSIDE_DOCUMENT, files)


def test_no_issue_numbers(text_files):
    assert not _hits(ISSUE_NUMBER, text_files)


def test_the_package_does_not_probe_for_its_own_modules():
    assert not _hits(SELF_DETECTION, _tracked(".py"))


def test_the_patterns_catch_what_they_are_for():
    assert OUTSIDE_DOCUMENT.search("the layout (DESIGN §2)") and ISSUE_NUMBER.search("# (issue 10)")
    assert SELF_DETECTION.search('if importlib.util.find_spec("verl_repro.cpu.launcher") is None:')
    assert SELF_DETECTION.search('rho = f(x) if hasattr(alg, "masked_spearman") else None')
    assert not SELF_DETECTION.search('importlib.util.find_spec("vllm")')
