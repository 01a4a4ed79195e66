"""Normalization of process rewards, token process advantages, the batched chain (docs/repro.md, "RePro maths", "Bad input")."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.algorithms import (
    ReproFallbackCounts,
    batch_whiten_process_rewards,
    combine_advantages,
    compute_repro_process_advantage,
    group_baseline_whiten_process_rewards,
    group_ids_from_uids,
    group_normalize_process_rewards,
    normalize_process_rewards,
    place_process_rewards,
    rloo_process_rewards,
    select_cuts,
    token_process_advantage,
)
from verl_repro.algorithms import reference as oracle


F64 = torch.float64
BOUNDARY = (2, 3)
THINK_END = 7


def _t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


# --------------------------------------------------------------------------- token advantage, hand cases

CUTS = torch.tensor([[2, 5, 7]])  # reward tokens 1, 4, 6 (the last one is </think> at e = 6)
REWARDS = _t([[0.5, 0.2, -0.1]])
ALL3 = torch.ones(1, 3, dtype=torch.bool)


def test_return_to_go_written_out():
    advantage = token_process_advantage(REWARDS, CUTS, ALL3, torch.ones(1, 8))
    torch.testing.assert_close(advantage, _t([[0.6, 0.6, 0.1, 0.1, 0.1, -0.1, -0.1, 0.0]]), rtol=0, atol=1e-12)
    # gamma = 0.5: A_4 = 0.2 + 0.5^2 * (-0.1) = 0.175, A_1 = 0.5 + 0.5^3 * 0.2 + 0.5^5 * (-0.1) = 0.521875
    advantage = token_process_advantage(REWARDS, CUTS, ALL3, torch.ones(1, 8), gamma=0.5)
    expected = [[0.2609375, 0.521875, 0.04375, 0.0875, 0.175, -0.05, -0.1, 0.0]]
    torch.testing.assert_close(advantage, _t(expected), rtol=0, atol=1e-12)


def test_masked_tokens_are_zero_and_rewards_are_placed_on_c_minus_1():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    advantage = token_process_advantage(REWARDS, CUTS, ALL3, mask)
    torch.testing.assert_close(advantage, _t([[0.6, 0.6, 0.1, 0.1, 0.1, -0.1, 0.0, 0.0]]), rtol=0, atol=1e-12)
    placed = place_process_rewards(REWARDS, CUTS, ALL3, torch.ones(1, 8))
    assert placed.tolist() == [[0.0, 0.5, 0.0, 0.0, 0.2, 0.0, -0.1, 0.0]]
    # Padding entries of the cut table carry garbage and must be ignored.
    cuts = torch.tensor([[2, 5, 7, 0], [3, 99, -4, 1]])
    rewards = _t([[0.5, 0.2, -0.1, 123.0], [1.0, 5.0, 5.0, 5.0]])
    cut_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    advantage = token_process_advantage(rewards, cuts, cut_mask, torch.ones(2, 8))
    expected = [[0.6, 0.6, 0.1, 0.1, 0.1, -0.1, -0.1, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(advantage, _t(expected), rtol=0, atol=1e-12)
    assert (advantage[:, 7] == 0).all() and (advantage[1, 3:] == 0).all()  # exactly zero after e


def test_bad_cut_tables_raise():
    with pytest.raises(ValueError, match="1..8"):
        token_process_advantage(REWARDS, torch.tensor([[2, 5, 9]]), ALL3, torch.ones(1, 8))
    with pytest.raises(ValueError, match="ascending"):
        token_process_advantage(REWARDS, torch.tensor([[5, 2, 7]]), ALL3, torch.ones(1, 8))
    with pytest.raises(ValueError, match="repro.gamma"):
        token_process_advantage(REWARDS, CUTS, ALL3, torch.ones(1, 8), gamma=0.0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), length=st.integers(1, 30),
       gamma=st.sampled_from([1.0, 0.9, 0.5]))
def test_token_advantage_matches_the_oracle(seed, batch, length, gamma):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        count = rng.integers(0, min(length, 6) + 1)
        rows.append(sorted(rng.choice(np.arange(1, length + 1), size=count, replace=False).tolist()))
    width = max(1, max(len(r) for r in rows))
    cuts = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    cut_mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows])
    rewards = torch.from_numpy(rng.normal(size=(batch, width)))
    lengths = rng.integers(0, length + 1, size=batch)
    mask = torch.from_numpy(np.arange(length)[None, :] < lengths[:, None])
    advantage = token_process_advantage(rewards, cuts, cut_mask, mask, gamma)
    for b in range(batch):
        n = len(rows[b])
        expected = oracle.token_advantage_row(rewards[b, :n].tolist(), rows[b], mask[b].tolist(), gamma)
        np.testing.assert_allclose(advantage[b].numpy(), expected, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- normalization, hand cases

# Rows: A, B in group 10; C alone in group 20; D (no entries) in group 10; E (no entries) in group 30.
NORM_REWARDS = _t([[1.0, 2.0], [3.0, 0.0], [5.0, 0.0], [9.0, 9.0], [9.0, 0.0]])
NORM_MASK = torch.tensor([[True, True], [True, False], [True, False], [False, False], [False, False]])
GROUPS = torch.tensor([10, 10, 20, 10, 30])


def test_grpo_over_entries_written_out():
    # Group 10 entries [1, 2, 3]: mean 2, unbiased std 1. C is the only entry of group 20: kept (mean 0, std 1).
    out = group_normalize_process_rewards(NORM_REWARDS, NORM_MASK, GROUPS, True, 1e-6)
    expected = [[-1 / (1 + 1e-6), 0.0], [1 / (1 + 1e-6), 0.0], [5 / (1 + 1e-6), 0.0], [0.0, 0.0], [0.0, 0.0]]
    torch.testing.assert_close(out, _t(expected), rtol=0, atol=1e-12)
    out = group_normalize_process_rewards(NORM_REWARDS, NORM_MASK, GROUPS, False)
    torch.testing.assert_close(out, _t([[-1.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), rtol=0, atol=1e-12)


def test_rloo_leaves_out_the_whole_response():
    # A's baseline: B's entries -> 3; B's baseline: A's entries -> 1.5; C has no peer with entries -> 0.
    out = rloo_process_rewards(NORM_REWARDS, NORM_MASK, GROUPS)
    torch.testing.assert_close(out, _t([[-2.0, -1.0], [1.5, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), rtol=0, atol=1e-12)


def test_batch_whitening_written_out():
    # Entries [1, 2, 3, 5]: mean 2.75, unbiased variance 8.75 / 3.
    out = batch_whiten_process_rewards(NORM_REWARDS, NORM_MASK, 1e-8)
    scale = (8.75 / 3 + 1e-8) ** -0.5
    expected = [[-1.75 * scale, -0.75 * scale], [0.25 * scale, 0.0], [2.25 * scale, 0.0], [0.0, 0.0], [0.0, 0.0]]
    torch.testing.assert_close(out, _t(expected), rtol=0, atol=1e-12)
    one = batch_whiten_process_rewards(_t([[4.0]]), torch.tensor([[True]]))
    assert one.tolist() == [[0.0]]  # a single entry: centered, no division by a zero variance
    none = batch_whiten_process_rewards(_t([[4.0]]), torch.tensor([[False]]))
    assert none.tolist() == [[0.0]]


def test_group_baseline_then_batch_whitening_written_out():
    # Group 10 entries [1, 2, 3] - 2 -> [-1, 0, 1]; C alone in group 20 keeps 5. Entries [-1, 0, 1, 5]:
    # mean 1.25, unbiased variance (2.25² + 1.25² + 0.25² + 3.75²) / 3 = 20.75 / 3.
    out = group_baseline_whiten_process_rewards(NORM_REWARDS, NORM_MASK, GROUPS, 1e-8)
    scale = (20.75 / 3 + 1e-8) ** -0.5
    expected = [[-2.25 * scale, -1.25 * scale], [-0.25 * scale, 0.0], [3.75 * scale, 0.0], [0.0, 0.0], [0.0, 0.0]]
    torch.testing.assert_close(out, _t(expected), rtol=0, atol=1e-12)
    dispatched = normalize_process_rewards(NORM_REWARDS, NORM_MASK, "reinforce_plus_plus_baseline", GROUPS, epsilon=1e-8)
    assert torch.equal(dispatched, out)


def test_single_entry_rows_follow_verls_own_estimators():
    """With one reward entry per response, entry-level normalization must equal veRL's outcome forms."""
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    verl_functional = pytest.importorskip("verl.utils.torch_functional")
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.normal(size=12))
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
    uid = np.array([f"uid-{g}" for g in groups.tolist()], dtype=object)
    assert torch.equal(group_ids_from_uids(uid), groups)
    token_rewards = torch.zeros(12, 5, dtype=F64)
    token_rewards[:, 2] = scores
    response_mask = torch.ones(12, 5, dtype=F64)
    mask = torch.ones(12, 1, dtype=torch.bool)
    for norm_by_std in (True, False):
        ours = group_normalize_process_rewards(scores[:, None], mask, groups, norm_by_std, 1e-6)[:, 0]
        theirs = core_algos.compute_grpo_outcome_advantage(token_rewards, response_mask, uid, 1e-6, norm_by_std)[0][:, 0]
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    ours = rloo_process_rewards(scores[:, None], mask, groups)[:, 0]
    theirs = core_algos.compute_rloo_outcome_advantage(token_rewards, response_mask, uid)[0][:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    ours = batch_whiten_process_rewards(scores[:, None], mask)[:, 0]
    theirs = verl_functional.masked_whiten(scores, torch.ones(12, dtype=F64))
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # One-token responses: veRL whitens its broadcast scores over tokens, i.e. over these entries.
    ours = group_baseline_whiten_process_rewards(scores[:, None], mask, groups)[:, 0]
    theirs = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(
        scores[:, None].clone(), torch.ones(12, 1, dtype=F64), uid
    )[0][:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_group_ids_from_veRL_uids():
    uids = np.array(["b", "a", "b", "c", "a"], dtype=object)
    assert group_ids_from_uids(uids).tolist() == [0, 1, 0, 2, 1]
    assert group_ids_from_uids([]).tolist() == []


def test_normalization_dispatch_errors():
    with pytest.raises(ValueError, match="normalization"):
        normalize_process_rewards(NORM_REWARDS, NORM_MASK, "gae", GROUPS)
    with pytest.raises(ValueError, match="group_ids"):
        normalize_process_rewards(NORM_REWARDS, NORM_MASK, "grpo")
    raw = normalize_process_rewards(NORM_REWARDS, NORM_MASK, "none")
    assert raw.tolist() == [[1.0, 2.0], [3.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_combine_written_out():
    outcome = _t([[1.0, 1.0, 1.0, 0.0]])
    process = _t([[0.5, -0.5, 2.0, 3.0]])
    combined = combine_advantages(outcome, process, torch.tensor([[1, 1, 1, 0]]), alpha=0.1)
    torch.testing.assert_close(combined, _t([[1.05, 0.95, 1.2, 0.0]]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="repro.alpha"):
        combine_advantages(outcome, process, torch.ones(1, 4), alpha=-0.1)


# --------------------------------------------------------------------------- the chain


def _chain_inputs(seed, batch, length, p_think_end, p_boundary, p_bad, allow_ties=True):
    ids, mask, entropy = oracle.random_batch(seed, batch, length, p_think_end=p_think_end, p_boundary=p_boundary)
    rng = np.random.default_rng(seed + 1)
    # J(c) for every cut position c = 0..T; J(0) is J_b. Half the time from a small value set (ties).
    # With EMA smoothing, exact ties stop being exact (torch's matrix EMA and the oracle's loop round
    # differently), so a tie that τ_b sees in one is a tiny difference in the other: only real-valued
    # J there, as a trained model produces.
    if rng.random() < 0.5 and allow_ties:
        j_table = rng.choice([-3.0, -2.5, -2.0, -1.0, -0.5], size=(batch, length + 1))
    else:
        j_table = -rng.random((batch, length + 1)) * 3 - 1e-3
    for b in range(batch):
        if rng.random() < p_bad:
            kind = rng.integers(0, 3)
            if kind == 0:
                j_table[b, rng.integers(1, length + 1)] = rng.choice([np.nan, np.inf, -np.inf])
            elif kind == 1:
                j_table[b, 0] = -1e-9
            else:
                j_table[b, 0] = np.nan
    groups = rng.integers(0, max(1, batch // 2), size=batch)
    valid = rng.random(batch) > p_bad / 2
    padding = rng.random(batch) < p_bad / 3
    return ids, mask, entropy, j_table, groups, valid, padding


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    batch=st.integers(1, 8),
    length=st.integers(1, 32),
    k=st.integers(1, 5),
    p_think_end=st.sampled_from([0.5, 0.9]),
    p_boundary=st.sampled_from([0.0, 0.2, 0.5]),
    p_bad=st.sampled_from([0.0, 0.4]),
    policy=st.sampled_from(["skip", "use_end"]),
    mode=st.sampled_from(["grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "none"]),
    norm_by_std=st.booleans(),
    w=st.sampled_from([0.0, 0.5]),
    beta=st.sampled_from([0.0, 0.6]),
    gamma=st.sampled_from([1.0, 0.8]),
)
def test_whole_chain_matches_the_oracle(seed, batch, length, k, p_think_end, p_boundary, p_bad, policy, mode,
                                        norm_by_std, w, beta, gamma):
    ids, mask, entropy, j_table, groups, valid, padding = _chain_inputs(
        seed, batch, length, p_think_end, p_boundary, p_bad, allow_ties=not beta
    )
    cuts, cut_mask, has_end = select_cuts(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(entropy),
                                          torch.tensor(BOUNDARY), THINK_END, k, no_think_end=policy)
    j_table_t = torch.from_numpy(j_table)
    out = compute_repro_process_advantage(
        j_table_t.gather(1, cuts), j_table_t[:, 0], cuts, cut_mask, has_end, torch.from_numpy(mask),
        group_ids=torch.from_numpy(groups), valid=torch.from_numpy(valid), padding=torch.from_numpy(padding),
        normalization=mode, stability_weight=w, stability_ema=beta, norm_adv_by_std_in_grpo=norm_by_std, gamma=gamma,
        return_token_rewards=True,
    )
    expected, counts = oracle.chain(
        ids.tolist(), mask.tolist(), entropy.tolist(), lambda b, c: [float(j_table[b, x]) for x in c],
        j_table[:, 0].tolist(), groups.tolist(), valid.tolist(), set(BOUNDARY), THINK_END, k,
        no_think_end=policy, w=w, beta=beta, mode=mode, norm_by_std=norm_by_std, gamma=gamma,
        padding=padding.tolist(), epsilon=1e-6,
    )
    np.testing.assert_allclose(out.process_advantages.numpy(), np.array(expected).reshape(batch, length), rtol=0, atol=1e-6)
    assert vars(out.counts) == counts
    assert sum(v for key, v in counts.items() if key not in ("rows", "no_think_end_used_end", "single_cut")) == batch
    for name in ("process_advantages", "scores", "process_rewards", "normalized_rewards", "token_rewards"):
        assert torch.isfinite(getattr(out, name)).all(), name
    # The placed rewards sum to the advantage at token 0 when gamma = 1 (return-to-go of the whole row).
    if gamma == 1.0:
        first_real = torch.from_numpy(mask[:, :1])
        torch.testing.assert_close(out.token_rewards.sum(dim=1) * first_real[:, 0], out.process_advantages[:, 0])


def test_every_fallback_is_counted_and_harmless():
    #     row: 0 ok, 1 no boundary, 2 no </think>, 3 empty, 4 NaN J, 5 J_b ~ 0, 6 no ground truth, 7 padding
    ids = torch.tensor([
        [1, 2, 1, 2, 7, 1], [1, 1, 1, 7, 1, 1], [1, 2, 1, 2, 1, 1], [2, 7, 2, 7, 0, 0],
        [1, 2, 1, 7, 0, 0], [1, 2, 1, 7, 0, 0], [1, 2, 1, 7, 0, 0], [1, 2, 1, 7, 0, 0],
    ])
    mask = torch.tensor([[1] * 6, [1] * 6, [1] * 6, [0] * 6] + [[1, 1, 1, 1, 0, 0]] * 4)
    entropy = torch.rand(8, 6)
    cuts, cut_mask, has_end = select_cuts(ids, mask, entropy, torch.tensor(BOUNDARY), THINK_END, 4)
    j_cuts = -torch.rand(cuts.shape, dtype=F64) - 0.1
    j_cuts[4, 0] = float("nan")
    j_base = torch.full((8,), -2.0, dtype=F64)
    j_base[5] = -1e-8
    valid = torch.tensor([True] * 6 + [False, True])
    padding = torch.tensor([False] * 7 + [True])
    out = compute_repro_process_advantage(j_cuts, j_base, cuts, cut_mask, has_end, mask,
                                          group_ids=torch.zeros(8, dtype=torch.long),
                                          valid=valid, padding=padding)
    assert out.counts == ReproFallbackCounts(rows=8, with_process_reward=2, padding=1, empty_response=1, no_ground_truth=1,
                                             no_think_end=1, nonfinite_j=1, j_base_near_zero=1, single_cut=1)
    assert out.has_process_reward.tolist() == [True, True] + [False] * 6
    assert (out.process_advantages[2:] == 0).all() and torch.isfinite(out.process_advantages).all()
    assert out.counts.as_metrics()["repro/nonfinite_j"] == 1.0
    # Under use_end the truncated row is scored, and counted as such.
    cuts, cut_mask, has_end = select_cuts(ids, mask, entropy, torch.tensor(BOUNDARY), THINK_END, 4, no_think_end="use_end")
    out = compute_repro_process_advantage(-torch.rand(cuts.shape) - 0.1, torch.full((8,), -2.0), cuts, cut_mask, has_end, mask,
                                          group_ids=torch.zeros(8, dtype=torch.long), valid=valid, padding=padding)
    assert out.counts.no_think_end == 0 and out.counts.no_think_end_used_end == 1
    assert out.has_process_reward[2] and (out.process_advantages[2] != 0).any()


def test_rows_without_process_reward_do_not_move_the_group_statistics():
    ids = torch.tensor([[1, 2, 1, 2, 7, 1]] * 3)
    mask = torch.ones(3, 6)
    cuts, cut_mask, has_end = select_cuts(ids, mask, torch.rand(3, 6), torch.tensor(BOUNDARY), THINK_END, 4)
    j_cuts = -torch.rand(cuts.shape, dtype=F64) - 0.1
    kwargs = dict(group_ids=torch.zeros(3, dtype=torch.long), normalization="grpo")
    j_bad = j_cuts.clone()
    j_bad[2, 1] = float("inf")
    with_bad = compute_repro_process_advantage(j_bad, torch.full((3,), -2.0, dtype=F64), cuts, cut_mask, has_end, mask, **kwargs)
    without = compute_repro_process_advantage(j_cuts[:2], torch.full((2,), -2.0, dtype=F64), cuts[:2], cut_mask[:2], has_end[:2],
                                              mask[:2], group_ids=torch.zeros(2, dtype=torch.long), normalization="grpo")
    torch.testing.assert_close(with_bad.process_advantages[:2], without.process_advantages)
    assert (with_bad.process_advantages[2] == 0).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_low_precision_chain_within_stated_tolerance(dtype, tolerance):
    """J in float32: |ΔÃ| <= 1e-5 of float64; J in bfloat16: <= 5e-2 (rounding of J shifts S by
    <= 1e-2 per cut, amplified by the group std normalization). Entropy in the input dtype."""
    ids, mask, entropy = oracle.random_batch(11, 64, 48, p_think_end=0.9, p_boundary=0.3)
    rng = np.random.default_rng(5)
    jb = -(1.0 + rng.random(64))
    j_table = jb[:, None] * (0.1 + 0.05 * np.argsort(rng.random((64, 49)), axis=1) / 3)
    j_table[:, 0] = jb
    cuts, cut_mask, has_end = select_cuts(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(entropy).to(dtype),
                                          torch.tensor(BOUNDARY), THINK_END, 5)
    groups = torch.arange(64) // 8

    def run(table):
        table = torch.from_numpy(j_table).to(table)
        return compute_repro_process_advantage(table.gather(1, cuts), table[:, 0], cuts, cut_mask, has_end,
                                               torch.from_numpy(mask), group_ids=groups).process_advantages

    reference, low = run(F64), run(dtype)
    assert low.dtype == torch.float32
    assert (low.double() - reference).abs().max().item() <= tolerance
