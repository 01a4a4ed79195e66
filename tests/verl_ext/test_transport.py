"""How scoring sequences travel to veRL's workers: the DP layout, the backend's log-probs against a
direct forward, and the prefix-shared samples' round trip."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.scoring.layout import build_prefix_shared_batch, prefix_shared_batch_from_packed, segment_positions
from verl_repro.verl_ext import transport
from verl_repro.verl_ext.transport import LogProbBackend, ScoringSequences, dp_layout


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    dp_size=st.integers(1, 5),
    micro_batch_size=st.integers(1, 6),
)
def test_dp_layout_covers_each_sequence_once_in_whole_micro_batches(lengths, dp_size, micro_batch_size):
    lengths = torch.tensor(lengths)
    order, is_padding, micro = dp_layout(lengths, dp_size, micro_batch_size)
    assert 1 <= micro <= micro_batch_size
    assert order.numel() % (dp_size * micro) == 0
    assert sorted(order[~is_padding].tolist()) == list(range(lengths.numel()))
    per_rank = order.numel() // dp_size
    # Padding is bounded: fewer padding slots per rank than micro-batches.
    assert per_rank - (-(-lengths.numel() // dp_size)) < per_rank // micro
    tokens = torch.where(is_padding, 0, lengths[order]).reshape(dp_size, per_rank).sum(dim=1)
    assert int(tokens.max() - tokens.min()) <= int(lengths.max())


def test_dp_layout_hand_case():
    # Lengths 10, 9, .., 5 over 2 ranks (snake order): rank0 = 10, 7, 6; rank1 = 9, 8, 5.
    order, is_padding, micro = dp_layout(torch.tensor([10, 9, 8, 7, 6, 5]), dp_size=2, micro_batch_size=3)
    assert micro == 3 and not is_padding.any()
    assert order.tolist() == [0, 3, 4, 1, 2, 5]
    # Lengths 4, 6, 5: rank0 = [6, pad], rank1 = [5, 4]; the pad repeats the shortest (index 0).
    order, is_padding, micro = dp_layout(torch.tensor([4, 6, 5]), dp_size=2, micro_batch_size=8)
    assert micro == 2 and order.tolist() == [1, 0, 2, 0] and is_padding.tolist() == [False, True, False, False]


# ----------------------------------------------------------------------------- through the engine


def _direct_answer_log_probs(model, sequences: ScoringSequences, temperature: float) -> list[torch.Tensor]:
    out = []
    for n in range(len(sequences)):
        start, stop = int(sequences.offsets[n]), int(sequences.offsets[n + 1])
        ids = sequences.input_ids[start:stop]
        with torch.no_grad():
            logits = model(ids.unsqueeze(0)).logits[0].float() / temperature
        log_probs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:].unsqueeze(1)).squeeze(1)
        out.append(log_probs[-int(sequences.answer_lengths[n]):])
    return out


@pytest.mark.parametrize("use_remove_padding", [True, False])
def test_backend_answer_log_probs_match_direct_forward(tiny_model, make_worker_group, use_remove_padding):
    torch.manual_seed(0)
    lengths = torch.tensor([9, 14, 6, 11, 7])  # odd count over 2 ranks: padded and unpadded
    answer_lengths = torch.tensor([3, 1, 2, 5, 4])
    ids = torch.randint(5, 300, (int(lengths.sum()),))
    positions = torch.cat([torch.arange(int(n)) for n in lengths])
    sequences = ScoringSequences(ids, positions, lengths, answer_lengths)
    group = make_worker_group(dp_size=2, use_remove_padding=use_remove_padding)
    backend = LogProbBackend(group.compute_ref_log_prob, dp_size=2, temperature=0.7)
    got = backend.answer_log_probs(sequences, micro_batch_size=2)

    expected = torch.cat(_direct_answer_log_probs(tiny_model, sequences, temperature=0.7))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    (method, sent), = group.received
    # 5 sequences over 2 ranks: 3 per rank → 2 micro-batches of 2 → 8 slots, 3 of them padding.
    assert method == "compute_ref_log_prob" and len(sent) == 8
    assert group.rank_sizes == [[4, 4]]
    assert sent["micro_batch_size_per_gpu"] == 2 and sent["temperature"] == 0.7


# ----------------------------------------------------------------------------- prefix-shared samples


def test_worker_batch_round_trip_hand_case():
    """transport_tensors → worker-side rebuild gives back the same layout; slots map back to samples."""
    layout = build_prefix_shared_batch(
        torch.tensor([10, 11, 20, 21, 22, 23, 12, 24, 25]), torch.tensor([0, 6, 9]), torch.tensor([2, 1]),
        torch.tensor([[1, 3], [2, 0]]), torch.tensor([[True, True, True], [True, True, False]]),
        torch.tensor([90, 91, 92]), torch.tensor([2, 1]),
    )
    order = torch.tensor([1, 0, 1])  # slot 2 repeats sample 1 (DP layout padding)
    sent = transport.transport_tensors(layout, order)
    rebuilt = prefix_shared_batch_from_packed(
        sent["input_ids"].values(), sent["position_ids"].values(), sent["input_ids"].offsets().diff(),
        sent[transport.PREFIX_LENGTHS_KEY], sent[transport.COPY_LENGTHS_KEY],
    )
    assert rebuilt.copy_starts.tolist() == [0, 2, 1, 2, 4, 0, 2]
    assert rebuilt.copy_slot.tolist() == [0, 1, 0, 1, 2, 0, 1]
    assert sent["loss_mask"].values().sum() == rebuilt.scored_index.numel() == 2 * 8 - 6
    # Log-prob of token p + 1 at position p: encode (slot, position) and read it back per scored token.
    lengths = sent["input_ids"].offsets().diff()
    owner, position = segment_positions(lengths)
    fake = transport.jagged((owner * 100 + position).float(), lengths)
    values = transport.scored_from_slots(layout, order, torch.tensor([False, False, True]), fake)
    local = layout.scored_index - torch.tensor([0] * 14 + [14] * 7)[layout.scored_index]
    slot = torch.tensor([1] * 14 + [0] * 7)[layout.scored_index]
    assert values.tolist() == (slot * 100 + local).float().tolist()
    assert not math.isnan(float(values.sum()))
