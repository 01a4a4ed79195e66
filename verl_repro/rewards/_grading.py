"""Imported only inside grading processes: pays math-verify's start-up cost before the first deadline.

Importing math-verify / SymPy and building the LaTeX grammar takes seconds; done at import, the
:class:`~verl_repro.rewards.guarded.GuardedPool` child reports ready only afterwards, so the
per-sample deadline measures grading alone (also right after a killed process is replaced).
"""

from __future__ import annotations

import logging

from .math_verifier import grade_boxed_answer

# math-verify warns that its own (signal) timeout is off; the deadline is the parent's kill.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).setLevel(logging.ERROR)

grade_boxed_answer("\\frac{1}{2}", "0.5")


def grade(answer: str, ground_truth) -> bool:
    """``ground_truth``: a raw value or a tuple of accepted answers (any match counts)."""
    return grade_boxed_answer(answer, ground_truth)
