"""Backtracking phrases in reasoning text: how often a response second-guesses itself.

RePro claims to cut backtracking ("wait", "alternatively", "let me re-check" ...). The paper does
not publish a phrase list, so this one is ours and configurable (``verl-repro analyze
--backtracking-phrases``). Matching is case-insensitive, on whole words (``"wait"`` does not match
``"waiting"``), any run of whitespace matches a space, and matches do not overlap: the longest
phrase wins where several start at the same place (``"but actually"`` counts once, not also as
``"actually"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from verl_repro import UsageError

DEFAULT_BACKTRACKING_PHRASES: tuple[str, ...] = (
    "wait",
    "alternatively",
    "hmm",
    "let me re-check",
    "let me recheck",
    "let me check again",
    "let me double-check",
    "let me double check",
    "let me verify",
    "let me reconsider",
    "let me re-evaluate",
    "on second thought",
    "but actually",
    "i made a mistake",
    "that's not right",
    "that is not right",
)

SCOPES = ("thinking", "all")


def _normalize(phrase: str) -> str:
    return " ".join(phrase.lower().split())


@dataclass(frozen=True)
class BacktrackingCounter:
    """Counts backtracking phrases in a text.

    ``scope="thinking"`` counts only the text before the first ``think_end_token`` (the whole text
    when there is none: a truncated or non-thinking response is all reasoning); ``"all"`` counts
    the whole response.
    """

    phrases: tuple[str, ...] = DEFAULT_BACKTRACKING_PHRASES
    scope: str = "thinking"
    think_end_token: str = "</think>"
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        phrases = tuple(_normalize(p) for p in self.phrases)
        if not phrases or not all(phrases):
            raise UsageError(f"--backtracking-phrases must be non-empty phrases, got {list(self.phrases)!r}")
        if self.scope not in SCOPES:
            raise UsageError(f"--backtracking-scope must be one of {SCOPES}, got {self.scope!r}")
        object.__setattr__(self, "phrases", tuple(dict.fromkeys(phrases)))
        # Longest first, so the regex alternation prefers "but actually" over "actually".
        alternatives = [r"\s+".join(map(re.escape, p.split())) for p in sorted(self.phrases, key=len, reverse=True)]
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
        object.__setattr__(self, "_pattern", pattern)

    def scoped_text(self, text: str) -> str:
        if self.scope == "thinking":
            position = text.find(self.think_end_token)
            if position >= 0:
                return text[:position]
        return text

    def count(self, text: str) -> dict[str, int]:
        """Occurrences of each phrase (every configured phrase is a key, zeros included)."""
        counts = dict.fromkeys(self.phrases, 0)
        for match in self._pattern.finditer(self.scoped_text(text)):
            counts[_normalize(match.group(0))] += 1
        return counts

    def total(self, text: str) -> int:
        return sum(self.count(text).values())


def parse_phrases(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Phrases from a CLI value: None → the defaults; ``"@path"`` → one phrase per line of a file;
    otherwise a comma-separated list (a sequence is taken as is)."""
    if value is None:
        return DEFAULT_BACKTRACKING_PHRASES
    if isinstance(value, str):
        if value.startswith("@"):
            from pathlib import Path

            lines = Path(value[1:]).read_text().splitlines()
            return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(value)
