"""Rewrites applied to both sides of a comparison before math-verify sees them (``docs/reward.md``).

math-verify misreads a few number forms that math data sets and models write all the time
(measured on math-verify 0.9 as shipped with veRL 0.9.1):

* thin-space thousands ``2\\,500`` parse as 502 (the ``\\,`` splits the number), ``1\\,000`` as 0
  — both false positives — and ``{,}`` thousands (``1{,}000``) are read inconsistently;
* a percent sign makes ``25\\%`` unequal to ``25``, and ``25 \\%`` unequal to ``25\\%``;
* a trailing period (``5.`` in a ground truth copied from a sentence) makes ``5`` wrong.

Each rewrite touches only the form it is for: a separator joins digits only between a group of
1-3 digits and groups of exactly three, so ``1\\,2`` and ``x\\,dx`` are unchanged; a percent
is recognized only at the very end of the text; a period is removed only at the end and not from
an ellipsis. The percent rule: an answer ``x\\%`` equals ``x``, and equals ``x/100`` only when the
ground truth is written as a fraction or a decimal (``\\frac{1}{4}``, ``1/4``, ``0.25``); a
ground truth ``x\\%`` equals an answer ``x`` or ``x\\%``.
"""

from __future__ import annotations

import re

# A digit group, then one or more (separator, exactly three digits); not inside a longer number.
_SEPARATOR = r"(?:\\,|\\!|\\;|\\:|\\ |\{,\}|\u2009|\u202f)"
_GROUPED_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:" + _SEPARATOR + r"\d{3})+)(?!\d)")
_SEPARATOR_RE = re.compile(_SEPARATOR)
# A trailing percent: \%, %, \text{\%}, \text{ percent}, \mbox{\%}, optionally after (thin) spaces.
_PERCENT = re.compile(
    r"(?:\s|\\,|\\!|\\;|\\ |~)*(?:\\%|%|\\(?:text|textrm|mbox|mathrm)\{\s*(?:\\%|%|percent)\s*\})\s*$"
)
_TRAILING_PERIOD = re.compile(r"(?<![.\\])\.\s*$")
_FRACTION_OR_DECIMAL = re.compile(r"\\[dt]?frac|/|\.\d")


def join_thousands(text: str) -> str:
    """``2\\,500`` / ``1{,}000`` / ``1\\,000\\,000`` → ``2500`` / ``1000`` / ``1000000``; other text unchanged."""
    return _GROUPED_NUMBER.sub(lambda match: _SEPARATOR_RE.sub("", match.group(1)), text)


def split_percent(text: str) -> tuple[str, bool]:
    """``(text without a trailing percent sign, whether it had one)``."""
    stripped = _PERCENT.sub("", text)
    return (stripped.strip(), True) if stripped != text else (text, False)


def strip_trailing_period(text: str) -> str:
    """``5.`` → ``5``; ``\\ldots`` / ``...`` and ``5.0`` are unchanged."""
    return _TRAILING_PERIOD.sub("", text).rstrip()


def is_fraction_or_decimal(text: str) -> bool:
    """Is a number written as a fraction (``\\frac``, ``a/b``) or with a decimal point?"""
    return bool(_FRACTION_OR_DECIMAL.search(text))


def normalize(text: str) -> tuple[str, bool]:
    """``(normalized text, had a trailing percent)`` for either side of a comparison."""
    text = strip_trailing_period(join_thousands(text.strip()))
    text, percent = split_percent(text)
    return strip_trailing_period(text), percent


def comparison_pairs(answer: str, ground_truth: str) -> list[tuple[str, str]]:
    """The ``(answer, ground truth)`` pairs to hand to math-verify; the answer is correct when any verifies.

    The first pair is the normalized one; an answer ``x\\%`` adds ``(\\frac{x}{100}, gt)`` when the
    ground truth is written as a fraction or decimal (see the module docstring).
    """
    answer_text, answer_percent = normalize(answer)
    gold_text, gold_percent = normalize(ground_truth)
    if not answer_text or not gold_text:
        return []
    pairs = [(answer_text, gold_text)]
    if answer_percent and not gold_percent and is_fraction_or_decimal(gold_text):
        pairs.append((f"\\frac{{{answer_text}}}{{100}}", gold_text))
    return pairs
