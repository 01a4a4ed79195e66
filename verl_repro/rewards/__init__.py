"""Pure scoring of reasoning-model outputs (no veRL imports): math answers graded by math-verify.

:class:`MathVerifier` grades decoded responses (text after the first ``</think>``, last ``\\boxed{}``)
with a hard per-sample deadline enforced by :class:`GuardedPool` child processes; veRL's reward
manager (``verl_repro.verl_ext.reward_managers``) and ``scripts/evaluate.py`` both use it.
:func:`ground_truth_text` / :func:`ground_truth_answers` are the one rule every part of the
package reads a ground truth with (grading, RePro scoring, evaluation, data preparation, analysis).
"""

from .ground_truth import ground_truth_answers, ground_truth_text
from .guarded import GuardedPool, ScoringCrash, ScoringError, ScoringTimeout
from .math_verifier import (
    MathRewardConfig,
    MathScore,
    MathVerifier,
    RewardConfigError,
    grade_answer_region,
    grade_boxed_answer,
    last_boxed_answer,
    split_at_think_end,
)

__all__ = [
    "GuardedPool",
    "MathRewardConfig",
    "MathScore",
    "MathVerifier",
    "RewardConfigError",
    "ScoringCrash",
    "ScoringError",
    "ScoringTimeout",
    "grade_answer_region",
    "grade_boxed_answer",
    "ground_truth_answers",
    "ground_truth_text",
    "last_boxed_answer",
    "split_at_think_end",
]
