"""Step boundaries and entropy top-k cut selection (docs/repro.md, "RePro maths", "Bad input")."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.algorithms import boundary_token_ids, select_cuts, think_end_token_id
from verl_repro.algorithms import reference as oracle



BOUNDARY = (2, 3)
THINK_END = 7


# --------------------------------------------------------------------------- boundary ids


def _byte_level_tokenizer():
    """A real HF fast tokenizer with hand-chosen merges: ``".\\n\\n"``, ``"?\\n\\n"``, ``"!\\n"`` ...

    Byte-level BPE spells "\\n" as "Ċ", so matching raw token strings would find nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ċ", "Ċ"), (".", "Ċ"), (".Ċ", "Ċ"), ("?", "Ċ"), ("?Ċ", "Ċ"), ("!", "Ċ"), ("Ċ", "x"), ("a", "b")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", additional_special_tokens=["</think>"])
    return fast


def test_boundary_ids_include_merged_tokens():
    tokenizer = _byte_level_tokenizer()
    ids = boundary_token_ids(tokenizer).tolist()
    texts = {tokenizer.decode([i]) for i in ids}
    assert texts == {"\n\n", ".\n", ".\n\n", "?\n", "?\n\n"}
    # Not boundaries: a lone newline, "!\n" (not in the pattern set), a token merely containing "\n".
    for text in ["\n", "!\n", "\nx"]:
        (token_id,) = tokenizer.encode(text, add_special_tokens=False)
        assert token_id not in ids
    # The raw token strings do not contain "\n" at all: decoding is what finds them.
    assert not any(t.endswith("\n") for t in tokenizer.convert_ids_to_tokens(ids))
    assert boundary_token_ids(tokenizer, patterns=("!\n",)).tolist() == tokenizer.encode("!\n", add_special_tokens=False)


def test_boundary_ids_on_the_shared_tiny_tokenizer(tiny_tokenizer):
    ids = set(boundary_token_ids(tiny_tokenizer).tolist())
    brute_force = {i for i in range(len(tiny_tokenizer)) if tiny_tokenizer.decode([i]).endswith(("\n\n", ".\n", "?\n"))}
    assert ids == brute_force
    assert {tiny_tokenizer.decode([i]) for i in ids} >= {".\n", ".\n\n", "\n\n"}


class _CountingTokenizer:
    """Minimal stand-in: ``__len__`` + ``decode`` only (no ``batch_decode``), counting calls."""

    def __init__(self, texts):
        self.texts = texts
        self.decode_calls = 0

    def __len__(self):
        return len(self.texts)

    def decode(self, ids):
        self.decode_calls += 1
        return "".join(self.texts[i] for i in ids)


def test_boundary_ids_decode_each_id_once_and_cache_per_tokenizer():
    tokenizer = _CountingTokenizer(["a", "b.\n", "\n\n", "c", "?\n", "\n", "x?\n\n"])
    assert boundary_token_ids(tokenizer).tolist() == [1, 2, 4, 6]
    assert tokenizer.decode_calls == 7
    assert boundary_token_ids(tokenizer).tolist() == [1, 2, 4, 6]
    assert tokenizer.decode_calls == 7  # cached
    assert boundary_token_ids(tokenizer, patterns=("\n",)).tolist() == [1, 2, 4, 5, 6]
    other = _CountingTokenizer(["\n\n", "a"])
    assert boundary_token_ids(other).tolist() == [0]
    with pytest.raises(ValueError, match="non-empty"):
        boundary_token_ids(tokenizer, patterns=("",))


def test_think_end_token_id_comes_from_the_tokenizer(tiny_tokenizer):
    token_id = think_end_token_id(tiny_tokenizer)
    assert tiny_tokenizer.decode([token_id]) == "</think>"
    with pytest.raises(ValueError, match="repro.think_end_token"):
        think_end_token_id(tiny_tokenizer, "</not-a-token>")


def test_cuts_on_real_tokenized_text(tiny_tokenizer):
    text = "<think>\nFirst we add 3 and 4.\n\nIs 7 right?\nSo the total is 7.\n</think>\n\nThe answer is 7."
    ids = torch.tensor([tiny_tokenizer.encode(text, add_special_tokens=False)])
    end_id = think_end_token_id(tiny_tokenizer)
    cuts, cut_mask, has_end = select_cuts(
        ids, torch.ones_like(ids), torch.ones(ids.shape), boundary_token_ids(tiny_tokenizer), end_id, 10
    )
    assert has_end.tolist() == [True]
    prefixes = [tiny_tokenizer.decode(ids[0, :c]) for c in cuts[0][cut_mask[0]].tolist()]
    # "<think>" is followed by a lone "\n" token, which does not end a step. The step ending in
    # ".\n" right before </think> gives no cut of its own (c = e): the e + 1 cut follows.
    assert prefixes == [
        "<think>\nFirst we add 3 and 4.\n\n",
        "<think>\nFirst we add 3 and 4.\n\nIs 7 right?\n",
        "<think>\nFirst we add 3 and 4.\n\nIs 7 right?\nSo the total is 7.\n</think>",
    ]


