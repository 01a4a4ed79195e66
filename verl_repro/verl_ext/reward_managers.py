"""``repro_math``: a veRL reward-loop manager grading math answers of reasoning models.

Select it with ``reward.reward_manager.name=repro_math``; options come from
``reward.reward_kwargs`` (``+reward.reward_kwargs.timeout_s=10`` on the command line, or a
``reward_kwargs:`` block under ``reward:`` in a recipe YAML) and are the fields of
:class:`verl_repro.rewards.MathRewardConfig`; an unknown or invalid key fails at start-up naming it.

veRL 0.9.1 builds one manager per ``RewardLoopWorker`` Ray actor
(``verl/trainer/ppo/reward.py::load_reward_manager``: ``cls(config=, tokenizer=, compute_score=,
reward_router_address=, reward_model_tokenizer=)``) and awaits ``run_single`` once per sample,
all samples of a chunk concurrently (``asyncio.gather``). Grading runs in the manager's
:class:`~verl_repro.rewards.MathVerifier` processes with a hard deadline, so one hostile response
delays only itself. ``reward_extra_info`` carries ``acc``, ``has_think_end``, ``answer_found``,
``timed_out`` and ``no_ground_truth`` (an unusable ground truth, see
:func:`verl_repro.rewards.ground_truth_text`) for veRL's metrics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from verl_repro.rewards import MathRewardConfig, MathVerifier

logger = logging.getLogger("verl_repro")

REWARD_MANAGER_NAME = "repro_math"
# Importing this package costs ~2 s (it pulls in every built-in manager and veRL's scorers); the
# plugin runs in every Ray process, so the class is defined and registered only once veRL itself
# imports the package, which it does right before looking a manager up.
REWARD_MANAGER_PACKAGE = "verl.experimental.reward_loop.reward_manager"


def reward_kwargs_of(config: Any) -> dict:
    """The ``reward.reward_kwargs`` mapping of a veRL config (absent → ``{}``)."""
    reward = config.get("reward") if hasattr(config, "get") else None
    kwargs = reward.get("reward_kwargs") if reward is not None else None
    return {} if kwargs is None else dict(kwargs.items())


class _ReproMathMixin:
    """The manager's behaviour; combined with veRL's ``RewardManagerBase`` in :func:`build_manager_class`."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None, **kwargs):
        super().__init__(config, tokenizer, compute_score)
        self.math_config = MathRewardConfig.from_mapping(reward_kwargs_of(config))
        custom = config.get("reward", {}).get("custom_reward_function", {}) or {}
        if custom.get("path"):
            logger.warning("verl-repro: reward manager %s ignores reward.custom_reward_function.path=%s", REWARD_MANAGER_NAME, custom.get("path"))
        # Special tokens (end-of-sequence, chat markers) are removed before grading; </think> stays
        # in the decoded text even when the tokenizer marks it special.
        special_texts = tuple(getattr(tokenizer, "all_special_tokens", ()) or ())
        self.verifier = MathVerifier(self.math_config, strip_texts=special_texts).start()

    async def run_single(self, data) -> dict:
        """``data``: a one-sample ``DataProto`` (``responses``, ``attention_mask``, ``reward_model``)."""
        data_item = data[-1]  # multi-sequence outputs: the last sequence is graded, as veRL's managers do
        response_ids = data_item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_length = int(data_item.batch["attention_mask"][-response_length:].sum())
        valid_ids = response_ids[:valid_length]
        reward_model = data_item.non_tensor_batch.get("reward_model") or {}
        # The raw value: the verifier reads it with ground_truth_answers (lists, bytes, NaN, ...).
        ground_truth = reward_model.get("ground_truth") if hasattr(reward_model, "get") else None

        # skip_special_tokens=False: </think> is a special token in some tokenizers and must survive.
        response_text = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.tokenizer.decode(valid_ids, skip_special_tokens=False)
        )
        result = await self.verifier.ascore(response_text, ground_truth)
        return {"reward_score": result.score, "reward_extra_info": result.extra_info()}


_manager_class: type | None = None


def build_manager_class() -> type:
    """Define ``ReproMathRewardManager`` on veRL's ``RewardManagerBase`` and register it (idempotent)."""
    global _manager_class
    if _manager_class is not None:
        return _manager_class
    # Importing the package may itself run the deferred registration: check again afterwards.
    from verl.experimental.reward_loop.reward_manager import registry
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    if _manager_class is None:

        class ReproMathRewardManager(_ReproMathMixin, RewardManagerBase):
            """Outcome reward: 1 when the last ``\\boxed{}`` after ``</think>`` equals ``reward_model.ground_truth``."""

        ReproMathRewardManager.__module__ = __name__
        ReproMathRewardManager.__qualname__ = "ReproMathRewardManager"
        current = registry.REWARD_MANAGER.get(REWARD_MANAGER_NAME)
        if current is not None:
            raise RuntimeError(f"reward manager name {REWARD_MANAGER_NAME!r} is already taken by {current!r}")
        _manager_class = registry.register(REWARD_MANAGER_NAME)(ReproMathRewardManager)
    return _manager_class


def __getattr__(name: str):
    if name == "ReproMathRewardManager":
        return build_manager_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> list[str]:
    """Register ``repro_math`` in veRL's reward-loop registry once veRL imports it (idempotent)."""
    from verl_repro.plugin.registrations import register_when_imported

    if _manager_class is None:
        register_when_imported(__name__, REWARD_MANAGER_PACKAGE, lambda registry: build_manager_class())
    return [f"reward_manager:{REWARD_MANAGER_NAME}"]
