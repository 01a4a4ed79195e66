"""CorR-PO estimators through veRL's registry on hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_repro.config import CorrConfig, ReproConfig
from verl_repro.verl_ext import corrpo, estimator_registry
from verl_repro.verl_ext.estimator_registry import SPECS

THINK_END = 9
LENGTH = 8


@pytest.fixture(scope="module")
def registry():
    from verl.trainer.ppo import core_algos

    entries = estimator_registry.register_now()
    assert {"adv_estimator:corrpo", "adv_estimator:corrpo_rloo"} <= set(entries)
    assert estimator_registry.register_now() == entries  # idempotent
    return core_algos


def _token_rewards(scores: list[float], mask: torch.Tensor) -> torch.Tensor:
    """Outcome score on the last real token, as veRL's reward managers place it."""
    rewards = torch.zeros(mask.shape)
    last = mask.sum(1) - 1
    rewards[torch.arange(len(scores)), last] = torch.tensor(scores)
    return rewards


def _batch(rho_kinds: list[str]):
    """Rows of 6 thinking tokens, ``</think>``, 1 answer token; entropy rises 0.1..0.6 in every row.

    ``"inverted"``: g falls as entropy rises (ρ = −1); ``"aligned"``: g rises (ρ = +1);
    ``"flat"``: g constant (zero variance → ρ = 0, skipped).
    """
    batch = len(rho_kinds)
    entropy = torch.linspace(0.1, 0.6, 6).repeat(batch, 1)
    patterns = {
        "inverted": torch.linspace(1.0, 0.5, 6),
        "aligned": torch.linspace(0.5, 1.0, 6),
        "flat": torch.full((6,), 0.7),
    }
    grad_norm = torch.stack([patterns[kind] for kind in rho_kinds])
    # The answer token after </think> would flip a thinking-scope ρ if the scope leaked.
    entropy = torch.cat([entropy, torch.full((batch, 1), 0.05), torch.full((batch, 1), 5.0)], dim=1)
    grad_norm = torch.cat([grad_norm, torch.full((batch, 1), 0.05), torch.full((batch, 1), 5.0)], dim=1)
    responses = torch.tensor([[1, 2, 3, 4, 5, 6, THINK_END, 7]] * batch)
    mask = torch.ones(batch, LENGTH, dtype=torch.long)
    return responses, entropy, grad_norm, mask


def _call(fn, scores, index, rho_kinds, corr: CorrConfig | None = None, **overrides):
    responses, entropy, grad_norm, mask = _batch(rho_kinds)
    metrics: dict = {}
    repro = ReproConfig(corr=corr or CorrConfig(coef=0.5, min_tokens=3)).validate()
    kwargs = dict(
        token_level_rewards=_token_rewards(scores, mask),
        response_mask=mask,
        index=np.array(index, dtype=object),
        config=OmegaConf.create({"norm_adv_by_std_in_grpo": True}),
        repro_config=repro,
        responses=responses,
        entropy=entropy,
        logit_grad_norm=grad_norm,
        think_end_id=THINK_END,
        metrics=metrics,
    )
    kwargs.update(overrides)
    advantages, returns = fn(**kwargs)
    return advantages, returns, metrics


def test_registered_and_declares_its_inputs(registry):
    assert registry.get_adv_estimator_fn("corrpo") is corrpo.compute_corrpo_advantage
    assert registry.get_adv_estimator_fn("corrpo_rloo") is corrpo.compute_corrpo_rloo_advantage
    assert [spec.name for spec in estimator_registry.specs("corrpo")] == ["corrpo", "corrpo_rloo"]
    for name in ("corrpo", "corrpo_rloo"):
        assert set(SPECS[name].all_inputs) == {"repro_config", "responses", "entropy", "logit_grad_norm", "think_end_id", "metrics"}


