"""The grader's rules, written out as labelled cases: what must be accepted and, beside it, what must not.

Forms math-verify misreads are rewritten first (thousands separators, e-notation, percent, trailing
period); two rules of the package's own sit on top of math-verify (numbers agree to 6 significant
digits; an equation answer must be a true statement). ``grade_boxed_answer`` is the pure grading
function the grading processes run. Every ``REJECTED`` case is a false positive of some earlier
grader; the grader accepts none of them.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.rewards import grade_boxed_answer, ground_truth_text
from verl_repro.rewards.normalization import (
    comparison_pair,
    expand_scientific,
    is_ratio,
    join_thousands,
    literal_value,
    split_percent,
    strip_trailing_period,
)

# (boxed answer, ground truth as the data set stores it)
ACCEPTED = {
    "thin space thousands": [("2500", "2\\,500"), ("2\\,500", "2500"), ("1000", "1\\,000"), ("1000000", "1\\,000\\,000"),
                             ("-2500", "-2\\,500"), ("12345.5", "12\\,345.5"), ("2\\,500", "2{,}500")],
    "{,} thousands": [("1000", "1{,}000"), ("1{,}000", "1000"), ("1234567", "1{,}234{,}567")],
    "percent, gold with %": [("25", "25\\%"), ("25 \\%", "25\\%"), ("25\\%", "25 \\%"), ("0.5", "0.5\\%"),
                             ("0.5\\%", "0.5\\%")],
    "percent, number gold": [("25\\%", "25"), ("25%", "25"), ("50\\,\\%", "50"), ("25\\text{\\%}", "25"),
                             ("12.5\\%", "12.5"), ("150\\%", "150"), ("\\frac{100}{3}\\%", "\\frac{100}{3}")],
    "percent, ratio gold": [("25\\%", "0.25"), ("25\\%", "\\frac{1}{4}"), ("25\\%", "1/4"), ("12.5\\%", "0.125"),
                            ("50\\%", "\\dfrac12"), ("-25\\%", "-0.25")],
    "trailing period": [("5", "5."), ("5.", "5"), ("3.5", "3.5."), ("\\frac{1}{2}", "\\frac{1}{2}."), ("5", "5. ")],
    "e-notation": [("0.00002", 2e-05), ("2e-5", "0.00002"), ("2e-05", "0.00002"), ("2\\times 10^{-5}", 2e-05),
                   ("2 \\cdot 10^{-5}", "0.00002"), ("1.5e3", "1500"), ("1.5E+3", "1500"), ("3\\times10^{8}", "3e8"),
                   ("6.02\\times 10^{23}", "6.02e23"), ("1e200", "10^{200}"), ("0.0000012", 1.2e-06),
                   ("2e - 5", "2e - 5"), ("0.436564", "2e - 5")],  # with spaces, e is Euler's number
    "equation answer": [("x = 5", "5"), ("x=2+3=5", "5"), ("a = b = 5", "5"), ("5 = 5", "5"), ("y = 2x + 1", "2x+1"),
                        ("x = 5", "x = 5"), ("5", "x=5"), ("x = \\frac{1}{2}", "0.5"), ("f(x) = 3", "3")],
    "small numbers": [("0.0000001", "0.0000001"), ("1\\times 10^{-7}", "0.0000001"), ("0.333333", "\\frac13"),
                      ("0.0333333", "\\frac{1}{30}"), ("0.000000333333", "\\frac{1}{3000000}"), ("0", "0.0"),
                      ("0.000000100000001", "0.0000001"), ("(0.0000001, 1)", "(10^{-7}, 1)")],
}
REJECTED = {
    # math-verify alone accepts the first two (2\,500 read as 502, 1\,000 as 0)
    "thin space thousands": [("502", "2\\,500"), ("0", "1\\,000"), ("2\\,500", "502"), ("1\\,000", "0"), ("2.5", "2\\,500"),
                             ("500", "2\\,500"), ("25", "2\\,500"), ("2501", "2\\,500"), ("1000", "1\\,000\\,000")],
    "{,} thousands": [("1001", "1{,}000"), ("1", "1{,}000"), ("12", "1{,}2{,}3")],
    "percent, gold with %": [("0.25", "25\\%"), ("\\frac{1}{4}", "25\\%"), ("26", "25\\%"), ("50", "0.5\\%")],
    "percent, number gold": [("2500\\%", "25"), ("30\\%", "25"), ("0.25", "25"), ("0.125\\%", "12.5")],
    # the x reading of x% against a ratio was accepted before: 0.5% is not one half
    "percent, ratio gold": [("0.5\\%", "\\frac{1}{2}"), ("0.25\\%", "\\frac{1}{4}"), ("0.25\\%", "0.25"),
                            ("0.125\\%", "0.125"), ("25\\%", "0.5"), ("25\\%", "\\frac{1}{3}"), ("25\\%", "0.025"),
                            ("25", "0.25"), ("\\frac{1}{4}", "0.025")],
    "trailing period": [("6", "5."), ("50", "5."), ("5.5", "5."), ("5", "5.5"), ("35", "3.5.")],
    # a float ground truth 2e-05 was rendered "2e-05" and read as 2e - 5 = 0.436564
    "e-notation": [("0.436564", 2e-05), ("2e-5", "0.0002"), ("0.436564", "2e-05"), ("2e - 5", "0.00002"),
                   ("2e-5", "2e - 5"), ("1.5e3", "150"), ("3\\times10^{7}", "3e8"), ("1e201", "10^{200}")],
    # the right-hand side of a false or unrelated equation was graded alone
    "equation answer": [("5 = 6", "6"), ("6 = 5", "5"), ("x = 2 + 3 = 6", "6"), ("2x = 10", "10"), ("x^2 = 4", "4"),
                        ("x = 6 = 5", "x = 5"), ("1 = 2 = 2", "2"), ("x = 5", "6"), ("x + 1 = 6", "6"),
                        ("\\frac{1}{3} = 0.3 = 0.3", "0.3")],
    # both sides round to 0 at 6 decimal places: an absolute tolerance
    "small numbers": [("0.0000004", "0.0000001"), ("0", "0.0000001"), ("0.0000001", "0"), ("0.0000002", "\\frac{1}{10^{7}}"),
                      ("0.00000033", "\\frac{1}{3000000}"), ("(0.0000004, 1)", "(0.0000001, 1)"), ("123456.7", "123457"),
                      ("0.0000012346", "0.0000012345"), ("1e-12", "0"), ("0.333", "\\frac13")],
}


def _cases(table):
    return [pytest.param(answer, gold, id=f"{form}: {answer} vs {gold}") for form, pairs in table.items() for answer, gold in pairs]


@pytest.mark.parametrize("answer, ground_truth", _cases(ACCEPTED))
def test_accepted(answer, ground_truth):
    assert grade_boxed_answer(answer, ground_truth)


@pytest.mark.parametrize("answer, ground_truth", _cases(REJECTED))
def test_no_false_positive(answer, ground_truth):
    assert not grade_boxed_answer(answer, ground_truth)


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
    assert expand_scientific("2e-05") == "0.00002" and expand_scientific("1.5E+3") == "1500"
    assert expand_scientific("\\frac{2e-5}{3}") == "\\frac{0.00002}{3}" and expand_scientific(".5e1") == "5"
    assert expand_scientific("1e999") == "(1\\times 10^{999})"  # no thousand-digit literal
    for unchanged in ("2e - 5", "2e^{3}", "x2e3", "2e3x", "e-5", "2e", "\\pi e-5", "1.2.3e4"):
        assert expand_scientific(unchanged) == unchanged
    assert expand_scientific("6.02\\times 10^{23}") == "602000000000000000000000"
    assert expand_scientific("3 \\cdot 10^8") == "300000000" and expand_scientific("-2\\times10^{-3}") == "-0.002"
    # only a whole operand: 1/2 times 1000 is 500, x^2 times 1000 is 1000x^2, 10^23 is 10^2 times 3
    for unchanged in ("1/2\\times 10^3", "3 \\div 2\\times 10^{3}", "x^2\\times 10^3", "x^{2}\\times 10^3",
                      "2\\times 10^23", "a2\\times 10^3"):
        assert expand_scientific(unchanged) == unchanged


def test_percent_reading_follows_the_ground_truth():
    assert [literal_value(t) for t in ("-3", "0.25", ".5", "1/4", "\\frac{1}{4}", "\\dfrac14", "-\\frac{3}{2}", "x", "1/0")] == [
        -3, Fraction(1, 4), Fraction(1, 2), Fraction(1, 4), Fraction(1, 4), Fraction(1, 4), Fraction(-3, 2), None, None]
    assert [is_ratio(t) for t in ("0.25", "\\frac{1}{4}", "-0.5", "0", "1", "12.5", "\\frac{3}{2}", "\\frac{\\sqrt2}{2}")] == [
        True, True, True, False, False, False, False, False]
    assert comparison_pair("25\\%", "0.25") == ("\\frac{25}{100}", "0.25")
    assert comparison_pair("25\\%", "25") == ("25", "25")
    assert comparison_pair("25\\%", "25\\%") == ("25", "25")
    assert comparison_pair("0.25", "25\\%") == ("0.25", "25")
    assert comparison_pair("\\%", "5") is None


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


# 4 significant digits, any scale from 1e-30 to 1e6
significands = st.integers(1000, 9999)
exponents = st.integers(-33, 3)


@settings(max_examples=40, deadline=None)
@given(significands, exponents, st.integers(1, 50))
def test_numbers_compare_by_significant_digits_at_every_scale(significand, exponent, bump):
    """A number equals itself in every notation and differs from one 1e-4 relatively away, at any scale."""
    value = Decimal(significand).scaleb(exponent)
    plain = format(value, "f")
    scientific = f"{significand / 1000}e{exponent + 3}"
    assert grade_boxed_answer(plain, float(value)) and grade_boxed_answer(scientific, plain)
    assert grade_boxed_answer(f"{significand}\\times 10^{{{exponent}}}", plain)
    other = format(Decimal(significand + bump).scaleb(exponent), "f")  # relative distance >= 1e-4
    assert not grade_boxed_answer(other, plain) and not grade_boxed_answer(plain, other)
    assert not grade_boxed_answer("0", plain) and not grade_boxed_answer(plain, "0")


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e12, allow_subnormal=False), st.booleans())
def test_a_float_ground_truth_keeps_its_value(number, negative):
    """The rendered text reads back as the same float, and the grader accepts the float's own repr."""
    number = -number if negative else number
    text = ground_truth_text(number)
    assert "e" not in text.lower() and float(text) == number
    assert grade_boxed_answer(repr(number), number)


