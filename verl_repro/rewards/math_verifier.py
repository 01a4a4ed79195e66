"""Outcome reward for reasoning models on math: is the final ``\\boxed{}`` answer equal to the ground truth?

A reasoning model writes its chain of thought, closes it with ``</think>``, then answers. Only the
text after the *first* ``</think>`` is graded, so an answer that appears only inside the thinking
earns nothing; a response without ``</think>`` was cut off by the length limit and scores
``no_think_end_reward`` (unless ``require_think_end`` is off). In the graded text the *last*
``\\boxed{...}`` (or ``\\fbox{...}``) is the answer. Equivalence is decided by math-verify: both sides
are parsed from LaTeX into SymPy and compared symbolically and numerically (``\\frac{1}{2}`` = ``0.5``,
``\\dfrac``, trailing units, set / interval / matrix forms), after the rewrites of
:mod:`~verl_repro.rewards.normalization` (thousands separators, e-notation, percent, trailing
period) and two rules of its own (numbers agree to 6 significant digits; an equation answer must be a
true statement). Nothing is ever ``eval``-ed: only
math-verify's LaTeX parser runs, never its plain-expression extractor (which goes through SymPy's
``parse_expr``).

Hostile output (a 1 MB answer, ``9^{9^{9^{9^{9}}}}``, deeply nested LaTeX) cannot stall training:
answers longer than ``max_answer_chars`` are rejected before parsing, and parsing + verification
run in a :class:`~verl_repro.rewards.guarded.GuardedPool` child with a hard ``timeout_s`` deadline
(the child is killed and the sample scores ``incorrect_reward``; counted as ``timed_out``).

:func:`grade_answer_region` is the pure grading function (no deadline; the oracle of the tests and
what the children run). :class:`MathVerifier` adds the deadline and the reasoning-model rules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from verl_repro import UsageError
from verl_repro.config import check_field_types

from .ground_truth import BOXED_COMMANDS, closing_brace, ground_truth_answers
from .guarded import GuardedPool, ScoringCrash, ScoringError, ScoringTimeout
from .normalization import comparison_pair



MIN_TIMEOUT_S = 0.1
"""The shortest grading deadline accepted: a grading process answers an ordinary answer in a few
milliseconds plus the pipe round trip; below this every sample would time out and score 0."""


class RewardConfigError(UsageError):
    """A reward option is invalid; the message names the full key, e.g. ``reward.reward_kwargs.timeout_s``."""


@dataclass
class MathRewardConfig:
    """Options of the ``repro_math`` reward manager (``+reward.reward_kwargs.<key>=...`` in veRL)."""

    correct_reward: float = 1.0
    """Score of a response whose final boxed answer matches the ground truth."""
    incorrect_reward: float = 0.0
    """Score of a wrong, missing, unparseable or timed-out answer."""
    no_think_end_reward: float = 0.0
    """Score of a response without ``</think>`` (truncated) when ``require_think_end`` is on."""
    require_think_end: bool = True
    """Grade only text after the first ``</think>``; off grades the whole response when it has none."""
    think_end_token: str = "</think>"
    """End-of-thinking marker, matched in the decoded text."""
    timeout_s: float = 5.0
    """Hard per-sample deadline for parsing + verification (the child process is killed past it)."""
    num_processes: int = 2
    """Grading child processes per reward-loop worker (veRL runs ``reward.num_workers`` of those)."""
    max_answer_chars: int = 1000
    """Boxed answers longer than this are not parsed (score ``incorrect_reward``, ``answer_found`` 0)."""
    memory_limit_mb: int = 4096
    """Address-space limit of each grading process; 0 disables it."""

    def validate(self, prefix: str = "reward.reward_kwargs") -> "MathRewardConfig":
        def require(condition: bool, key: str, message: str) -> None:
            if not condition:
                raise RewardConfigError(f"{prefix}.{key} {message}, got {getattr(self, key)!r}")

        check_field_types(self, prefix, RewardConfigError)  # inf / nan, wrong types: named before any range check
        require(bool(self.think_end_token), "think_end_token", "must be a non-empty string")
        require(self.timeout_s >= MIN_TIMEOUT_S, "timeout_s",
                f"must be >= {MIN_TIMEOUT_S} s (a grading process cannot answer sooner: every sample would time out)")
        require(isinstance(self.num_processes, int) and self.num_processes >= 1, "num_processes", "must be an int >= 1")
        require(isinstance(self.max_answer_chars, int) and self.max_answer_chars >= 1, "max_answer_chars", "must be an int >= 1")
        require(isinstance(self.memory_limit_mb, int) and self.memory_limit_mb >= 0, "memory_limit_mb", "must be an int >= 0")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, prefix: str = "reward.reward_kwargs") -> "MathRewardConfig":
        """Build from a dict / OmegaConf node; unknown keys are an error naming the key."""
        values = {} if values is None else dict(values.items())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RewardConfigError(f"{prefix}.{unknown[0]} is not a known key; known keys: {sorted(known)}")
        return cls(**values).validate(prefix)


@dataclass(frozen=True)
class MathScore:
    """Grade of one response; the float fields are what veRL logs as ``reward_extra_info``."""

    score: float
    acc: float
    """1.0 when the final answer matches the ground truth."""
    has_think_end: float
    answer_found: float
    """1.0 when a complete ``\\boxed{}`` answer (within ``max_answer_chars``) was found in the graded text."""
    timed_out: float
    """1.0 when grading hit the deadline (or the grading process died)."""
    no_ground_truth: float = 0.0
    """1.0 when the ground truth is unusable (None, NaN, bool, dict, empty): scored ``incorrect_reward``."""

    def extra_info(self) -> dict[str, float]:
        return {
            "acc": self.acc, "has_think_end": self.has_think_end, "answer_found": self.answer_found,
            "timed_out": self.timed_out, "no_ground_truth": self.no_ground_truth,
        }


def split_at_think_end(response: str, think_end_token: str = "</think>") -> tuple[bool, str]:
    """``(has_think_end, text after the first think_end_token)``; ``(False, response)`` when absent."""
    position = response.find(think_end_token)
    if position < 0:
        return False, response
    return True, response[position + len(think_end_token):]


def last_boxed_answer(text: str, max_chars: int = 1000) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None.

    None when there is no such command, its braces are not closed (a truncated answer), or the
    content is longer than ``max_chars``; the scan stops after ``max_chars`` characters, so the
    cost is bounded whatever the input. ``\\{`` and ``\\}`` are literal braces and do not nest.
    ``\\boxed 5`` (no braces) yields the following token.
    """
    start = max(text.rfind(command) for command in BOXED_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in BOXED_COMMANDS if text.startswith(c, start))
    position = start + len(command)
    if text.startswith("{", position):
        closing = closing_brace(text, position, limit=position + max_chars + 2)
        return None if closing is None else text[position + 1:closing].strip()
    if text.startswith(" ", position):
        token = text[position:position + max_chars + 1].split(None, 1)
        if token and len(token[0]) <= max_chars:
            return token[0].rstrip("$.")
    return None