def test_stronger_inversion_earns_the_larger_advantage(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    # Same prompt, same outcome (both correct); only the correlation differs.
    advantages, returns, metrics = _call(fn, [1.0, 1.0], ["q", "q"], ["inverted", "aligned"])
    assert advantages[0, 0] > 0 > advantages[1, 0]
    torch.testing.assert_close(advantages, returns)
    # Hand-computed: r = 1 - 0.5·ρ = [1.5, 0.5]; mean 1, unbiased std sqrt(0.5); (r - 1) / (std + 1e-6).
    expected = 0.5 / (np.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([expected, -expected], dtype=torch.float32), rtol=1e-6, atol=1e-6)
    # Broadcast over the whole response, </think> and answer included.
    assert torch.all(advantages == advantages[:, :1])
    assert metrics["corr/rho_mean"] == pytest.approx(0.0)
    assert metrics["corr/rho_correct_mean"] == pytest.approx(0.0)
    assert "corr/rho_incorrect_mean" not in metrics  # no incorrect response: left out, not NaN
    assert metrics["corr/regularizer_abs_mean"] == pytest.approx(0.5)
    assert metrics["corr/skipped"] == 0


def test_matches_grpo_on_the_regularized_reward(registry):
    """Oracle: veRL's own GRPO on token rewards carrying r_i = r_outcome - λ·ρ."""
    fn = registry.get_adv_estimator_fn("corrpo")
    grpo = registry.get_adv_estimator_fn("grpo")
    kinds = ["inverted", "aligned", "flat", "inverted", "aligned", "aligned"]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    index = ["a", "a", "a", "b", "b", "c"]
    advantages, _, metrics = _call(fn, scores, index, kinds)
    rho = torch.tensor([-1.0, 1.0, 0.0, -1.0, 1.0, 1.0])
    _, _, _, mask = _batch(kinds)
    regularized = _token_rewards((torch.tensor(scores) - 0.5 * rho).tolist(), mask)
    expected, _ = grpo(regularized, mask, index=np.array(index, dtype=object), norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-6)
    assert metrics["corr/skipped"] == 1 and metrics["corr/skipped_zero_variance"] == 1
    # ρ over defined rows: correct = {-1 (row 0), +1 (row 4)}, incorrect = {+1, -1, +1}.
    assert metrics["corr/rho_correct_mean"] == pytest.approx(0.0)
    assert metrics["corr/rho_incorrect_mean"] == pytest.approx(1 / 3)
    assert metrics["corr/rho_mean"] == pytest.approx(0.2)
    # Dr.GRPO form: centring only.
    centred, _, _ = _call(fn, scores, index, kinds, norm_adv_by_std_in_grpo=False)
    expected, _ = grpo(regularized, mask, index=np.array(index, dtype=object), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(centred, expected, rtol=1e-5, atol=1e-6)


def test_rloo_matches_verl_rloo_on_the_regularized_reward(registry):
    fn = registry.get_adv_estimator_fn("corrpo_rloo")
    rloo = registry.get_adv_estimator_fn("rloo")
    kinds = ["inverted", "aligned", "flat", "aligned", "inverted"]
    scores = [1.0, 1.0, 0.0, 0.0, 1.0]
    index = ["a", "a", "a", "b", "c"]
    advantages, _, _ = _call(fn, scores, index, kinds)
    rho = torch.tensor([-1.0, 1.0, 0.0, 1.0, -1.0])
    _, _, _, mask = _batch(kinds)
    regularized = _token_rewards((torch.tensor(scores) - 0.5 * rho).tolist(), mask)
    expected, _ = rloo(regularized, mask, index=np.array(index, dtype=object), config=None)
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-6)
    assert advantages[0, 0] > advantages[1, 0]


def test_verifier_free_mode_ranks_by_inversion_alone(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    corr = CorrConfig(coef=1.0, min_tokens=3, outcome_weight=0.0)
    # The wrong answer with the inverted signature beats the right answer with the aligned one.
    advantages, _, metrics = _call(fn, [0.0, 1.0, 1.0], ["q"] * 3, ["inverted", "aligned", "flat"], corr=corr)
    assert advantages[0, 0] > advantages[2, 0] > advantages[1, 0]
    assert all(np.isfinite(value) for value in metrics.values())


def test_scope_all_sees_the_answer_tokens(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    kinds = ["inverted", "aligned", "flat"]
    thinking, _, thinking_metrics = _call(fn, [1.0, 1.0, 1.0], ["q"] * 3, kinds)
    corr = CorrConfig(coef=0.5, min_tokens=3, scope="all")
    everything, _, metrics = _call(fn, [1.0, 1.0, 1.0], ["q"] * 3, kinds, corr=corr, responses=None, think_end_id=None)
    assert thinking_metrics["corr/rho_mean"] == pytest.approx(0.0)
    # With the (aligned) answer tokens included the inverted row is no longer a perfect -1.
    assert metrics["corr/rho_mean"] > 0
    assert not torch.allclose(thinking, everything)


def test_min_tokens_skips_short_responses_and_padding_rows_are_ignored(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    corr = CorrConfig(coef=0.5, min_tokens=8)  # 6 thinking tokens < 8
    responses, entropy, grad_norm, mask = _batch(["inverted", "aligned", "inverted"])
    mask[2] = 0  # a batch-balancing padding row: no response tokens
    metrics: dict = {}
    advantages, _ = fn(
        token_level_rewards=_token_rewards([1.0, 0.0, 0.0], torch.ones_like(mask)) * mask,
        response_mask=mask,
        index=np.array(["q", "q", "pad"], dtype=object),
        repro_config=ReproConfig(corr=corr),
        responses=responses,
        entropy=entropy,
        logit_grad_norm=grad_norm,
        think_end_id=THINK_END,
        metrics=metrics,
    )
    assert metrics["corr/skipped"] == 2 and metrics["corr/skipped_few_tokens"] == 2
    assert "corr/rho_mean" not in metrics
    assert metrics["corr/regularizer_abs_mean"] == 0.0
    assert advantages[0, 0] > 0 > advantages[1, 0]  # outcome alone decides
    assert torch.all(advantages[2] == 0)


def test_nonfinite_statistics_never_reach_the_advantage(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    responses, entropy, grad_norm, mask = _batch(["inverted", "aligned"])
    entropy[0, 1] = float("nan")
    grad_norm[1, 2] = float("inf")
    metrics: dict = {}
    advantages, _ = fn(
        token_level_rewards=_token_rewards([1.0, 1.0], mask),
        response_mask=mask,
        index=np.array(["q", "q"], dtype=object),
        repro_config=ReproConfig(corr=CorrConfig(min_tokens=3)),
        responses=responses,
        entropy=entropy,
        logit_grad_norm=grad_norm,
        think_end_id=THINK_END,
        metrics=metrics,
    )
    assert torch.isfinite(advantages).all()
    assert metrics["corr/nonfinite_tokens"] == 2
    assert advantages[0, 0] > advantages[1, 0]


def test_missing_inputs_name_the_trainer_mode_and_the_flag(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    mask = torch.ones(2, LENGTH)
    # What veRL's stock trainer passes.
    with pytest.raises(RuntimeError, match="trainer_mode=repro_sync") as error:
        fn(token_level_rewards=torch.zeros(2, LENGTH), response_mask=mask, index=np.array(["a", "a"]), config=None)
    assert "calculate_sum_pi_squared" in str(error.value) and "VERL_ENGINE_VENDOR=repro" in str(error.value)
    with pytest.raises(RuntimeError, match="logit_grad_norm"):
        _call(fn, [1.0, 1.0], ["q", "q"], ["inverted", "aligned"], logit_grad_norm=None)


def test_bad_config_names_the_key(registry):
    fn = registry.get_adv_estimator_fn("corrpo")
    with pytest.raises(ValueError, match="repro.corr.kind"):
        _call(fn, [1.0, 1.0], ["q", "q"], ["inverted", "aligned"], corr=CorrConfig(kind="kendall"))


def test_readme_keys_table_matches_the_dataclass():
    from pathlib import Path

    from verl_repro.config import config_table

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "corrpo.md").read_text()
    for key, default, _ in config_table(CorrConfig, "repro.corr"):
        assert f"| `{key}` | `{default}` |" in text, f"{key} (default {default}) missing from the CorR-PO keys table"
    for metric in ("corr/rho_mean", "corr/rho_correct_mean", "corr/rho_incorrect_mean", "corr/skipped", "corr/regularizer_abs_mean"):
        assert f"`{metric}`" in text
