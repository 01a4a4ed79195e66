"""The tree attention: its mask by hand, no ``L × L`` mask, the model's own attention restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from verl_repro.scoring import attention
from verl_repro.scoring import cuts as scoring_cuts
from verl_repro.scoring.attention import tree_copy_mask
from verl_repro.scoring.layout import build_prefix_shared_batch


def test_tree_mask_hand_case():
    # L = 4, copies of 2 tokens starting at positions 1 and 3.
    mask = tree_copy_mask(4, 2, torch.tensor([1, 3])).int()
    expected = torch.tensor(
        [
            # prefix keys  | copy keys
            [1, 0, 0, 0, 1, 0, 0, 0],
            [1, 0, 0, 0, 1, 1, 0, 0],
            [1, 1, 1, 0, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_no_square_mask_and_logits_only_at_answers(monkeypatch, random_causal_lm):
    """Attention masks are copies × (prefix + copies); the L-token prefix runs mask-free (causal kernel)."""
    model = random_causal_lm("qwen2", seed=6)
    prefix, answer, cut_count = 2000, 6, 21
    seen_masks, logits_rows = [], []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        seen_masks.append((query.shape[-2], key.shape[-2], None if attn_mask is None else attn_mask.numel(), is_causal))
        return real_sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    model.lm_head.register_forward_hook(lambda module, args, output: logits_rows.append(output.shape[-2]))
    responses = torch.randint(0, 97, (1, prefix - 2))
    cuts = torch.linspace(1, prefix - 2, cut_count - 1).long().unsqueeze(0)
    batch = build_prefix_shared_batch(
        torch.cat([torch.tensor([1, 2]), responses[0]]), torch.tensor([0, prefix]), torch.tensor([2]), cuts,
        torch.ones(1, cut_count, dtype=torch.bool), torch.arange(answer), torch.tensor([answer]),
    )
    scoring_cuts._tree_log_probs(model, batch, 1.0)
    copies = cut_count * (answer + 1)
    assert seen_masks == [(prefix, prefix, None, True), (copies, prefix + copies, copies * (prefix + copies), False)] * 2
    assert logits_rows == [cut_count * answer]


def test_attention_implementation_restored_after_error(random_causal_lm):
    model = random_causal_lm("qwen2", seed=7)
    batch = build_prefix_shared_batch(
        torch.arange(10), torch.tensor([0, 10]), torch.tensor([2]), torch.tensor([[3]]),
        torch.ones(1, 2, dtype=torch.bool), torch.tensor([5]), torch.tensor([1]),
    )
    batch.input_ids[0] = 10_000  # out of the vocabulary: the embedding raises mid-forward
    with pytest.raises(IndexError):
        scoring_cuts._tree_log_probs(model, batch, 1.0)
    assert model.config._attn_implementation == "sdpa"
    assert attention._ACTIVE_PLAN.get() is None