def grade_boxed_answer(answer: str, ground_truth: Any) -> bool:
    """Is the boxed ``answer`` (its content, without ``\\boxed``) equal to ``ground_truth``? Pure, no deadline.

    ``ground_truth`` is a raw value read by :func:`~verl_repro.rewards.ground_truth.ground_truth_answers`
    (a list matches when any entry does). Both sides go through
    :func:`~verl_repro.rewards.normalization.comparison_pair` (thousands separators, e-notation,
    percent, trailing period), are parsed as LaTeX by math-verify and compared with
    ``math_verify.verify(gold, prediction)`` under two rules of this package: numbers holding a float agree to
    :func:`decimal_places` (6, more below 1, fewer above 10^9), and an equation or chain is
    right only if it is a true statement (:func:`_is_true_statement`). Can run for unbounded time
    on hostile input: call it through :class:`MathVerifier` (or a :class:`GuardedPool`) in
    training and evaluation.
    """
    return any(
        _verify(*pair)
        for gold in ground_truth_answers(ground_truth)
        if (pair := comparison_pair(answer, gold)) is not None
    )


SIGNIFICANT_DIGITS = 6
"""Numbers below 1 are equal when they agree to this many significant digits (others to as many decimal places)."""
FLOAT_DIGITS = 15
"""math-verify's working precision: a float carries this many significant digits and no more."""