@settings(max_examples=30, deadline=None)
@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(-50, 50))
def test_an_equation_answer_is_right_only_when_it_is_a_true_statement(left, addend, gold):
    total = left + addend
    assert grade_boxed_answer(f"x = {total}", gold) == (total == gold)
    assert grade_boxed_answer(f"x = {left} + {addend} = {total}", gold) == (total == gold)
    assert grade_boxed_answer(f"{left} = {gold}", gold) == (left == gold)  # "5 = 6" is false
    assert grade_boxed_answer(f"x = {left} + {addend} = {gold}", gold) == (total == gold)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 99), st.integers(1, 9))
def test_a_percent_means_one_thing_per_ground_truth(percent, scale):
    ratio = Fraction(percent, 100)
    fraction_gold = f"\\frac{{{ratio.numerator}}}{{{ratio.denominator}}}"
    assert grade_boxed_answer(f"{percent}\\%", fraction_gold) and grade_boxed_answer(f"{percent}\\%", str(percent))
    # the same digits as a percent of the ratio are not the ratio
    assert not grade_boxed_answer(f"{float(ratio)}\\%", fraction_gold) and not grade_boxed_answer(f"{float(ratio)}\\%", str(float(ratio)))
    assert not grade_boxed_answer(f"{percent * scale * 10}\\%", str(percent))


