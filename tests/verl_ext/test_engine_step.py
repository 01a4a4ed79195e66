"""``repro.scoring_mode=prefix_shared`` through veRL's worker path equals ``naive`` through the same path.

veRL's own FSDP engine code runs on CPU around the tiny checkpoint (``infer_batch`` →
``prepare_micro_batches`` → ``forward_step`` → ``prepare_model_inputs`` / ``prepare_model_outputs``
→ ``postprocess_batch_func``), split over DP ranks with veRL's ``BatchData.chunk`` / ``concat``.
The engine's ``forward_step`` carries the hook the ``repro`` engine vendor needs
(``prefix_shared_forward_step``); a stock engine without it must be detected and scored naive.
Not exercised on CPU: Ray, FSDP sharding, bf16 autocast, flash-attention.
"""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from verl_repro.algorithms import step_boundaries, think_end_token_id
from verl_repro.config import ReproConfig
from verl_repro.verl_ext import transport

STEPS = ["First, we add 3 and 4 to get 7.\n", "Wait, let me re-check the sum.\n\n", "So the total is 7.\n", "Is 3 larger than 4?\n"]


@pytest.fixture(scope="module")
def engine_classes(cpu_engine_class):
    """(stock engine, engine with the prefix-shared hook), both veRL's FSDP engine code on CPU."""
    from verl_repro.verl_ext.engine_step import is_prefix_shared_batch, prefix_shared_forward_step

    class HookedCpuEngine(cpu_engine_class):
        # The hook the repro engine vendor needs in its forward_step (verl_repro/verl_ext/engine.py).
        def forward_step(self, micro_batch, loss_function, forward_only):
            if is_prefix_shared_batch(micro_batch):
                return prefix_shared_forward_step(self, micro_batch, loss_function, forward_only, super().forward_step)
            return super().forward_step(micro_batch, loss_function, forward_only)

    return cpu_engine_class, HookedCpuEngine


class WorkerGroup:
    """Stands in for a ``RayWorkerGroup``: DP split with veRL's ``BatchData``, worker defaults, engine."""

    def __init__(self, engine, dp_size: int, use_remove_padding: bool = True):
        self.engine, self.dp_size, self.use_remove_padding = engine, dp_size, use_remove_padding
        self.sent = []

    def compute_ref_log_prob(self, data):
        from verl.protocol import BatchData
        from verl.utils import tensordict_utils as tu

        self.sent.append(data)
        outputs = []
        for chunk in BatchData(data).chunk(chunks=self.dp_size):
            chunk = pickle.loads(pickle.dumps(chunk))  # what Ray's transport does
            if chunk.is_locked:
                chunk.unlock_()
            tu.pop(chunk, key="no_lora_adapter", default=False)
            for key, value in dict(use_remove_padding=self.use_remove_padding, use_fused_kernels=False).items():
                if key not in chunk.keys():
                    tu.assign_non_tensor(chunk, **{key: value})
            output = self.engine.infer_batch(chunk, loss_function=None)
            outputs.append(tu.get_tensordict(tensor_dict=output["model_output"], non_tensor_dict={"metrics": {}}).cpu())
        return BatchData(outputs).concat()


