"""``pad_token_lists``: the one padding helper, right and left."""

from __future__ import annotations

import torch

from verl_repro.algorithms import pad_token_lists


def test_right_padding_hand_case():
    ids, mask = pad_token_lists([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_left_padding_hand_case():
    ids, mask = pad_token_lists([[5, 6, 7], [8]], pad_id=-1, left=True)
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_no_tokens_still_gives_one_column():
    ids, mask = pad_token_lists([[], []], pad_id=3)
    assert ids.tolist() == [[3], [3]] and not mask.any()
    ids, mask = pad_token_lists([], pad_id=3)
    assert ids.shape == (0, 1)
