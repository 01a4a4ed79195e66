"""RePro estimators through veRL's registry: α = 0 is veRL's built-in bit for bit, α > 0 adds the maths
layer's process advantage, a hand-computed case, fallbacks, metrics, and the stock-trainer error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import verl  # noqa: F401  (loads the plugin: our estimators must be in veRL's registry)
from verl.protocol import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from verl_repro.algorithms import compute_repro_process_advantage
from verl_repro.config import ReproConfig
from verl_repro.verl_ext import estimator_registry, estimators
from verl_repro.verl_ext.estimator_registry import SPECS
from verl_repro.verl_ext.scoring import ReproScoring

REPRO_ESTIMATORS = ["repro_grpo", "repro_rloo", "repro_reinforce_plus_plus", "repro_reinforce_plus_plus_baseline", "repro_ppo"]
BUILTIN = {
    "repro_grpo": "grpo", "repro_rloo": "rloo", "repro_reinforce_plus_plus": "reinforce_plus_plus",
    "repro_reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline", "repro_ppo": "gae",
}
# The process-reward normalization each estimator runs by default (repro.process_reward_norm=auto).
DEFAULT_NORMALIZATION = {
    "repro_grpo": "grpo", "repro_rloo": "rloo", "repro_reinforce_plus_plus": "reinforce_plus_plus",
    "repro_reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline", "repro_ppo": "none",
}
ISSUE_METRICS = [
    "repro/num_cuts_mean", "repro/j_base_mean", "repro/j_final_mean", "repro/magnitude_mean",
    "repro/stability_mean", "repro/process_adv_abs_mean", "repro/skipped_no_think_end",
    "repro/skipped_no_ground_truth", "repro/skipped_nonfinite", "repro/scored_tokens",
]


def make_batch(seed: int = 0, batch: int = 8, length: int = 12, num_cuts: int = 4):
    """A padded batch with outcome rewards, uid groups, values and a hand-made ReproScoring.

    Row roles: 0-4 normal, 5 no </think> (no cuts), 6 unusable ground truth, 7 batch padding.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(num_cuts + 3, length + 1, (batch,), generator=generator)
    lengths[7] = 1
    response_mask = (torch.arange(length) < lengths.unsqueeze(1)).float()
    response_mask[7] = 0
    token_level_rewards = torch.zeros(batch, length)
    token_level_rewards[torch.arange(batch), lengths - 1] = torch.randint(0, 2, (batch,), generator=generator).float()
    token_level_rewards[7] = 0
    values = torch.randn(batch, length, generator=generator) * response_mask
    index = np.array(["a", "a", "a", "b", "b", "b", "c", "pad0"], dtype=object)[:batch]

    counts = torch.randint(1, num_cuts + 1, (batch,), generator=generator)
    cuts = torch.zeros(batch, num_cuts, dtype=torch.long)
    cut_mask = torch.arange(num_cuts) < counts.unsqueeze(1)
    for row in range(batch - 1):  # the padding row has no cuts
        end = int(lengths[row]) - 1  # e = last token, cut e + 1 = length
        inner = torch.randperm(end - 1, generator=generator)[: int(counts[row]) - 1].sort().values + 1
        cuts[row, : int(counts[row])] = torch.cat([inner, torch.tensor([end + 1])])
    has_think_end = torch.ones(batch, dtype=torch.bool)
    cut_mask[5] = False
    has_think_end[5] = False
    cut_mask[7] = False
    has_think_end[7] = False
    cuts = torch.where(cut_mask, cuts, 0)
    j_base = -1.0 - 3 * torch.rand(batch, generator=generator)
    j_cuts = torch.where(cut_mask, j_base.unsqueeze(1) * torch.rand(batch, num_cuts, generator=generator), float("nan"))
    valid = torch.ones(batch, dtype=torch.bool)
    valid[6] = False
    padding = torch.zeros(batch, dtype=torch.bool)
    padding[7] = True
    scored = valid & ~padding & cut_mask.any(dim=1)
    j_base = torch.where(scored, j_base, float("nan"))
    j_cuts = torch.where(scored.unsqueeze(1) & cut_mask, j_cuts, float("nan"))
    scoring = ReproScoring(
        cuts=cuts, cut_mask=cut_mask, has_think_end=has_think_end, j_base=j_base, j_cuts=j_cuts, valid=valid,
        padding=padding, scored=scored, stats={"num_sequences": 17.0, "scored_tokens": 321.0, "truncated_answers": 0.0},
    )
    return dict(token_level_rewards=token_level_rewards, response_mask=response_mask, index=index, values=values), scoring


