"""CorR-PO's pure maths: the regularized reward and its group-relative advantage, by hand."""

from __future__ import annotations

import pytest
import torch

from verl_repro.algorithms import corrpo_advantages, corrpo_rewards


def test_regularized_reward_by_hand():
    outcome = torch.tensor([1.0, 0.0, 1.0])
    rho = torch.tensor([-0.5, 0.2, 0.0])
    rewards, regularizer = corrpo_rewards(outcome, rho, coef=0.1, outcome_weight=2.0)
    torch.testing.assert_close(rewards, torch.tensor([2.05, -0.02, 2.0]))
    torch.testing.assert_close(regularizer, torch.tensor([-0.05, 0.02, 0.0]))
    verifier_free, _ = corrpo_rewards(outcome, rho, coef=1.0, outcome_weight=0.0)
    torch.testing.assert_close(verifier_free, -rho)


def test_group_advantages_by_hand():
    rewards = torch.tensor([3.0, 1.0, 5.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    groups = torch.tensor([0, 0, 1, 1])
    grpo = corrpo_advantages(rewards, mask, groups, normalization="grpo", epsilon=0.0, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(grpo[:, 0], torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64))
    assert (grpo[mask == 0] == 0).all()
    rloo = corrpo_advantages(rewards, mask, groups, normalization="rloo")
    torch.testing.assert_close(rloo[:, 0], torch.tensor([2.0, -2.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="normalization"):
        corrpo_advantages(rewards, mask, groups, normalization="ppo")
