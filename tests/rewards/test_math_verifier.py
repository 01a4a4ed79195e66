"""The math outcome reward on real-looking reasoning-model outputs, hostile inputs and its config."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.rewards import (
    MathRewardConfig,
    MathVerifier,
    RewardConfigError,
    grade_answer_region,
    last_boxed_answer,
    split_at_think_end,
)

THINKING = (
    "<think>\nOkay, so I need to find the probability of heads. A fair coin has two faces.\n\n"
    "Wait, let me double-check: one favourable outcome out of two.\n</think>\n\n"
)


@pytest.fixture(scope="module")
def verifier():
    with_strip = MathVerifier(MathRewardConfig(timeout_s=5.0), strip_texts=("<|im_end|>", "<|endoftext|>", "</think>"))
    with_strip.start()
    yield with_strip
    with_strip.close()


# (response, ground truth, expected acc, expected answer_found, expected has_think_end)
CASES = {
    "fraction_vs_decimal": (THINKING + "The probability is $\\boxed{\\frac{1}{2}}$.", "0.5", 1, 1, 1),
    "dfrac_vs_frac": (THINKING + "So the answer is $\\boxed{\\dfrac{1}{2}}$.<|im_end|>", "\\frac12", 1, 1, 1),
    "decimal_vs_fraction_gt": (THINKING + "Final answer: \\boxed{0.5}", "\\frac{1}{2}", 1, 1, 1),
    "units": (THINKING + "The side is $\\boxed{5\\text{ cm}}$.", "5", 1, 1, 1),
    "degrees": (THINKING + "The angle is $\\boxed{30^\\circ}$.", "30", 1, 1, 1),
    "algebraic_form": (THINKING + "$\\boxed{(x+1)^2}$", "x^2+2x+1", 1, 1, 1),
    "set_order": (THINKING + "$\\boxed{\\{3, 1, 2\\}}$", "\\{1,2,3\\}", 1, 1, 1),
    "matrix": (THINKING + "$\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}$", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1, 1, 1),
    "thousands_separator": (THINKING + "\\boxed{1,000}", "1000", 1, 1, 1),
    "gt_already_boxed": (THINKING + "\\boxed{204}", "\\boxed{204}", 1, 1, 1),
    "wrong_answer": (THINKING + "The probability is $\\boxed{\\frac{1}{3}}$.", "0.5", 0, 1, 1),
    "wrong_integer": (THINKING + "\\boxed{71}", "70", 0, 1, 1),
    "missing_boxed": (THINKING + "The probability is 1/2.", "0.5", 0, 0, 1),
    "answer_only_in_thinking": ("<think>\nIt is \\boxed{\\frac12}.\n</think>\n\nI am not sure.", "0.5", 0, 0, 1),
    "last_boxed_wins": (THINKING + "First \\boxed{3}, but correcting: \\boxed{\\frac{1}{2}}", "0.5", 1, 1, 1),
    "earlier_boxed_ignored": (THINKING + "First \\boxed{\\frac{1}{2}}, but correcting: \\boxed{3}", "0.5", 0, 1, 1),
    "second_think_end_is_text": (THINKING + "\\boxed{7}</think>\\boxed{\\frac12}", "0.5", 1, 1, 1),
    "unbalanced_box": (THINKING + "\\boxed{\\frac{1}{2}", "0.5", 0, 0, 1),
    "empty_ground_truth": (THINKING + "\\boxed{5}", "", 0, 1, 1),
    "fbox": (THINKING + "\\fbox{42}", "42", 1, 1, 1),
    "float_gt_in_e_notation": (THINKING + "\\boxed{0.00002}", 2e-05, 1, 1, 1),
    "euler_reading_of_float_gt": (THINKING + "\\boxed{0.436564}", 2e-05, 0, 1, 1),
    "false_equation": (THINKING + "So \\boxed{5 = 6}.", "6", 0, 1, 1),
    "tiny_decimal": (THINKING + "\\boxed{0.0000004}", "0.0000001", 0, 1, 1),
    "no_think_end_truncated": ("<think>\nLet me compute... \\boxed{\\frac12} and then", "0.5", 0, 0, 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_looking_outputs(verifier, name):
    response, ground_truth, acc, answer_found, has_think_end = CASES[name]
    result = verifier.score(response, ground_truth)
    assert (result.acc, result.answer_found, result.has_think_end, result.timed_out) == (acc, answer_found, has_think_end, 0)
    assert result.score == float(acc)
    assert result.extra_info() == {"acc": acc, "has_think_end": has_think_end, "answer_found": answer_found, "timed_out": 0.0,
                                   "no_ground_truth": 0.0 if ground_truth != "" else 1.0}


def test_truncated_response_scores_as_configured():
    truncated = "<think>\nThe answer is \\boxed{4}"
    penalized = MathVerifier(MathRewardConfig(no_think_end_reward=-1.0, num_processes=1))
    whole = MathVerifier(MathRewardConfig(require_think_end=False, num_processes=1))
    try:
        assert penalized.score(truncated, "4").score == -1.0
        graded = whole.score(truncated, "4")
        assert (graded.score, graded.acc, graded.has_think_end) == (1.0, 1.0, 0.0)
        custom = MathVerifier(MathRewardConfig(correct_reward=2.0, incorrect_reward=-0.5, num_processes=1))
        assert custom.score(THINKING + "\\boxed{4}", "4").score == 2.0
        assert custom.score(THINKING + "\\boxed{5}", "4").score == -0.5
        custom.close()
    finally:
        penalized.close()
        whole.close()


def test_last_boxed_answer_extraction():
    assert last_boxed_answer("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed_answer("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces do not nest
    assert last_boxed_answer("\\boxed{ {a}{b} }") == "{a}{b}"
    assert last_boxed_answer("\\boxed 5 apples") == "5"
    assert last_boxed_answer("\\boxed 5.") == "5"
    assert last_boxed_answer("\\boxed{1} then \\fbox{2}") == "2"
    assert last_boxed_answer("\\boxed{12") is None
    assert last_boxed_answer("no answer here") is None
    assert last_boxed_answer("\\boxed{" + "1" * 50 + "}", max_chars=10) is None
    assert last_boxed_answer("\\boxed{" + "1" * 10 + "}", max_chars=10) == "1" * 10
    assert split_at_think_end("a</think>b</think>c") == (True, "b</think>c")
    assert split_at_think_end("no end") == (False, "no end")


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.text(alphabet=st.characters(blacklist_characters="\\{}"), max_size=40),
    content=st.recursive(
        st.text(alphabet="abc123+-=^_ ", max_size=6),
        lambda inner: st.builds(lambda a, b: a + "{" + b + "}", inner, inner),
        max_leaves=6,
    ),
    suffix=st.text(alphabet=st.characters(blacklist_characters="\\"), max_size=40),
)
def test_last_boxed_answer_returns_the_balanced_content(prefix, content, suffix):
    assert last_boxed_answer(prefix + "\\boxed{" + content + "}" + suffix, max_chars=10_000) == content.strip()


@settings(max_examples=25, deadline=None)
@given(numerator=st.integers(-999, 999), denominator=st.integers(1, 999), other=st.integers(1, 10**6))
def test_rational_answers_in_any_form(verifier, numerator, denominator, other):
    gt = f"\\frac{{{numerator}}}{{{denominator}}}"
    value = numerator / denominator
    assert verifier.score(THINKING + f"\\boxed{{\\dfrac{{{numerator}}}{{{denominator}}}}}", gt).acc == 1.0
    if value == round(value, 6):  # an exactly representable decimal
        assert verifier.score(THINKING + f"\\boxed{{{value:.6f}}}", gt).acc == 1.0
    wrong = f"\\frac{{{numerator * other + 1}}}{{{denominator * other}}}"  # differs by 1/(d·other)
    assert verifier.score(THINKING + f"\\boxed{{{wrong}}}", gt).acc == 0.0
    # the pure grader is the oracle of the guarded path
    assert grade_answer_region(f"\\boxed{{{wrong}}}", gt) == (True, False)


def _far_above(deadline_s: float) -> float:
    """A bound that only a hang exceeds: ten deadlines plus a process start on a loaded machine.
    What a deadline test checks is that the deadline fired (``timed_out``, the pool's counters)."""
    return 10 * deadline_s + 30


def test_hostile_outputs_are_bounded():
    config = MathRewardConfig(timeout_s=1.0, num_processes=1, max_answer_chars=2_000_000)
    verifier = MathVerifier(config).start()
    try:
        # SymPy tries to evaluate a power tower with ~10^8 digits: only the deadline stops it.
        started = time.monotonic()
        tower = verifier.score(THINKING + "\\boxed{9^{9^{9^{9^{9}}}}}", "5")
        assert (tower.timed_out, tower.acc, tower.score) == (1.0, 0.0, 0.0)
        assert verifier.pool.num_timeouts == 1 and verifier.pool.num_restarts == 1
        assert time.monotonic() - started < _far_above(config.timeout_s)

        one_megabyte = "\\frac{" * 105_000 + "1" + "}{2}" * 105_000
        assert len(one_megabyte) > 1_000_000
        for response in (
            THINKING + "\\boxed{" + one_megabyte + "}",  # 1 MB of nested LaTeX inside the answer
            THINKING + one_megabyte,  # 1 MB of LaTeX with no boxed answer
            "<think>" + one_megabyte,  # 1 MB, truncated thinking
            THINKING + "\\boxed{" * 150_000,  # 1 MB of unclosed boxes
        ):
            started = time.monotonic()
            result = verifier.score(response, "5")
            assert time.monotonic() - started < _far_above(config.timeout_s)
            assert result.acc == 0.0

        assert verifier.score(THINKING + "\\boxed{5}", "5").acc == 1.0  # the pool recovered
    finally:
        verifier.close()

    # With the default length guard a megabyte answer never reaches the parser: the verifier is
    # not even started, and the answer counts as not found.
    guarded = MathVerifier(MathRewardConfig(num_processes=1))
    try:
        result = guarded.score(THINKING + "\\boxed{" + "1+" * 500_000 + "1}", "5")
        assert (result.answer_found, result.timed_out, result.acc) == (0.0, 0.0, 0.0)
    finally:
        guarded.close()


def test_event_loop_grading_is_not_stalled_by_a_hostile_sample():
    verifier = MathVerifier(MathRewardConfig(timeout_s=1.5, num_processes=2)).start()
    finished: list[str] = []

    async def graded(name: str, response: str, gt: str):
        result = await verifier.ascore(response, gt)
        finished.append(name)
        return result

    async def run():
        hostile = graded("hostile", THINKING + "\\boxed{9^{9^{9^{9^{9}}}}}", "1")
        normal = [graded(f"normal {v}", THINKING + f"\\boxed{{{v}}}", str(v)) for v in range(12)]
        return await asyncio.gather(hostile, *normal)

    try:
        hostile, *normal = asyncio.run(run())
        assert hostile.timed_out == 1.0 and verifier.pool.num_timeouts == 1
        assert all(result.acc == 1.0 and result.timed_out == 0.0 for result in normal)
        # the other process went on grading while the hostile sample held the first one (a blocked
        # event loop would finish the hostile sample first)
        assert finished[0] != "hostile", finished
    finally:
        verifier.close()


def test_config_errors_name_the_key():
    with pytest.raises(RewardConfigError, match=r"reward\.reward_kwargs\.timeout_s"):
        MathRewardConfig.from_mapping({"timeout_s": 0})
    with pytest.raises(RewardConfigError, match=r"reward\.reward_kwargs\.timeout is not a known key"):
        MathRewardConfig.from_mapping({"timeout": 3})
    with pytest.raises(RewardConfigError, match=r"reward\.reward_kwargs\.num_processes"):
        MathRewardConfig.from_mapping({"num_processes": 0})
    with pytest.raises(RewardConfigError, match=r"reward\.reward_kwargs\.require_think_end"):
        MathRewardConfig.from_mapping({"require_think_end": "yes"})
    assert MathRewardConfig.from_mapping({"timeout_s": 10, "correct_reward": 1}).timeout_s == 10


def test_readme_options_table_matches_the_dataclass():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    _check_options_table((root / "docs" / "reward.md").read_text())


def _check_options_table(doc: str) -> None:
    import dataclasses
    import re

    section = doc
    documented: dict[str, str] = {}
    for keys, defaults in re.findall(r"^\| `([^|]+?)` \| ([^|]+?) \|", section, flags=re.M):
        for key, default in zip(keys.split("` / `"), defaults.split(" / ")):
            documented[key] = default.strip().strip("`")
    actual = {f.name: getattr(MathRewardConfig(), f.name) for f in dataclasses.fields(MathRewardConfig)}
    assert set(documented) == set(actual)
    for key, value in actual.items():
        assert documented[key] == (str(value).lower() if isinstance(value, bool) else str(value)), key