def run_estimator(name, inputs, scoring, repro_config, algo, metrics=None):
    metrics = {} if metrics is None else metrics
    kwargs = dict(
        token_level_rewards=inputs["token_level_rewards"].clone(),
        response_mask=inputs["response_mask"],
        config=algo,
        index=inputs["index"],
        repro_scoring=scoring,
        repro_config=repro_config,
        metrics=metrics,
    )
    if "values" in SPECS[name].inputs:
        kwargs["values"] = inputs["values"]
    return get_adv_estimator_fn(name)(**kwargs)


def builtin_through_verl(name, inputs, algo):
    """The built-in as veRL's trainer runs it: ``ray_trainer.compute_advantage`` on a DataProto."""
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": inputs["token_level_rewards"].clone(),
            "response_mask": inputs["response_mask"],
            "values": inputs["values"],
        },
        non_tensors={"uid": inputs["index"]},
    )
    data = compute_advantage(
        data, adv_estimator=BUILTIN[name], gamma=algo.gamma, lam=algo.lam,
        norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo, config=algo,
    )
    return data.batch["advantages"], data.batch["returns"]


def test_registered_in_verl_with_declared_inputs():
    assert [spec.name for spec in estimator_registry.specs("repro")] == REPRO_ESTIMATORS
    for name in REPRO_ESTIMATORS:
        assert ADV_ESTIMATOR_REGISTRY[name] is SPECS[name].function
        assert SPECS[name].base == BUILTIN[name]
        assert {"repro_scoring", "repro_config", "metrics"} <= set(SPECS[name].inputs)
        assert SPECS[name].process_normalization() == DEFAULT_NORMALIZATION[name]
    assert "values" in SPECS["repro_ppo"].inputs
    entries = estimator_registry.register_now()  # idempotent
    assert [f"adv_estimator:{name}" for name in REPRO_ESTIMATORS] == [e for e in entries if e.startswith("adv_estimator:repro_")]


@pytest.mark.parametrize("name", REPRO_ESTIMATORS)
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_alpha_zero_is_the_verl_builtin_bit_for_bit(name, norm_by_std):
    inputs, scoring = make_batch(seed=1)
    algo = AlgoConfig(gamma=0.95, lam=0.9, norm_adv_by_std_in_grpo=norm_by_std)
    advantages, returns = run_estimator(name, inputs, scoring, ReproConfig(alpha=0.0).validate(), algo)
    expected_advantages, expected_returns = builtin_through_verl(name, inputs, algo)
    assert torch.equal(advantages, expected_advantages)
    assert torch.equal(returns, expected_returns)