def decimal_places(*expressions: Any) -> int:
    """The decimal places two numbers must agree to when one of them holds a float.

    math-verify rounds to 6 places: below 1 that is an absolute tolerance (``0.0000004`` and
    ``0.0000001`` both round to 0), so the places grow until the smallest number keeps
    :data:`SIGNIFICANT_DIGITS` significant digits (12 places there: they differ). Above 10^9 six
    places ask for more digits than a float carries (``6.02\\times 10^{23}`` is not exactly
    602000000000000000000000 in binary), so the places shrink to :data:`FLOAT_DIGITS` - 1 significant
    digits of the largest number. Exact expressions (``\\frac{1}{3}``, ``2^{-20}``) are compared exactly
    by math-verify whatever this returns.
    """
    import mpmath
    from sympy import Basic, Float, MatrixBase

    def magnitudes(expr: Any):
        if isinstance(expr, MatrixBase):
            for element in expr:
                yield from magnitudes(element)
        elif isinstance(expr, Basic) and expr.is_number:
            try:
                value = abs(mpmath.mpmathify(complex(expr.evalf(FLOAT_DIGITS))))
            except (TypeError, ValueError, OverflowError):  # zoo, nan: no magnitude to keep
                return
            if value and mpmath.isfinite(value):
                yield int(mpmath.floor(mpmath.log10(value)))
        elif isinstance(expr, Basic):
            for argument in expr.args:
                yield from magnitudes(argument)

    if not any(isinstance(e, (Basic, MatrixBase)) and e.has(Float) for e in expressions):
        return SIGNIFICANT_DIGITS
    orders = [order for expression in expressions for order in magnitudes(expression)]
    if not orders:
        return SIGNIFICANT_DIGITS
    places = max(SIGNIFICANT_DIGITS, SIGNIFICANT_DIGITS - 1 - min(orders))
    return min(places, FLOAT_DIGITS - 2 - max(orders))


def _is_true_statement(prediction: Any, gold: Any, places: int) -> bool:
    """An equation or chain answer (``x = 2 + 3 = 5``) is judged as a statement: every link between two
    closed expressions must hold (``\\boxed{5 = 6}`` is false whatever the ground truth), and
    against a ground truth that is not itself a relation, every link with a variable must
    assign it (``x = 5`` against ``5`` stays right; ``2x = 10`` against ``10`` is not ``10``)."""
    from math_verify import verify
    from sympy import And, Eq, Symbol
    from sympy.core.function import AppliedUndef
    from sympy.core.relational import Relational

    links = prediction.args if isinstance(prediction, And) else (prediction,)
    if not links or not all(isinstance(link, Eq) for link in links):
        return True  # not an equation: math-verify's own comparison decides
    gold_is_relation = isinstance(gold, Relational) or (
        isinstance(gold, And) and all(isinstance(arg, Relational) for arg in gold.args))
    for link in links:
        if link.lhs.free_symbols or link.rhs.free_symbols:
            names_a_quantity = isinstance(link.lhs, Symbol) or (
                isinstance(link.lhs, AppliedUndef) and all(isinstance(a, Symbol) for a in link.lhs.args))
            if not gold_is_relation and not names_a_quantity:
                return False
        elif not verify(link.lhs, link.rhs, float_rounding=places, timeout_seconds=None):
            return False
    return True