# --------------------------------------------------------------------------- hand cases


def _select(ids, mask, entropy, k, **kwargs):
    return select_cuts(
        torch.tensor(ids), torch.tensor(mask), torch.tensor(entropy, dtype=torch.float64),
        torch.tensor(BOUNDARY), THINK_END, k, **kwargs,
    )


def test_top_k_by_entropy_of_the_token_at_the_cut():
    #         t:   0    1    2    3    4    5    6    7    8    9
    ids = [[1, 2, 1, 3, 1, 2, 1, 7, 2, 0]]
    ent = [[0.0, 0.0, 0.9, 0.0, 0.1, 0.0, 0.5, 0.0, 9.0, 9.0]]
    # Boundaries before </think> (e = 7): t = 1, 3, 5 -> cuts 2, 4, 6 with entropies 0.9, 0.1, 0.5.
    # The boundary at t = 8 is after </think> and never a candidate.
    cuts, cut_mask, has_end = _select(ids, [[1] * 10], ent, k=2)
    assert cuts.tolist() == [[2, 6, 8]] and cut_mask.all() and has_end.tolist() == [True]
    cuts, cut_mask, _ = _select(ids, [[1] * 10], ent, k=1)
    assert cuts.tolist() == [[2, 8]]
    cuts, cut_mask, _ = _select(ids, [[1] * 10], ent, k=10)  # fewer candidates than k: all kept
    assert cuts.tolist() == [[2, 4, 6, 8]]


def test_equal_entropies_prefer_the_earlier_cut_and_no_cut_at_e():
    ids = [[2, 1, 2, 1, 2, 7, 1]]
    ent = [[0.0, 0.3, 0.0, 0.3, 0.0, 0.3, 0.0]]
    cuts, _, _ = _select(ids, [[1] * 7], ent, k=2)
    assert cuts.tolist() == [[1, 3, 6]]
    # t = e - 1 = 4 is a boundary whose cut would be c = e = 5, right before </think>, with the
    # highest entropy: never a candidate, so k = 1 takes the next best (c = 3), then e + 1.
    ent = [[0.0, 0.1, 0.0, 0.2, 0.0, 0.3, 0.0]]
    cuts, _, _ = _select(ids, [[1] * 7], ent, k=1)
    assert cuts.tolist() == [[3, 6]]
    cuts, _, _ = _select(ids, [[1] * 7], ent, k=5)
    assert cuts.tolist() == [[1, 3, 6]]


def test_no_boundary_gives_the_end_of_think_cut_only():
    cuts, cut_mask, has_end = _select([[1, 1, 1, 7, 2]], [[1] * 5], [[0.0] * 5], k=3)
    assert cuts.tolist() == [[4]] and cut_mask.tolist() == [[True]] and has_end.tolist() == [True]


def test_missing_think_end_skip_or_use_end():
    ids = [[2, 1, 2, 1, 2, 1], [1, 2, 7, 0, 0, 0]]
    mask = [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]
    ent = [[0.0, 0.5, 0.0, 0.4, 0.0, 0.3]] * 2
    cuts, cut_mask, has_end = _select(ids, mask, ent, k=5)
    # Row 1: its only boundary (t = 1) sits right before </think> (e = 2): no cut of its own.
    assert has_end.tolist() == [False, True]
    assert cut_mask.tolist() == [[False], [True]] and cuts.tolist() == [[0], [3]]
    cuts, cut_mask, has_end = _select(ids, mask, ent, k=5, no_think_end="use_end")
    # Row 0: e = last real token (t = 4); boundaries t = 0, 2 -> cuts 1, 3 (< e); end cut 5 = length.
    assert has_end.tolist() == [False, True]
    assert cuts.tolist() == [[1, 3, 5], [3, 0, 0]] and cut_mask.tolist() == [[True] * 3, [True, False, False]]