@pytest.mark.parametrize("name", REPRO_ESTIMATORS)
def test_alpha_adds_the_maths_layer_process_advantage(name):
    inputs, scoring = make_batch(seed=2)
    algo = AlgoConfig(gamma=0.95, lam=0.9, norm_adv_by_std_in_grpo=True)
    repro_config = ReproConfig(alpha=0.3, stability_weight=0.4).validate()
    advantages, returns = run_estimator(name, inputs, scoring, repro_config, algo)
    outcome, outcome_returns = builtin_through_verl(name, inputs, algo)
    group_ids = torch.as_tensor(np.unique(inputs["index"].astype(str), return_inverse=True)[1])
    normalization = DEFAULT_NORMALIZATION[name]
    process = compute_repro_process_advantage(
        scoring.j_cuts, scoring.j_base, scoring.cuts, scoring.cut_mask, scoring.has_think_end, inputs["response_mask"],
        group_ids=group_ids, valid=scoring.valid, padding=scoring.padding, normalization=normalization,
        stability_weight=0.4, norm_adv_by_std_in_grpo=True, return_token_rewards=True,
    )
    assert process.counts.with_process_reward == 5
    if name == "repro_ppo":
        shaped = inputs["token_level_rewards"] + 0.3 * process.token_rewards
        expected, expected_returns = builtin_through_verl(name, {**inputs, "token_level_rewards": shaped}, algo)
        torch.testing.assert_close(advantages, expected, rtol=0, atol=0)
        torch.testing.assert_close(returns, expected_returns, rtol=0, atol=0)
    else:
        torch.testing.assert_close(advantages, outcome + 0.3 * process.process_advantages, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(returns, advantages if name != "repro_reinforce_plus_plus" else outcome_returns)
        if name == "repro_reinforce_plus_plus_baseline":  # veRL returns its advantage twice
            torch.testing.assert_close(outcome_returns, outcome, rtol=0, atol=0)
    # The process term is real, and absent on rows without process reward (5: no </think>,
    # 6: no ground truth, 7: padding).
    differs = (advantages - outcome).abs().amax(dim=1) > 1e-6
    assert differs[:5].any()
    if name != "repro_ppo":  # GAE mixes rows; the others keep foreign rows untouched
        assert not differs[5:].any()
        assert torch.equal(advantages[5:], outcome[5:])


@pytest.mark.parametrize(
    "name, process_reward_norm, normalization",
    [
        ("repro_ppo", "group", "grpo"),  # what the authors' PPO path is given the group ids for
        ("repro_ppo", "batch", "reinforce_plus_plus"),
        ("repro_grpo", "none", "none"),
        ("repro_rloo", "batch", "reinforce_plus_plus"),
        ("repro_reinforce_plus_plus", "group", "grpo"),
        ("repro_reinforce_plus_plus_baseline", "auto", "reinforce_plus_plus_baseline"),
    ],
)
def test_process_reward_norm_selects_the_normalization(name, process_reward_norm, normalization):
    inputs, scoring = make_batch(seed=7)
    algo = AlgoConfig(gamma=1.0, lam=0.95, norm_adv_by_std_in_grpo=True)
    repro_config = ReproConfig(alpha=0.2, process_reward_norm=process_reward_norm).validate()
    advantages, _ = run_estimator(name, inputs, scoring, repro_config, algo)
    group_ids = torch.as_tensor(np.unique(inputs["index"].astype(str), return_inverse=True)[1])
    process = compute_repro_process_advantage(
        scoring.j_cuts, scoring.j_base, scoring.cuts, scoring.cut_mask, scoring.has_think_end, inputs["response_mask"],
        group_ids=group_ids, valid=scoring.valid, padding=scoring.padding, normalization=normalization,
        return_token_rewards=True,
    )
    if name == "repro_ppo":
        shaped = inputs["token_level_rewards"] + 0.2 * process.token_rewards
        expected, _ = builtin_through_verl(name, {**inputs, "token_level_rewards": shaped}, algo)
        torch.testing.assert_close(advantages, expected, rtol=0, atol=0)
    else:
        outcome, _ = builtin_through_verl(name, inputs, algo)
        torch.testing.assert_close(advantages, outcome + 0.2 * process.process_advantages, rtol=1e-6, atol=1e-6)
    if name == "repro_ppo" and process_reward_norm == "group":
        # Group form: the normalized entries of each prompt group have mean 0.
        entries = process.normalized_rewards[process.reward_mask]
        rows = process.reward_mask.nonzero()[:, 0]
        for group in group_ids[rows].unique():
            assert abs(float(entries[group_ids[rows] == group].sum())) < 1e-5


def test_process_reward_norm_is_validated():
    from verl_repro.config import ConfigError

    with pytest.raises(ConfigError, match=r"repro\.process_reward_norm must be one of"):
        ReproConfig(process_reward_norm="token").validate()


def test_repro_grpo_hand_computed_case():
    # One response, 8 tokens of which 7 are real, cuts after tokens 3 and 5 (c = 3, 5 = e + 1),
    # J_b = -2, J = [-1, -0.5], magnitude only (w = 0), outcome reward 1 on the last real token.
    response_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    rewards = torch.zeros(1, 8)
    rewards[0, 6] = 1.0
    scoring = ReproScoring(
        cuts=torch.tensor([[3, 5]]), cut_mask=torch.tensor([[True, True]]), has_think_end=torch.tensor([True]),
        j_base=torch.tensor([-2.0]), j_cuts=torch.tensor([[-1.0, -0.5]]), valid=torch.tensor([True]),
        padding=torch.tensor([False]), scored=torch.tensor([True]), stats={"scored_tokens": 40.0, "num_sequences": 3.0},
    )
    metrics: dict = {}
    advantages, _ = get_adv_estimator_fn("repro_grpo")(
        token_level_rewards=rewards, response_mask=response_mask, config=AlgoConfig(), index=np.array(["q"], dtype=object),
        repro_scoring=scoring, repro_config=ReproConfig(alpha=0.5, stability_weight=0.0).validate(), metrics=metrics,
    )
    s1, s2 = 1 - math.tanh(-1.0 / -2.0), 1 - math.tanh(-0.5 / -2.0)  # 0.537883, 0.755081
    r1, r2 = s1, s2 - s1
    mean, std = (r1 + r2) / 2, abs(r1 - r2) / math.sqrt(2)  # unbiased std of two entries
    n1, n2 = (r1 - mean) / (std + 1e-6), (r2 - mean) / (std + 1e-6)  # ≈ +0.7071, -0.7071
    outcome = 1.0 / (1.0 + 1e-6)  # a group of one: mean 0, std 1 (veRL's convention)
    # Ã: tokens 0..2 get r1' + r2', tokens 3..4 get r2', tokens 5.. get nothing.
    process = [n1 + n2] * 3 + [n2] * 2 + [0.0, 0.0, 0.0]
    expected = torch.tensor([[outcome + 0.5 * p for p in process]]) * response_mask
    torch.testing.assert_close(advantages, expected, rtol=1e-5, atol=1e-5)
    assert metrics["repro/num_cuts_mean"] == 2
    assert metrics["repro/j_base_mean"] == pytest.approx(-2.0)
    assert metrics["repro/j_final_mean"] == pytest.approx(-0.5)
    assert metrics["repro/magnitude_mean"] == pytest.approx((s1 + s2) / 2, abs=1e-6)
    assert metrics["repro/stability_mean"] == pytest.approx(1.0)  # J rises monotonically: τ = 1
    assert metrics["repro/process_adv_abs_mean"] == pytest.approx((abs(n1 + n2) * 3 + abs(n2) * 2) / 7, abs=1e-5)
    assert metrics["repro/scored_tokens"] == 40.0


@pytest.mark.parametrize("name", REPRO_ESTIMATORS)
def test_metrics_present_finite_and_count_fallbacks(name):
    inputs, scoring = make_batch(seed=3)
    scoring.j_cuts[2, 0] = float("nan")  # a non-finite log-prob: row 2 loses its process reward
    scoring.j_base[3] = -1e-9  # J_b ≈ 0: magnitude undefined
    metrics: dict = {}
    run_estimator(name, inputs, scoring, ReproConfig(alpha=0.1).validate(), AlgoConfig(), metrics)
    for key in ISSUE_METRICS:
        assert key in metrics and math.isfinite(metrics[key]), key
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["repro/skipped_no_think_end"] == 1
    assert metrics["repro/skipped_no_ground_truth"] == 1
    assert metrics["repro/skipped_nonfinite"] == 2 and metrics["repro/j_base_near_zero"] == 1
    assert metrics["repro/with_process_reward"] == 3
    assert metrics["repro/scored_tokens"] == 321.0


def test_no_row_with_process_reward_gives_zero_metrics_not_nan():
    inputs, scoring = make_batch(seed=4)
    scoring.valid[:] = False
    metrics: dict = {}
    advantages, _ = run_estimator("repro_grpo", inputs, scoring, ReproConfig(alpha=0.1).validate(), AlgoConfig(), metrics)
    expected, _ = builtin_through_verl("repro_grpo", inputs, AlgoConfig())
    assert torch.equal(advantages, expected)
    assert metrics["repro/with_process_reward"] == 0 and metrics["repro/j_base_mean"] == 0.0
    assert all(math.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize("name", REPRO_ESTIMATORS)
def test_under_verls_stock_trainer_path_the_error_names_repro_sync(name):
    inputs, _ = make_batch(seed=5)
    data = DataProto.from_dict(
        tensors={k: inputs[k] for k in ("token_level_rewards", "response_mask", "values")},
        non_tensors={"uid": inputs["index"]},
    )
    with pytest.raises(RuntimeError, match=r"trainer\.v1\.trainer_mode=repro_sync"):
        compute_advantage(data, adv_estimator=name, config=AlgoConfig())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), norm_by_std=st.booleans())
