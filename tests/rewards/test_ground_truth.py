"""One ground-truth rule: hand cases for every shape a data set stores an answer in, then properties."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.rewards import ground_truth_answers, ground_truth_text


@pytest.mark.parametrize(
    "value, answers",
    [
        ("42", ("42",)),
        ("  \\frac{1}{2} ", ("\\frac{1}{2}",)),
        (["42", "43"], ("42", "43")),  # several accepted answers, in order
        (("42",), ("42",)),
        (b"42", ("42",)),
        (["1,000"], ("1,000",)),
        (np.array(["4", "5"], dtype=object), ("4", "5")),  # a list column read back from parquet
        (np.array([], dtype=object), ()),
        (42, ("42",)),
        (np.int64(7), ("7",)),
        (27.0, ("27",)),  # AMC answers come as floats
        (2.5, ("2.5",)),
        (np.float32(0.1), ("0.1",)),  # printed as numpy prints it, not 0.10000000149011612
        (Fraction(1, 2), ("1/2",)),
        (Fraction(10**30, 1), ("1" + "0" * 30,)),  # exact, not through a float
        # a number keeps its value as text: e-notation would read as 2·e − 5
        (2e-05, ("0.00002",)),
        (np.float32(1e-5), ("0.00001",)),
        (1e23, ("1" + "0" * 23,)),  # the float's shortest decimal, not 99999999999999991611392
        (-0.0, ("0",)),
        (Decimal("2E-7"), ("0.0000002",)),  # a decimal128 column reads back as Decimal
        (Decimal("1.50"), ("1.5",)),
        (Decimal("NaN"), ()),
        ("\\boxed{42}", ("42",)),  # unwrapped once ...
        ("\\boxed{\\boxed{42}}", ("\\boxed{42}",)),  # ... and only once
        ("\\fbox{ x+1 }", ("x+1",)),
        ("\\boxed{\\{1,2\\}}", ("\\{1,2\\}",)),  # escaped braces do not close the box
        ("\\boxed{1}+\\boxed{2}", ("\\boxed{1}+\\boxed{2}",)),  # not one enclosing box: kept
        ([None, "7", "7", float("nan")], ("7",)),  # unusable entries dropped, duplicates once
        ([["1", "2"], "3"], ("1", "2", "3")),
        # unusable: scores incorrect_reward, no process reward, counted
        (None, ()),
        (float("nan"), ()),
        (float("inf"), ()),
        (np.float64("nan"), ()),
        (True, ()),
        (np.bool_(False), ()),
        ({"ground_truth": "4"}, ()),
        ("", ()),
        ("   ", ()),
        ("\\boxed{}", ()),
        ([], ()),
        (b"\xff\xfe", ()),  # not UTF-8
        (complex(1, 2), ()),
        (object(), ()),
    ],
)
def test_hand_cases(value, answers):
    assert ground_truth_answers(value) == answers
    assert ground_truth_text(value) == (answers[0] if answers else None)


answer_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda t: t.strip() and not t.strip().startswith(("\\boxed", "\\fbox"))
)


@settings(max_examples=100, deadline=None)
@given(answer_texts, st.lists(answer_texts, max_size=3))
def test_every_container_of_an_answer_reads_as_the_same_text(answer, others):
    expected = answer.strip()
    for variant in (answer, [answer], (answer,), answer.encode("utf-8"), np.array([answer], dtype=object),
                    "\\boxed{" + answer + "}" if "}" not in answer and "{" not in answer and "\\" not in answer else answer,
                    [answer, *others], [None, answer]):
        assert ground_truth_text(variant) == expected, variant
    assert ground_truth_answers([answer, *others])[0] == expected


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 st.decimals(allow_nan=True, allow_infinity=True, places=12)))
def test_numbers_print_as_their_value_and_non_finite_ones_are_unusable(number):
    text = ground_truth_text(number)
    if not (number.is_finite() if isinstance(number, Decimal) else math.isfinite(number)):  # sNaN too
        assert text is None
    else:
        # the exact value for Decimal and int, the same float for a float (its shortest decimal)
        assert (float(text) == number) if isinstance(number, float) else (Decimal(text) == number)
        assert not text.endswith(".0") and "e" not in text.lower()