def _verify(answer: str, ground_truth: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify
    from sympy import Basic

    extraction = [LatexExtractionConfig(boxed_match_priority=0)]
    gold_text = ground_truth if "\\boxed" in ground_truth else "\\boxed{" + ground_truth + "}"
    # parsing_timeout / timeout_seconds None: math-verify's signal-based timeout is replaced by
    # the caller's process deadline (signals do not work off the main thread).
    gold = parse(gold_text, extraction_config=extraction, parsing_timeout=None)
    prediction = parse("\\boxed{" + answer + "}", extraction_config=extraction, parsing_timeout=None)
    if not gold or not prediction:
        return False
    places = decimal_places(gold[0], prediction[0])
    if isinstance(prediction[0], Basic) and not _is_true_statement(prediction[0], gold[0], places):
        return False
    return bool(verify(gold, prediction, float_rounding=places, timeout_seconds=None))


def grade_answer_region(answer_region: str, ground_truth: Any, max_answer_chars: int = 1000) -> tuple[bool, bool]:
    """``(answer_found, correct)`` for the text after ``</think>``; pure, no deadline (see :func:`grade_boxed_answer`)."""
    answer = last_boxed_answer(answer_region, max_answer_chars)
    if not answer:
        return False, False
    return True, grade_boxed_answer(answer, ground_truth)


class MathVerifier:
    """Grades decoded responses with the reasoning-model rules and a hard per-sample deadline.

    One instance owns a :class:`GuardedPool` of ``config.num_processes`` children; use it from
    threads (:meth:`score`) or an event loop (:meth:`ascore`). ``strip_texts`` (e.g. the tokenizer's
    special tokens such as ``<|im_end|>``) are removed from the graded text before grading.
    """

    def __init__(self, config: MathRewardConfig | None = None, strip_texts: tuple[str, ...] = ()):
        self.config = (config or MathRewardConfig()).validate()
        self.strip_texts = tuple(t for t in strip_texts if t and t != self.config.think_end_token)
        self.pool = GuardedPool(
            "verl_repro.rewards._grading:grade",
            num_workers=self.config.num_processes,
            timeout_s=self.config.timeout_s,
            memory_limit_mb=self.config.memory_limit_mb or None,
        )

    def start(self) -> "MathVerifier":
        """Start the grading processes now (so a broken environment fails at start-up)."""
        self.pool.start()
        return self

    def close(self) -> None:
        self.pool.close()

    def _prepare(self, response: str) -> tuple[bool, str | None]:
        """``(has_think_end, boxed answer to send to a grading process, or None)``; cheap and bounded.

        Done in the caller, so a response without ``</think>`` or without a complete boxed answer
        never costs a process round trip and a megabyte of hostile text never crosses the pipe.
        """
        has_think_end, region = split_at_think_end(response, self.config.think_end_token)
        if not has_think_end and self.config.require_think_end:
            return False, None
        for text in self.strip_texts:
            region = region.replace(text, "")
        return has_think_end, last_boxed_answer(region, self.config.max_answer_chars) or None

    def _result(self, has_think_end: bool, answer: str | None, correct: bool, timed_out: bool = False) -> MathScore:
        cfg = self.config
        if not has_think_end and cfg.require_think_end:
            reward = cfg.no_think_end_reward
        else:
            reward = cfg.correct_reward if correct else cfg.incorrect_reward
        return MathScore(reward, float(correct), float(has_think_end), float(answer is not None), float(timed_out))

    def _unusable(self, has_think_end: bool, answer: str | None) -> MathScore:
        """An unusable ground truth: ``incorrect_reward`` whatever the response, counted."""
        return MathScore(self.config.incorrect_reward, 0.0, float(has_think_end), float(answer is not None), 0.0, 1.0)

    def score(self, response: str, ground_truth: Any) -> MathScore:
        """Grade one decoded response against a raw ground truth (read by
        :func:`~verl_repro.rewards.ground_truth.ground_truth_answers`: a list matches when any entry
        does); blocking, bounded by ``timeout_s`` plus waiting for a free process."""
        has_think_end, answer = self._prepare(response)
        answers = ground_truth_answers(ground_truth)
        if not answers:
            return self._unusable(has_think_end, answer)
        if answer is None:  # nothing to grade
            return self._result(has_think_end, answer, False)
        try:
            correct = self.pool.call(answer, answers)
        except (ScoringTimeout, ScoringCrash):
            return self._result(has_think_end, answer, False, timed_out=True)
        except ScoringError:  # the grader raised on this input: a found but unusable answer
            correct = False
        return self._result(has_think_end, answer, correct)

    async def ascore(self, response: str, ground_truth: Any) -> MathScore:
        """Awaitable :meth:`score`; the wait for the grading process runs on the pool's threads."""
        has_think_end, answer = self._prepare(response)
        answers = ground_truth_answers(ground_truth)
        if not answers:
            return self._unusable(has_think_end, answer)
        if answer is None:
            return self._result(has_think_end, answer, False)
        try:
            correct = await self.pool.acall(answer, answers)
        except (ScoringTimeout, ScoringCrash):
            return self._result(has_think_end, answer, False, timed_out=True)
        except ScoringError:
            correct = False
        return self._result(has_think_end, answer, correct)
