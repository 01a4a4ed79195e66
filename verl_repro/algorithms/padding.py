"""Token lists to a padded ``[N, L]`` batch: the one padding helper of the package."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_token_lists(sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, L] long, mask [N, L] bool)`` of ``N`` token lists, ``L`` the longest (at least 1).

    Right padding by default (responses, scoring sequences); ``left=True`` pads on the left, so that
    generation continues every row at the same column (prompts). ``mask`` is True on real tokens.
    """
    lengths = torch.tensor([len(tokens) for tokens in sequences], dtype=torch.long)
    width = max(int(lengths.max()) if len(sequences) else 0, 1)
    columns = torch.arange(width)
    mask = columns >= (width - lengths).unsqueeze(1) if left else columns < lengths.unsqueeze(1)
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    # a boolean mask enumerates positions row by row, left to right: each row's tokens in order
    ids[mask] = torch.tensor([int(token) for tokens in sequences for token in tokens], dtype=torch.long)
    return ids, mask
