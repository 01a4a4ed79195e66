"""One rule for reading a ground truth, shared by grading, RePro scoring, CorR-PO, evaluation,
data preparation and the analysis tools (``docs/reward.md``, "Ground truth").

Data sets store the answer in many shapes: a string, a number (AMC answers come as floats), a
list of accepted answers (a numpy array once read back from parquet), bytes, ``None`` / NaN for
a missing value, or an answer already wrapped in ``\\boxed{}``. The rule:

* a string is stripped; one enclosing ``\\boxed{...}`` / ``\\fbox{...}`` is unwrapped;
* bytes are decoded as UTF-8 (undecodable bytes are unusable);
* a finite number is printed as a plain decimal that reads back as the same value: an integral
  float without ``.0`` (``27.0`` → ``27``), no exponent (``2e-05`` → ``0.00002``; math notation reads
  ``2e-05`` as ``2·e − 5``), a ``Decimal`` by its digits (``1.50`` → ``1.5``), a ``Fraction`` as ``a/b``;
* a list, tuple or array holds several accepted answers: each entry is read by this rule and the
  unusable ones are dropped; grading accepts a match with **any** of them, RePro scores the first;
* everything else — ``None``, NaN / inf, bools, dicts, empty strings and lists — is unusable:
  such a sample scores ``incorrect_reward``, gets no process reward, and is counted.
"""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from typing import Any, Optional

from .normalization import plain_decimal

BOXED_COMMANDS = ("\\boxed", "\\fbox")


def closing_brace(text: str, opening: int, limit: Optional[int] = None) -> Optional[int]:
    """Index of the ``}`` that closes the ``{`` at ``text[opening]``, scanning no further than
    ``limit``; None when it is not closed there. ``\\{`` and ``\\}`` are literal braces and do not nest."""
    depth = 0
    index = opening
    stop = len(text) if limit is None else min(len(text), limit)
    while index < stop:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _unwrap_boxed(text: str) -> str:
    """``\\boxed{X}`` → ``X`` when the whole text is one boxed command; otherwise unchanged."""
    for command in BOXED_COMMANDS:
        if not text.startswith(command + "{") or not text.endswith("}"):
            continue
        # The closing brace of the command must be the last character: "\boxed{1}+\boxed{2}" stays.
        if closing_brace(text, len(command)) == len(text) - 1:
            return text[len(command) + 1:-1].strip()
    return text


def _scalar_text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        text = _unwrap_boxed(value.strip())
        return text or None
    # bool is a Number (and numpy's bool_ is not): both are excluded, neither is an answer.
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, numbers.Rational):  # int, numpy ints, Fraction: exact
        if value.denominator == 1:
            return str(int(value.numerator))
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, Decimal):  # a decimal column (pyarrow decimal128 reads back as Decimal)
        return plain_decimal(value) if value.is_finite() else None
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            return None
        # The shortest text that reads back as the same float (numpy prints float32 0.1 as "0.1"),
        # then written without exponent: "2e-05" would be read as 2·e − 5.
        return plain_decimal(Decimal(str(value) if type(value).__module__ == "numpy" else repr(float(value))))
    return None


def ground_truth_answers(value: Any) -> tuple[str, ...]:
    """Every accepted answer of a raw ground truth as text, in order, without duplicates; ``()``
    when the value is unusable (see the module docstring)."""
    if type(value).__name__ == "ndarray":  # a list column read back from parquet; entries stay numpy scalars
        value = list(value) if value.ndim > 0 else [value[()]]
    entries = value if isinstance(value, (list, tuple)) else [value]
    answers: list[str] = []
    for entry in entries:
        for text in ground_truth_answers(entry) if isinstance(entry, (list, tuple)) else (_scalar_text(entry),):
            if text is not None and text not in answers:
                answers.append(text)
    return tuple(answers)


def ground_truth_text(value: Any) -> Optional[str]:
    """The ground truth as one text — the first accepted answer, which RePro scores — or None when
    it is unusable (None, NaN, bool, dict, empty; see the module docstring)."""
    answers = ground_truth_answers(value)
    return answers[0] if answers else None
