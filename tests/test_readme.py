"""The README stays true: its config table is generated from the dataclasses, its two commands exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_config_table_matches_dataclasses():
    from verl_repro.config import config_markdown_table

    assert config_markdown_table() in (ROOT / "docs" / "repro.md").read_text(), "regenerate the table: python -c 'from verl_repro.config import config_markdown_table as t; print(t())'"


def test_quick_start_has_exactly_two_commands_and_make_targets_exist():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_readme_is_short_links_only_pages_of_this_repository_and_shows_the_demo():
    assert len(README.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)", README):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), target
    for topic in ("cpu", "repro", "corrpo", "kernel", "scoring", "reward", "recipes", "evaluation", "analysis", "development"):
        assert f"(docs/{topic}.md)" in README, topic
    assert "DESIGN" not in README and "../shared" not in README
    assert "source .venv/bin/activate" in README
