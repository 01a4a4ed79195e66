"""Rewrites applied to both sides of a comparison before math-verify sees them (``docs/reward.md``).

math-verify misreads a few number forms that math data sets and models write all the time
(measured on math-verify 0.9 as shipped with veRL 0.9.1):

* thin-space thousands ``2\\,500`` parse as 502 (the ``\\,`` splits the number), ``1\\,000`` as 0
  — both false positives — and ``{,}`` thousands (``1{,}000``) are read inconsistently;
* e-notation ``2e-05`` parses as ``2·e − 5`` (Euler's number), so ``0.436564`` equals it;
* a percent sign makes ``25\\%`` unequal to ``25``, and ``25 \\%`` unequal to ``25\\%``;
* a trailing period (``5.`` in a ground truth copied from a sentence) makes ``5`` wrong.

Each rewrite touches only the form it is for: a separator joins digits only between a group of
1-3 digits and groups of exactly three, so ``1\\,2`` and ``x\\,dx`` are unchanged; e-notation is
a number written with no space around its ``e`` (``2e-5``, ``1.5E+3``), so ``2e - 5`` and
``2e^{3}`` keep Euler's number, and it becomes the plain decimal it denotes, as does
``2\\times 10^{-5}``; a percent is recognized only at the very end of the text; a
period is removed only at the end and not from an ellipsis.

The percent rule — one reading per comparison, chosen by how the ground truth is written:

* a ground truth with a percent sign (``25\\%``): the answer's number must equal it (``25`` or ``25\\%``);
* a ground truth that is a ratio — a number literal strictly between -1 and 1 other than 0
  (``0.25``, ``\\frac{1}{4}``, ``1/4``): an answer ``x\\%`` means ``x/100``;
* any other ground truth (``25``, ``12.5``, ``\\frac{100}{3}``, ``x+1``): ``x\\%`` means ``x``
  (the data sets' convention for "what percent" questions).
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Optional

# A digit group, then one or more (separator, exactly three digits); not inside a longer number.
_SEPARATOR = r"(?:\\,|\\!|\\;|\\:|\\ |\{,\}|\u2009|\u202f)"
_GROUPED_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:" + _SEPARATOR + r"\d{3})+)(?!\d)")
_SEPARATOR_RE = re.compile(_SEPARATOR)
# A number in e-notation: a mantissa, e or E, a signed exponent, nothing word-like on either side
# (``x2e3`` and ``2e3x`` stay products with Euler's number).
_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
# A number times a power of ten: ``2\times 10^{-5}``, ``3 \cdot 10^8``, ``1.5 × 10^{3}``.
_TIMES_POWER_OF_TEN = re.compile(
    r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)\s*(?:\\times|\\cdot|×|\*)\s*10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))(?![\d.^!])"
)
# A mantissa right after these is an operand of something tighter than the product: 1/2\times 10^3
# is 500, x^2\times 10^3 is 1000x^2; rewriting the product alone would change the value.
_BINDS_TIGHTER = ("/", "\\div", "^", "_", "^{", "_{")
# Past this exponent a plain decimal would be longer than any answer the grader parses.
_MAX_PLAIN_EXPONENT = 100
# A trailing percent: \%, %, \text{\%}, \text{ percent}, \mbox{\%}, optionally after (thin) spaces.
_PERCENT = re.compile(
    r"(?:\s|\\,|\\!|\\;|\\ |~)*(?:\\%|%|\\(?:text|textrm|mbox|mathrm)\{\s*(?:\\%|%|percent)\s*\})\s*$"
)
_TRAILING_PERIOD = re.compile(r"(?<![.\\])\.\s*$")
# Number literals whose value the percent rule reads: an integer or decimal, a/b, \frac{a}{b}, \frac12.
_DECIMAL_LITERAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SLASH_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\s*\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")


def join_thousands(text: str) -> str:
    """``2\\,500`` / ``1{,}000`` / ``1\\,000\\,000`` → ``2500`` / ``1000`` / ``1000000``; other text unchanged."""
    return _GROUPED_NUMBER.sub(lambda match: _SEPARATOR_RE.sub("", match.group(1)), text)


def _scientific_value(mantissa: str, exponent: int) -> str:
    if abs(exponent) > _MAX_PLAIN_EXPONENT:
        return f"({mantissa}\\times 10^{{{exponent}}})"
    return plain_decimal(Decimal(f"{mantissa}e{exponent}"))


def _times_power_of_ten(match: re.Match) -> str:
    if match.string[:match.start()].rstrip().endswith(_BINDS_TIGHTER):
        return match.group(0)
    return _scientific_value(match.group(1), int(match.group(2) or match.group(3)))


def expand_scientific(text: str) -> str:
    """Scientific notation as the plain decimal it denotes: ``2e-05`` → ``0.00002``, ``1.5E+3`` →
    ``1500``, ``2\\times 10^{-5}`` → ``0.00002``; a huge exponent becomes ``(a\\times 10^{b})``.

    Only a number touching its ``e`` is e-notation: ``2e - 5``, ``2e^{3}`` and ``x2e3`` are
    unchanged. A product is rewritten only where it is a whole operand (not in ``1/2\\times 10^3``).
    Exact decimals on both sides keep large values exact: ``6.02\\times 10^{23}`` as a float
    is not 602000000000000000000000.
    """
    text = _TIMES_POWER_OF_TEN.sub(_times_power_of_ten, text)
    return _E_NOTATION.sub(lambda m: _scientific_value(m.group(1), int(m.group(2))), text)


def plain_decimal(value: Decimal) -> str:
    """A finite Decimal as a plain decimal without exponent or trailing zeros: ``2E-5`` → ``0.00002``,
    ``27.0`` → ``27``, ``1E+3`` → ``1000``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def split_percent(text: str) -> tuple[str, bool]:
    """``(text without a trailing percent sign, whether it had one)``."""
    stripped = _PERCENT.sub("", text)
    return (stripped.strip(), True) if stripped != text else (text, False)