def test_what_the_percent_rule_gives_up():
    """Two forms a data set could mean otherwise, graded by the rule as written in docs/reward.md:
    a percent below 1 stored without its sign reads as a ratio, a ratio above 1 as a percent number."""
    assert not grade_boxed_answer("0.5\\%", "0.5") and grade_boxed_answer("0.5\\%", "0.5\\%")
    assert not grade_boxed_answer("150\\%", "\\frac{3}{2}") and grade_boxed_answer("150\\%", "150")


def test_decimal_places_keep_six_significant_digits_below_one_and_what_a_float_carries_above():
    import sympy

    from verl_repro.rewards.math_verifier import decimal_places

    assert decimal_places(sympy.Float("0.5"), sympy.Rational(1, 2)) == 6  # math-verify's own 6 places
    assert decimal_places(sympy.Float("1e-7"), sympy.Integer(0)) == 12  # 1.00000e-7: 12 places
    assert decimal_places(sympy.Float("0.000123"), sympy.Float("0.5")) == 9  # the smallest number decides
    assert decimal_places(sympy.Float("6.02e23"), sympy.Integer(1)) == 15 - 2 - 23  # 14 digits of 6.02e23
    assert decimal_places(sympy.Rational(1, 10**7), sympy.Integer(0)) == 6  # exact: no float, compared exactly
    assert decimal_places(sympy.Tuple(sympy.Float("1e-7"), sympy.zoo), sympy.Integer(1)) == 12  # zoo has no size
