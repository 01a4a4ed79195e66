"""The prefix-shared layout by hand, token by token, and what it refuses."""

from __future__ import annotations

import pytest
import torch

from verl_repro.scoring.layout import build_prefix_shared_batch, naive_sequences


def test_layout_hand_case():
    # Row 0: prompt [10, 11], response [20, 21, 22, 23]; cuts 1 and 3; answer [90, 91].
    # Row 1: prompt [12], response [24, 25]; cut 2 only; answer [92].
    batch = build_prefix_shared_batch(
        context_ids=torch.tensor([10, 11, 20, 21, 22, 23, 12, 24, 25]),
        context_offsets=torch.tensor([0, 6, 9]),
        prompt_lengths=torch.tensor([2, 1]),
        cuts=torch.tensor([[1, 3], [2, 0]]),
        slot_valid=torch.tensor([[True, True, True], [True, True, False]]),
        answer_ids=torch.tensor([90, 91, 92]),
        answer_lengths=torch.tensor([2, 1]),
    )
    # Row 0: prefix = prompt + response[:3] (L = 5); copies start at s = P + c - 1 = 1, 2, 4.
    row0 = [10, 11, 20, 21, 22, 11, 90, 91, 20, 90, 91, 22, 90, 91]
    pos0 = [0, 1, 2, 3, 4, 1, 2, 3, 2, 3, 4, 4, 5, 6]
    # Row 1: prefix = [12, 24, 25] (L = 3); copies start at s = 0 (base) and 2.
    row1 = [12, 24, 25, 12, 92, 25, 92]
    pos1 = [0, 1, 2, 0, 1, 2, 3]
    assert batch.input_ids.tolist() == row0 + row1
    assert batch.position_ids.tolist() == pos0 + pos1
    assert batch.prefix_lengths.tolist() == [5, 3]
    assert batch.copy_lengths.tolist() == [3, 2]
    assert batch.copy_starts.tolist() == [1, 2, 4, 0, 2]
    assert batch.copy_slot.tolist() == [0, 1, 2, 0, 1]
    assert batch.copy_row.tolist() == [0, 0, 0, 1, 1]
    # Scored positions: each copy's first A tokens; the labels are the answers.
    assert batch.scored_index.tolist() == [5, 6, 8, 9, 11, 12, 14 + 3, 14 + 5]
    assert batch.labels.tolist() == [90, 91, 90, 91, 90, 91, 92, 92]
    assert batch.scored_copy.tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    assert batch.num_tokens == 14 + 7


def test_naive_expansion_hand_case():
    batch = build_prefix_shared_batch(
        context_ids=torch.tensor([10, 11, 20, 21, 22, 23]),
        context_offsets=torch.tensor([0, 6]),
        prompt_lengths=torch.tensor([2]),
        cuts=torch.tensor([[1, 3]]),
        slot_valid=torch.ones(1, 3, dtype=torch.bool),
        answer_ids=torch.tensor([90, 91]),
        answer_lengths=torch.tensor([2]),
    )
    ids, lengths = naive_sequences(batch)
    # prompt + response[:c] + answer, for c = 0, 1, 3.
    assert lengths.tolist() == [4, 5, 7]
    assert ids.tolist() == [10, 11, 90, 91] + [10, 11, 20, 90, 91] + [10, 11, 20, 21, 22, 90, 91]


@pytest.mark.parametrize(
    "prompt_lengths, cuts, message",
    [
        (torch.tensor([0]), torch.tensor([[2]]), "no prompt token"),
        (torch.tensor([2]), torch.tensor([[9]]), "beyond its 8 response tokens"),
    ],
)
def test_bad_layout_inputs_name_the_row(prompt_lengths, cuts, message):
    with pytest.raises(ValueError, match=message):
        build_prefix_shared_batch(
            torch.arange(10), torch.tensor([0, 10]), prompt_lengths, cuts,
            torch.ones(1, 2, dtype=torch.bool), torch.tensor([5]), torch.tensor([1]),
        )
