"""Packed inputs (several sequences in one row, positions restarting), as the recipes run them.

* Packed (padding-free, ``use_remove_padding=True``) equals padded (``use_remove_padding=False``)
  within 1e-5 in float32 for every per-token output of ours that goes through veRL's engine: the
  ``repro`` engine vendor's ``log_probs``, ``entropy``, ``sum_pi_squared`` and ``logit_grad_norm``
  (unfused and fused forward), and RePro's prefix-shared J through the worker path (two DP ranks,
  layout padding included).
* The ``use_cache`` trap cannot reach our code: transformers keeps packed sequences apart only when
  the forward runs without a KV cache, and a model's config defaults to ``use_cache=True``. Every
  decoder call our code makes on packed inputs is recorded (a forward pre-hook on the decoder) and
  must run with the cache off: offline prefix-shared scoring, the engine vendor (unfused, fused,
  prefix-shared through the worker path) and the CorR-PO signal (``fast`` and ``exact``).

veRL's real engine code runs on CPU around the tiny model."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch

from verl_repro.algorithms import step_boundaries, think_end_token_id
from verl_repro.config import ReproConfig

PER_TOKEN_OUTPUTS = ("log_probs", "entropy", "sum_pi_squared", "logit_grad_norm")


def _engine_test_helpers():
    """test_engine.py's batch and engine builders (tests import in importlib mode: load it by path)."""
    spec = importlib.util.spec_from_file_location("verl_ext_test_engine_helpers", Path(__file__).with_name("test_engine.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _engine_test_helpers()
make_engine, make_micro_batch, run_forward = helpers.make_engine, helpers.make_micro_batch, helpers.run_forward
assert len(helpers.SAMPLES) >= 2  # several sequences packed into one row


@pytest.fixture(scope="module")
def transformer_impl():
    import verl.workers.engine.fsdp.transformer_impl as module

    return module


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_engine_vendor_outputs_packed_equal_padded(transformer_impl, tiny_model, monkeypatch, fused):
    flags = dict(calculate_sum_pi_squared=True, calculate_logit_grad_norm=True)
    if fused:
        from verl.models.transformers import dense_common

        from verl_repro.verl_ext.engine import install_fused_forward

        # what veRL's patch_forward_with_backends does for use_fused_kernels=True, then ours
        monkeypatch.setattr(type(tiny_model), "forward", dense_common.forward_with_torch_backend)
        assert install_fused_forward(tiny_model)
        flags["use_fused_kernels"] = True
    outputs = {}
    for packed in (True, False):
        engine = make_engine(transformer_impl, tiny_model, use_fused_kernels=fused)
        outputs[packed] = run_forward(engine, make_micro_batch(use_remove_padding=packed, **flags), transformer_impl, monkeypatch)
    for key in PER_TOKEN_OUTPUTS:
        packed, padded = outputs[True][key], outputs[False][key]
        assert packed.is_nested and padded.is_nested, key
        torch.testing.assert_close(packed.offsets(), padded.offsets(), msg=key)
        # what the trainer reads (veRL's response_from_nested): the positions predicting response tokens;
        # a sequence's last position predicts past its end and differs by layout, unused either way
        for got, want in zip(helpers.response_values(packed), helpers.response_values(padded)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=key)


def _prefix_shared_j(engine, make_worker_group, tokenizer, batch, use_remove_padding: bool):
    from verl_repro.verl_ext.scoring import score_ground_truth
    from verl_repro.verl_ext.transport import LogProbBackend

    group = make_worker_group(dp_size=2, use_remove_padding=use_remove_padding)
    group.engine = engine
    config = ReproConfig(num_segments=3, scoring_mode="prefix_shared", scoring_micro_batch_size=2, no_think_end="use_end").validate()
    return score_ground_truth(
        input_ids=batch["input_ids"], prompt_lengths=batch["prompt_lengths"], responses=batch["responses"],
        response_mask=batch["response_mask"], entropy=batch["entropy"], reward_models=batch["reward_models"],
        padding=batch["padding"], tokenizer=tokenizer, config=config,
        boundaries=step_boundaries(tokenizer, tuple(config.boundary_patterns)),
        think_end_id=think_end_token_id(tokenizer),
        backend=LogProbBackend(group.compute_ref_log_prob, dp_size=2, temperature=0.9),
    )


def test_prefix_shared_j_packed_equals_padded(cpu_engine, tiny_model, tiny_tokenizer, make_worker_group, rollout_batch):
    from verl_repro.verl_ext.engine import TokenStatsEngineMixin

    # the repro engine vendor (whose forward_step runs the tree attention) on veRL's engine code
    vendor = type("VendorCpuEngine", (TokenStatsEngineMixin, type(cpu_engine)), {})
    batch = rollout_batch(tiny_tokenizer)
    scored = {}
    for packed in (True, False):
        engine = vendor(tiny_model)
        scored[packed] = _prefix_shared_j(engine, make_worker_group, tiny_tokenizer, batch, packed)
        # the tree pass ran (the first-use probe accepted it), not the naive fallback
        assert list(engine._repro_prefix_shared_verdicts.values()) == [None], engine._repro_prefix_shared_verdicts
    packed, padded = scored[True], scored[False]
    assert packed.scored.tolist() == padded.scored.tolist() and int(packed.scored.sum()) >= 3
    assert torch.equal(packed.cut_mask, padded.cut_mask) and int(packed.cut_mask.sum()) > int(packed.scored.sum())
    torch.testing.assert_close(packed.j_base, padded.j_base, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(packed.j_cuts, padded.j_cuts, atol=1e-5, rtol=0, equal_nan=True)
    assert packed.stats["scored_tokens"] == padded.stats["scored_tokens"]


# ----------------------------------------------------------------------------------------------
# The use_cache trap
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def decoder_calls(model):
    """Record ``(packed, use_cache)`` of every call of the model's decoder: ``packed`` when the position
    ids fall back somewhere in a row (a new sequence, or a prefix-shared answer copy), ``use_cache`` as
    the decoder resolves it (``None`` means the config's)."""
    calls: list[tuple[bool, bool]] = []
    decoder = model.get_decoder()

    def record(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        use_cache = kwargs.get("use_cache")
        packed = position_ids is not None and bool((position_ids[..., 1:] < position_ids[..., :-1]).any())
        calls.append((packed, bool(module.config.use_cache if use_cache is None else use_cache)))

    handle = decoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def packed_calls_with_cache(calls) -> int:
    return sum(1 for packed, use_cache in calls if packed and use_cache)


def test_the_trap_is_real_and_the_recorder_sees_it(tiny_model):
    assert tiny_model.config.use_cache, "premise: the config turns the cache on by default"
    first, second = torch.arange(3, 10), torch.arange(20, 25)
    ids = torch.cat([first, second])[None]
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        alone = tiny_model(input_ids=second[None]).logits[0]
        with decoder_calls(tiny_model) as calls:
            default = tiny_model(input_ids=ids, position_ids=positions).logits[0, 7:]
        without_cache = tiny_model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 7:]
    assert calls == [(True, True)] and packed_calls_with_cache(calls) == 1
    assert float((default - alone).abs().max()) > 0.05  # the second sequence attends to the first
    torch.testing.assert_close(without_cache, alone, atol=1e-5, rtol=0)


def test_offline_prefix_shared_scoring_runs_packed_without_cache(tiny_model):
    from verl_repro.scoring import score_cuts_prefix_shared

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 100, (5,), generator=generator).tolist() for _ in range(3)]
    responses = torch.randint(0, 100, (3, 16), generator=generator)
    cuts = torch.tensor([[4, 9, 16], [2, 8, 16], [5, 11, 16]])
    answers = [[7, 8, 9], [10, 11], [12, 13, 14, 15]]
    with decoder_calls(tiny_model) as calls:
        score_cuts_prefix_shared(tiny_model, prompts, responses, cuts, torch.ones_like(cuts, dtype=torch.bool), answers)
    assert any(packed for packed, _ in calls) and packed_calls_with_cache(calls) == 0, calls


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_engine_vendor_runs_packed_without_cache(transformer_impl, tiny_model, monkeypatch, fused):
    if fused:
        from verl.models.transformers import dense_common

        from verl_repro.verl_ext.engine import install_fused_forward

        monkeypatch.setattr(type(tiny_model), "forward", dense_common.forward_with_torch_backend)
        assert install_fused_forward(tiny_model)
    engine = make_engine(transformer_impl, tiny_model, use_fused_kernels=fused)
    with decoder_calls(tiny_model) as calls:
        run_forward(engine, make_micro_batch(use_fused_kernels=fused), transformer_impl, monkeypatch)
        run_forward(engine, make_micro_batch(use_fused_kernels=fused), transformer_impl, monkeypatch, grad=True)
    assert len(calls) == 2 and all(packed for packed, _ in calls) and packed_calls_with_cache(calls) == 0, calls


def test_prefix_shared_worker_path_runs_packed_without_cache(cpu_engine, tiny_model, tiny_tokenizer, make_worker_group, rollout_batch):
    from verl_repro.verl_ext.engine import TokenStatsEngineMixin

    vendor = type("VendorCpuEngine", (TokenStatsEngineMixin, type(cpu_engine)), {})
    with decoder_calls(tiny_model) as calls:
        _prefix_shared_j(vendor(tiny_model), make_worker_group, tiny_tokenizer, rollout_batch(tiny_tokenizer), True)
    # the first-use probe (tree and naive), then the tree pass on each rank
    assert sum(packed for packed, _ in calls) >= 3 and packed_calls_with_cache(calls) == 0, calls


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_corrpo_signal_runs_packed_without_cache(tiny_model, method):
    from verl_repro.gradients import logit_gradient_norms

    ids = torch.arange(10, 22)[None]
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]  # two sequences in one row
    with decoder_calls(tiny_model) as calls:
        logit_gradient_norms(tiny_model, ids, torch.roll(ids, -1, dims=1), position_ids=positions, method=method)
    assert calls and all(packed for packed, _ in calls) and packed_calls_with_cache(calls) == 0, calls