def strip_trailing_period(text: str) -> str:
    """``5.`` → ``5``; ``\\ldots`` / ``...`` and ``5.0`` are unchanged."""
    return _TRAILING_PERIOD.sub("", text).rstrip()


def literal_value(text: str) -> Optional[Fraction]:
    """The exact value of a number literal (``-3``, ``0.25``, ``1/4``, ``\\frac{1}{4}``, ``\\dfrac14``),
    or None for anything else (an expression, a symbol, a mixed number)."""
    text = text.strip()
    if _DECIMAL_LITERAL.fullmatch(text):
        return Fraction(Decimal(text))
    for pattern in (_SLASH_FRACTION, _LATEX_FRACTION):
        match = pattern.fullmatch(text)
        if match is None:
            continue
        if pattern is _SLASH_FRACTION:
            numerator, denominator = int(match.group(1)), int(match.group(2))
        else:
            numerator = int(match.group(2) or match.group(3)) * (-1 if match.group(1) == "-" else 1)
            denominator = int(match.group(4) or match.group(5))
        return Fraction(numerator, denominator) if denominator else None
    return None


def is_ratio(text: str) -> bool:
    """Is the ground truth a number literal strictly between -1 and 1, other than 0 (``0.25``, ``\\frac{1}{4}``)?"""
    value = literal_value(text)
    return value is not None and 0 < abs(value) < 1


def normalize(text: str) -> tuple[str, bool]:
    """``(normalized text, had a trailing percent)`` for either side of a comparison."""
    text = strip_trailing_period(join_thousands(text.strip()))
    text, percent = split_percent(text)
    return expand_scientific(strip_trailing_period(text)), percent


def comparison_pair(answer: str, ground_truth: str) -> Optional[tuple[str, str]]:
    """The one ``(answer, ground truth)`` pair to hand to math-verify, or None when a side is empty.

    An answer ``x\\%`` against a ratio ground truth becomes ``\\frac{x}{100}``; against any other
    ground truth it stays ``x`` (see the percent rule in the module docstring).
    """
    answer_text, answer_percent = normalize(answer)
    gold_text, gold_percent = normalize(ground_truth)
    if not answer_text or not gold_text:
        return None
    if answer_percent and not gold_percent and is_ratio(gold_text):
        return f"\\frac{{{answer_text}}}{{100}}", gold_text
    return answer_text, gold_text