def test_alpha_zero_property_random_batches(seed, norm_by_std):
    inputs, scoring = make_batch(seed=seed)
    algo = AlgoConfig(norm_adv_by_std_in_grpo=norm_by_std)
    for name in ("repro_grpo", "repro_rloo"):
        advantages, _ = run_estimator(name, inputs, scoring, ReproConfig(alpha=0.0).validate(), algo)
        assert torch.equal(advantages, builtin_through_verl(name, inputs, algo)[0])


def test_row_order_does_not_matter():
    inputs, scoring = make_batch(seed=6)
    repro_config = ReproConfig(alpha=0.2).validate()
    advantages, _ = run_estimator("repro_grpo", inputs, scoring, repro_config, AlgoConfig())
    perm = torch.tensor([3, 0, 7, 5, 1, 6, 2, 4])
    permuted_inputs = {k: (v[perm.numpy()] if isinstance(v, np.ndarray) else v[perm]) for k, v in inputs.items()}
    permuted_scoring = ReproScoring(
        **{f: getattr(scoring, f)[perm] for f in ("cuts", "cut_mask", "has_think_end", "j_base", "j_cuts", "valid", "padding", "scored")},
        stats=scoring.stats,
    )
    permuted, _ = run_estimator("repro_grpo", permuted_inputs, permuted_scoring, repro_config, AlgoConfig())
    torch.testing.assert_close(permuted, advantages[perm], rtol=1e-6, atol=1e-6)


def test_docs_table_is_generated_from_the_specs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "repro.md").read_text()
    assert estimator_registry.markdown_table("repro") in text, (
        "regenerate: python -c 'from verl_repro.verl_ext.estimator_registry import markdown_table as t; print(t())'"
    )


def test_a_run_off_the_paper_setting_is_logged_once(caplog):
    paper = ReproConfig(scorer="actor", no_think_end="use_end").validate()
    assert estimators.paper_setting_differences(paper) == []
    off = ReproConfig(scorer="actor", no_think_end="skip", num_segments=20).validate()
    with caplog.at_level("WARNING", logger="verl_repro"):
        lines = estimators.log_paper_setting_differences("repro_ppo", off)
        estimators.log_paper_setting_differences("repro_ppo", off)  # a second trainer in the process
        assert estimators.log_paper_setting_differences("grpo", off) == []  # not a RePro run
    assert lines == [
        "repro.no_think_end=skip differs from the paper setting (use_end)",
        "repro.num_segments=20 differs from the paper setting (10)",
    ]
    logged = [r.getMessage() for r in caplog.records if "differs from the paper setting" in r.getMessage()]
    assert len(logged) == 2 and all("repro_ppo" in message for message in logged)