def test_masked_tokens_never_count_and_empty_rows_get_nothing():
    # Padding holds boundary / </think> ids; an all-masked row; negative padding ids (-100).
    ids = [[1, 2, 1, 7, 2, 7], [2, 7, 2, 7, 2, 7], [1, 2, 7, -100, -100, -100]]
    mask = [[1, 0, 1, 1, 0, 0], [0] * 6, [1, 1, 1, 0, 0, 0]]
    ent = [[1.0] * 6] * 3
    for policy in ("skip", "use_end"):
        cuts, cut_mask, has_end = _select(ids, mask, ent, k=4, no_think_end=policy)
        assert has_end.tolist() == [True, False, True]
        assert cuts[0][cut_mask[0]].tolist() == [4]  # the masked boundary at t = 1 is ignored
        assert not cut_mask[1].any()
        assert cuts[2][cut_mask[2]].tolist() == [3]  # its boundary at t = 1 is right before </think>


def test_nonfinite_entropy_ranks_lowest_but_stays_a_candidate():
    ids = [[2, 1, 2, 1, 2, 1, 7]]
    ent = [[0.0, float("nan"), 0.0, 0.2, 0.0, float("inf"), 0.0]]
    cuts, _, _ = _select(ids, [[1] * 7], ent, k=1)
    assert cuts.tolist() == [[3, 7]]
    cuts, _, _ = _select(ids, [[1] * 7], ent, k=3)
    assert cuts.tolist() == [[1, 3, 5, 7]]


def test_bad_arguments_name_the_key():
    args = (torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([2]), 7)
    with pytest.raises(ValueError, match="repro.num_segments"):
        select_cuts(*args, 0)
    with pytest.raises(ValueError, match="repro.no_think_end"):
        select_cuts(*args, 2, no_think_end="drop")
    with pytest.raises(ValueError, match="shape"):
        select_cuts(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4), torch.zeros(1, 3), torch.tensor([2]), 7, 2)


def test_zero_length_batch():
    cuts, cut_mask, has_end = select_cuts(
        torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0), torch.zeros(3, 0), torch.tensor([2]), 7, 2
    )
    assert cuts.shape == (3, 1) and not cut_mask.any() and not has_end.any()


# --------------------------------------------------------------------------- against the oracle


def _oracle_cuts(ids, mask, entropy, k, policy):
    rows = [oracle.select_cuts_row(ids[b].tolist(), mask[b].tolist(), entropy[b].tolist(), set(BOUNDARY), THINK_END, k, policy)
            for b in range(ids.shape[0])]
    return [r[0] for r in rows], [r[1] for r in rows]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 6),
    length=st.integers(1, 40),
    k=st.integers(1, 6),
    p_think_end=st.sampled_from([0.0, 0.6, 1.0]),
    p_boundary=st.sampled_from([0.0, 0.1, 0.4, 0.9]),
    entropy_ties=st.booleans(),
    p_nan=st.sampled_from([0.0, 0.2]),
    policy=st.sampled_from(["skip", "use_end"]),
)
def test_select_cuts_matches_the_oracle(seed, batch, length, k, p_think_end, p_boundary, entropy_ties, p_nan, policy):
    ids, mask, entropy = oracle.random_batch(seed, batch, length, p_think_end=p_think_end, p_boundary=p_boundary,
                                             entropy_ties=entropy_ties, p_nan_entropy=p_nan)
    cuts, cut_mask, has_end = select_cuts(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(entropy),
                                          torch.tensor(BOUNDARY), THINK_END, k, no_think_end=policy)
    expected, expected_has_end = _oracle_cuts(ids, mask, entropy, k, policy)
    assert [cuts[b][cut_mask[b]].tolist() for b in range(batch)] == expected
    assert has_end.tolist() == expected_has_end
    for row in expected:  # never c = e: every cut before the last (e + 1) is below e
        assert all(c < row[-1] - 1 for c in row[:-1])
    assert cuts.shape[1] == max(1, max(len(c) for c in expected))
    assert (cuts[~cut_mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_entropy_selects_the_same_cuts(dtype):
    ids, mask, entropy = oracle.random_batch(7, 32, 64, p_boundary=0.4)
    # Values exactly representable in every dtype, so the ranking itself is dtype-independent.
    entropy = np.round(entropy * 8) / 8
    reference = select_cuts(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(entropy),
                            torch.tensor(BOUNDARY), THINK_END, 4)
    low = select_cuts(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(entropy).to(dtype),
                      torch.tensor(BOUNDARY), THINK_END, 4)
    for a, b in zip(reference, low):
        assert torch.equal(a, b)


def test_the_maths_layer_imports_torch_only():
    """docs/development.md, layers: verl_repro.algorithms may import torch and nothing heavier (no veRL, no HF)."""
    import subprocess

    code = (
        "import sys, verl_repro.algorithms\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'verl', 'transformers', 'tokenizers', 'scipy', 'triton', 'ray'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
