"""Grader normalization before math-verify: thousands separators, percent, trailing period.

Each form is written out with the answers that must be accepted and, beside them, the answers that
must not be: the false-positive rate on these forms is zero. ``grade_boxed_answer`` is the pure
grading function the grading processes run.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.rewards import grade_boxed_answer
from verl_repro.rewards.normalization import (
    comparison_pairs,
    is_fraction_or_decimal,
    join_thousands,
    split_percent,
    strip_trailing_period,
)

# (boxed answer, ground truth)
ACCEPTED = {
    "thin space thousands": [("2500", "2\\,500"), ("2\\,500", "2500"), ("1000", "1\\,000"), ("1000000", "1\\,000\\,000"),
                             ("-2500", "-2\\,500"), ("12345.5", "12\\,345.5"), ("2\\,500", "2{,}500")],
    "{,} thousands": [("1000", "1{,}000"), ("1{,}000", "1000"), ("1234567", "1{,}234{,}567")],
    "percent": [("25\\%", "25"), ("25", "25\\%"), ("25 \\%", "25\\%"), ("25\\%", "25 \\%"), ("25%", "25"),
                ("50\\,\\%", "50"), ("25\\text{\\%}", "25"), ("12.5\\%", "12.5"),
                # x% = x/100 only because the ground truth is written as a fraction or decimal
                ("25\\%", "0.25"), ("25\\%", "\\frac{1}{4}"), ("25\\%", "1/4"), ("12.5\\%", "0.125")],
    "trailing period": [("5", "5."), ("5.", "5"), ("3.5", "3.5."), ("\\frac{1}{2}", "\\frac{1}{2}."), ("5", "5. ")],
}
REJECTED = {
    # math-verify alone accepts the first two (2\,500 read as 502, 1\,000 as 0)
    "thin space thousands": [("502", "2\\,500"), ("0", "1\\,000"), ("2\\,500", "502"), ("1\\,000", "0"), ("2.5", "2\\,500"),
                             ("500", "2\\,500"), ("25", "2\\,500"), ("2501", "2\\,500"), ("1000", "1\\,000\\,000")],
    "{,} thousands": [("1001", "1{,}000"), ("1", "1{,}000"), ("12", "1{,}2{,}3")],
    "percent": [("0.25", "25\\%"), ("25", "0.25"), ("0.25", "25"), ("2500\\%", "25"), ("25\\%", "2500"), ("30\\%", "25"),
                ("25\\%", "0.5"), ("25\\%", "\\frac{1}{3}"), ("\\frac{1}{4}", "25\\%"), ("25\\%", "0.025"), ("26", "25\\%")],
    "trailing period": [("6", "5."), ("50", "5."), ("5.5", "5."), ("5", "5.5"), ("35", "3.5.")],
}


@pytest.mark.parametrize("form, answer, ground_truth", [(f, a, g) for f, pairs in ACCEPTED.items() for a, g in pairs])
def test_accepted(form, answer, ground_truth):
    assert grade_boxed_answer(answer, ground_truth), (form, answer, ground_truth)


@pytest.mark.parametrize("form, answer, ground_truth", [(f, a, g) for f, pairs in REJECTED.items() for a, g in pairs])
def test_no_false_positive(form, answer, ground_truth):
    assert not grade_boxed_answer(answer, ground_truth), (form, answer, ground_truth)


def test_rewrites_touch_only_their_form():
    assert join_thousands("2\\,500") == join_thousands("2{,}500") == "2500"
    assert join_thousands("1\\,000\\,000 and 3{,}000") == "1000000 and 3000"
    for unchanged in ("x\\,dx", "1\\,2", "1{,}2", "12\\,3456", "3.141\\,592", "(1, 000)", "\\{1{,}2\\}"):
        assert join_thousands(unchanged) == unchanged
    assert split_percent("25\\%") == split_percent("25 \\%") == split_percent("25%") == ("25", True)
    assert split_percent("25\\text{ percent}") == ("25", True)
    assert split_percent("\\%5") == ("\\%5", False) and split_percent("25") == ("25", False)
    assert strip_trailing_period("5.") == "5" and strip_trailing_period("5.0") == "5.0"
    for unchanged in ("1, 2, \\ldots", "1, 2, ...", "a\\."):
        assert strip_trailing_period(unchanged) == unchanged
    assert [is_fraction_or_decimal(t) for t in ("\\frac{1}{4}", "\\dfrac14", "1/4", "0.25", ".5", "25", "x^2")] == [
        True, True, True, True, True, False, False]
    # x% adds the x/100 reading only against a fraction / decimal ground truth
    assert comparison_pairs("25\\%", "0.25") == [("25", "0.25"), ("\\frac{25}{100}", "0.25")]
    assert comparison_pairs("25\\%", "25") == [("25", "25")]
    assert comparison_pairs("25\\%", "25\\%") == [("25", "25")]
    assert comparison_pairs("\\%", "5") == []


def test_any_entry_of_a_multi_answer_ground_truth_matches():
    assert grade_boxed_answer("43", ["42", "43"]) and grade_boxed_answer("42", ("42",))
    assert not grade_boxed_answer("44", ["42", "43"])
    assert grade_boxed_answer("1000", ["1,000"]) and grade_boxed_answer("42", b"42")
    assert not grade_boxed_answer("nan", float("nan")) and not grade_boxed_answer("None", None)


@settings(max_examples=30, deadline=None)
@given(st.integers(1000, 10**9))
def test_thin_space_and_brace_comma_thousands_equal_the_number_and_nothing_near(number):
    digits = f"{number:,}"
    for form in (digits.replace(",", "\\,"), digits.replace(",", "{,}")):
        assert grade_boxed_answer(str(number), form)
        assert grade_boxed_answer(form, str(number))
        for wrong in (number + 1, number // 1000, number % 1000, int(digits.replace(",", "")[::-1])):
            if wrong != number:
                assert not grade_boxed_answer(str(wrong), form)