def _rollout(tokenizer, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    texts = []
    for count in (3, 9, 15, 6):
        picks = torch.randint(0, len(STEPS), (count,), generator=generator).tolist()
        texts.append("".join(STEPS[i] for i in picks) + "</think>\n\nThe answer is \\boxed{7}.")
    texts[3] = texts[3].replace("</think>", "")  # truncated: not scored under no_think_end=skip
    prompts = [torch.tensor(tokenizer(f"<|im_start|>user\nWhat is 3 plus {k}?<|im_end|>\n<|im_start|>assistant\n<think>\n")["input_ids"]) for k in range(4)]
    responses = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]) for t in texts]
    width = max(r.numel() for r in responses)
    response_ids = torch.full((4, width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(4, width, dtype=torch.long)
    for row, response in enumerate(responses):
        response_ids[row, : response.numel()] = response
        response_mask[row, : response.numel()] = 1
    return dict(
        input_ids=torch.nested.as_nested_tensor([torch.cat([p, r]) for p, r in zip(prompts, responses)], layout=torch.jagged),
        prompt_lengths=torch.tensor([p.numel() for p in prompts]),
        responses=response_ids,
        response_mask=response_mask,
        entropy=torch.rand(4, width, generator=generator) * response_mask,
        reward_models=[{"ground_truth": truth} for truth in ("7", "12", "\\frac{1}{2}", "7")],
        padding=torch.zeros(4, dtype=torch.bool),
    )


def _score(tokenizer, group, mode: str, dp_size: int):
    from verl_repro.verl_ext.scoring import score_ground_truth
    from verl_repro.verl_ext.transport import LogProbBackend

    config = ReproConfig(num_segments=12, scoring_mode=mode, scoring_micro_batch_size=2).validate()
    backend = LogProbBackend(group.compute_ref_log_prob, dp_size=dp_size, temperature=0.9)
    scoring = score_ground_truth(
        **_rollout(tokenizer),
        tokenizer=tokenizer,
        config=config,
        boundaries=step_boundaries(tokenizer, tuple(config.boundary_patterns)),
        think_end_id=think_end_token_id(tokenizer),
        backend=backend,
    )
    return scoring, backend


def _assert_same_j(shared, naive):
    assert torch.equal(shared.scored, naive.scored) and torch.equal(shared.cut_mask, naive.cut_mask)
    assert torch.equal(torch.isnan(shared.j_cuts), torch.isnan(naive.j_cuts))
    torch.testing.assert_close(shared.j_base, naive.j_base, rtol=0, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(shared.j_cuts, naive.j_cuts, rtol=0, atol=1e-5, equal_nan=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("use_remove_padding", [True, False])
def test_prefix_shared_through_the_engine_equals_naive(engine_classes, model, tiny_tokenizer, use_remove_padding):
    _, hooked = engine_classes
    naive, _ = _score(tiny_tokenizer, WorkerGroup(hooked(model), 2, use_remove_padding), "naive", 2)
    engine = hooked(model)
    group = WorkerGroup(engine, 2, use_remove_padding)
    shared, _ = _score(tiny_tokenizer, group, "prefix_shared", 2)
    assert naive.scored.tolist() == [True, True, True, False]
    assert int(naive.cut_mask.sum(dim=1).max()) >= 10, "test premise: many cuts"
    _assert_same_j(shared, naive)
    # One worker sequence per scored response (plus DP layout padding), far fewer tokens.
    (sent,) = group.sent
    assert transport.PREFIX_LENGTHS_KEY in sent.keys() and len(sent) >= 3
    assert shared.stats["num_sequences"] == 3 < naive.stats["num_sequences"]
    assert shared.stats["scored_tokens"] < naive.stats["scored_tokens"] / 3
    verdicts = engine._repro_prefix_shared_verdicts
    assert list(verdicts.values()) == [None], "the probe through the engine accepted the tree pass"


def test_stock_engine_is_detected_and_scored_naive(engine_classes, model, tiny_tokenizer, caplog):
    stock, hooked = engine_classes
    naive, _ = _score(tiny_tokenizer, WorkerGroup(hooked(model), 1), "naive", 1)
    group = WorkerGroup(stock(model), 1)
    with caplog.at_level(logging.WARNING, logger="verl_repro"):
        shared, _ = _score(tiny_tokenizer, group, "prefix_shared", 1)
    assert any("falls back to naive" in r.getMessage() and "VERL_ENGINE_VENDOR=repro" in r.getMessage() for r in caplog.records)
    _assert_same_j(shared, naive)
    assert len(group.sent) == 2  # the refused prefix-shared call, then the naive one
    # The next step (a new backend over the same workers) goes straight to naive.
    again, _ = _score(tiny_tokenizer, group, "prefix_shared", 1)
    assert len(group.sent) == 3 and transport.PREFIX_LENGTHS_KEY not in group.sent[-1].keys()
    _assert_same_j(again, naive)


def test_model_that_cannot_take_the_mask_runs_naive_in_the_worker(engine_classes, tiny_tokenizer, caplog):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verl_repro.models.tiny import TINY_MODEL_KWARGS

    _, hooked = engine_classes
    torch.manual_seed(0)
    config = Qwen2Config(**{**TINY_MODEL_KWARGS, "vocab_size": len(tiny_tokenizer)}, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    sliding = Qwen2ForCausalLM(config).eval()
    naive, _ = _score(tiny_tokenizer, WorkerGroup(hooked(sliding), 2), "naive", 2)
    engine = hooked(sliding)
    with caplog.at_level(logging.WARNING, logger="verl_repro"):
        shared, _ = _score(tiny_tokenizer, WorkerGroup(engine, 2), "prefix_shared", 2)
    assert any("runs naive in this worker" in r.getMessage() and "sliding" in r.getMessage() for r in caplog.records)
    _assert_same_j(shared, naive)
    assert shared.stats["scored_tokens"] == naive.stats["scored_tokens"]
