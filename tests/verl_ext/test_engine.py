"""The ``repro`` engine vendor: registration, and ``logit_grad_norm`` through veRL's real engine code.

The engine object is veRL's ``FSDPEngineWithLMHead`` + our mixin, built without its distributed
initializer (no process group, no FSDP wrapping: a plain HF module on CPU) and driven through veRL's
own ``forward_step`` -> ``prepare_model_inputs`` -> model -> ``prepare_model_outputs``, on a batch
made by veRL's ``left_right_2_no_padding`` as the trainer makes it. On CPU the kernel dispatcher
routes to the torch reference; the oracle is float64 maths on the logits of each sample run alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

TEMPERATURE = 0.7
# (prompt tokens, response tokens) per sample; left-padded prompts, right-padded responses.
SAMPLES = [([5, 17, 9], [40, 41, 7, 3]), ([11, 12, 13, 14, 15], [60, 2])]


@pytest.fixture(scope="module")
def transformer_impl():
    import verl.workers.engine.fsdp.transformer_impl as module

    return module


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    return model.eval()


def make_micro_batch(**flags):
    """The trainer's padded batch -> veRL's no-padding (nested) layout, plus non-tensor flags."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    max_prompt = max(len(p) for p, _ in SAMPLES)
    max_response = max(len(r) for _, r in SAMPLES)
    input_ids = torch.zeros(len(SAMPLES), max_prompt + max_response, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros(len(SAMPLES), max_response, dtype=torch.long)
    for i, (prompt, response) in enumerate(SAMPLES):
        input_ids[i, max_prompt - len(prompt) : max_prompt] = torch.tensor(prompt)
        input_ids[i, max_prompt : max_prompt + len(response)] = torch.tensor(response)
        attention_mask[i, max_prompt - len(prompt) : max_prompt + len(response)] = 1
        response_mask[i, : len(response)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    batch = tu.get_tensordict(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "position_ids": position_ids,
        }
    )
    batch = left_right_2_no_padding(batch)
    defaults = dict(temperature=TEMPERATURE, use_remove_padding=True, use_fused_kernels=False, calculate_entropy=True)
    tu.assign_non_tensor(batch, **{**defaults, **flags})
    return batch


def make_engine(transformer_impl, model, vendor: bool = True, use_fused_kernels: bool = False):
    """veRL's engine object with the attributes its forward path reads, minus the distributed setup."""
    import verl.utils.torch_functional as verl_F

    from verl_repro.verl_ext.engine import engine_class_for

    base = transformer_impl.FSDPEngineWithLMHead
    engine = object.__new__(engine_class_for(base) if vendor else base)
    engine.module = model
    engine.model_config = SimpleNamespace(use_fused_kernels=use_fused_kernels)
    engine.engine_config = SimpleNamespace(entropy_from_logits_with_chunking=False, entropy_checkpointing=False)
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    engine.use_remove_padding = True
    engine.use_ulysses_sp = False
    engine.ulysses_sequence_parallel_size = 1
    engine.pad_to_length = False
    engine.pad_to_length_bucket = 1
    engine._autocast_dtype = torch.float32  # forward_step skips autocast
    return engine


def run_forward(engine, micro_batch, transformer_impl, monkeypatch, grad: bool = False):
    """veRL's forward_step on CPU (its device lookups point at the CPU)."""
    monkeypatch.setattr(transformer_impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(transformer_impl, "get_device_name", lambda: "cpu")
    with torch.set_grad_enabled(grad):
        if grad:  # the model output before detach, to backpropagate through it
            inputs, output_args = engine.prepare_model_inputs(micro_batch)
            raw = engine.module(**inputs, use_cache=False)
            return engine.prepare_model_outputs(raw, output_args, micro_batch, None)
        _, output = engine.forward_step(micro_batch, loss_function=None, forward_only=True)
    return output["model_output"]


def response_values(nested: torch.Tensor) -> list[torch.Tensor]:
    """Response-aligned values, as the trainer gets them with veRL's response_from_nested."""
    from verl.workers.utils.padding import response_from_nested

    response_mask = torch.nested.as_nested_tensor([torch.ones(len(r)) for _, r in SAMPLES], layout=torch.jagged)
    return list(response_from_nested(nested, response_mask).unbind())


def oracle_from_logits(logits_per_sample: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """float64, from the definitions: position p predicts token p+1; response tokens only."""
    out = {"log_probs": [], "entropy": [], "logit_grad_norm": []}
    for (prompt, response), logits in zip(SAMPLES, logits_per_sample):
        tokens = torch.tensor(prompt + response)
        predicting = logits[len(prompt) - 1 : len(prompt) + len(response) - 1].double() / TEMPERATURE
        targets = tokens[len(prompt) :]
        p = torch.softmax(predicting, -1)
        log_p = torch.log_softmax(predicting, -1)
        out["log_probs"].append(log_p.gather(-1, targets[:, None])[:, 0])
        out["entropy"].append(-(p * log_p).sum(-1))
        out["logit_grad_norm"].append((p - torch.nn.functional.one_hot(targets, p.shape[-1])).norm(dim=-1))
    return out


def separate_logits(model) -> list[torch.Tensor]:
    """Each sample alone through the model: the engine's packed forward must agree with this
    (transformers keeps packed sequences apart from their restarting position_ids when no cache
    is used, as the engine calls it)."""
    with torch.no_grad():
        return [model(input_ids=torch.tensor(p + r)[None]).logits[0] for p, r in SAMPLES]


def assert_lists_close(got: list[torch.Tensor], want: list[torch.Tensor], atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------------------------


def test_old_log_prob_pass_returns_logit_grad_norm_equal_to_oracle(transformer_impl, tiny_model, monkeypatch):
    micro_batch = make_micro_batch()  # what _compute_old_log_prob sends: calculate_entropy, no grad
    output = run_forward(make_engine(transformer_impl, tiny_model), micro_batch, transformer_impl, monkeypatch)
    assert {"log_probs", "entropy", "logit_grad_norm"} <= set(output)
    assert output["logit_grad_norm"].is_nested
    oracle = oracle_from_logits(separate_logits(tiny_model))
    for key in ("log_probs", "entropy", "logit_grad_norm"):
        assert_lists_close(response_values(output[key]), oracle[key])


def test_vendor_log_probs_and_entropy_match_verl_engine(transformer_impl, tiny_model, monkeypatch):
    ours = run_forward(make_engine(transformer_impl, tiny_model), make_micro_batch(), transformer_impl, monkeypatch)
    verl = run_forward(
        make_engine(transformer_impl, tiny_model, vendor=False), make_micro_batch(), transformer_impl, monkeypatch
    )
    assert "logit_grad_norm" not in verl
    for key in ("log_probs", "entropy"):
        torch.testing.assert_close(ours[key].values(), verl[key].values(), atol=1e-5, rtol=1e-5)


def test_when_logit_grad_norm_is_computed(transformer_impl, tiny_model, monkeypatch):
    engine = make_engine(transformer_impl, tiny_model)
    # The reference pass (no entropy) does not get it unless asked.
    assert "logit_grad_norm" not in run_forward(engine, make_micro_batch(calculate_entropy=False), transformer_impl, monkeypatch)
    asked = run_forward(
        engine, make_micro_batch(calculate_entropy=False, calculate_logit_grad_norm=True), transformer_impl, monkeypatch
    )
    assert "logit_grad_norm" in asked and "entropy" not in asked
    refused = make_micro_batch(calculate_logit_grad_norm=False)
    assert "logit_grad_norm" not in run_forward(engine, refused, transformer_impl, monkeypatch)
    # The training forward (grad enabled) does not compute it by default.
    training = run_forward(engine, make_micro_batch(), transformer_impl, monkeypatch, grad=True)
    assert "logit_grad_norm" not in training and "entropy" in training


def test_sum_pi_squared_and_g_identity(transformer_impl, tiny_model, monkeypatch):
    output = run_forward(
        make_engine(transformer_impl, tiny_model),
        make_micro_batch(calculate_sum_pi_squared=True),
        transformer_impl,
        monkeypatch,
    )
    g, sum_p_sq, logp = (output[k].values().double() for k in ("logit_grad_norm", "sum_pi_squared", "log_probs"))
    torch.testing.assert_close(g**2, sum_p_sq - 2 * logp.exp() + 1, atol=1e-6, rtol=0)


def test_training_gradients_match_verl_engine(transformer_impl, tiny_model, monkeypatch):
    def lm_head_grad(vendor: bool) -> torch.Tensor:
        tiny_model.zero_grad()
        engine = make_engine(transformer_impl, tiny_model, vendor=vendor)
        output = run_forward(engine, make_micro_batch(), transformer_impl, monkeypatch, grad=True)
        loss = output["log_probs"].values().sum() - 0.1 * output["entropy"].values().sum()
        loss.backward()
        return tiny_model.lm_head.weight.grad.clone()

    torch.testing.assert_close(lm_head_grad(vendor=True), lm_head_grad(vendor=False), atol=1e-5, rtol=1e-4)
    tiny_model.zero_grad()


def test_padded_layout_adds_logit_grad_norm(transformer_impl, tiny_model, monkeypatch):
    # use_remove_padding=False: veRL's own outputs, plus g from the padded logits.
    output = run_forward(
        make_engine(transformer_impl, tiny_model), make_micro_batch(use_remove_padding=False), transformer_impl, monkeypatch
    )
    oracle = oracle_from_logits(separate_logits(tiny_model))
    assert_lists_close(response_values(output["logit_grad_norm"]), oracle["logit_grad_norm"])
    assert_lists_close(response_values(output["log_probs"]), oracle["log_probs"])


def test_fused_path_runs_kernel_b_and_adds_sum_pi_squared(transformer_impl, tiny_model, monkeypatch):
    from verl.models.transformers import dense_common

    from verl_repro.verl_ext.engine import forward_with_token_stats, install_fused_forward

    unfused = run_forward(
        make_engine(transformer_impl, tiny_model),
        make_micro_batch(calculate_sum_pi_squared=True),
        transformer_impl,
        monkeypatch,
    )
    # What veRL's patch_forward_with_backends does for use_fused_kernels=True (class-level), then ours.
    monkeypatch.setattr(type(tiny_model), "forward", dense_common.forward_with_torch_backend)
    assert install_fused_forward(tiny_model)
    assert type(tiny_model).forward is forward_with_token_stats
    fused = run_forward(
        make_engine(transformer_impl, tiny_model, use_fused_kernels=True),
        make_micro_batch(use_fused_kernels=True, calculate_sum_pi_squared=True),
        transformer_impl,
        monkeypatch,
    )
    for key in ("log_probs", "entropy", "sum_pi_squared", "logit_grad_norm"):
        torch.testing.assert_close(fused[key].values(), unfused[key].values(), atol=1e-5, rtol=1e-5, msg=key)


def test_fused_path_without_our_forward_fails_clearly(transformer_impl, tiny_model, monkeypatch):
    from verl.models.transformers import dense_common

    monkeypatch.setattr(type(tiny_model), "forward", dense_common.forward_with_torch_backend)
    engine = make_engine(transformer_impl, tiny_model, use_fused_kernels=True)
    with pytest.raises(RuntimeError, match="use_fused_kernels=False"):
        run_forward(engine, make_micro_batch(use_fused_kernels=True), transformer_impl, monkeypatch)


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def test_register_engine_vendor_selects_by_env(transformer_impl, monkeypatch):
    from verl.workers.engine.base import EngineRegistry

    from verl_repro.verl_ext.engine import register_engine_vendor

    added = register_engine_vendor()
    assert register_engine_vendor() == added  # idempotent
    assert {"engine:repro/fsdp", "engine:repro/fsdp2", "engine:repro/fsdp2@cpu"} <= set(added)
    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cuda")
    monkeypatch.delenv("VERL_ENGINE_VENDOR", raising=False)
    assert EngineRegistry.get_engine_cls("language_model", "fsdp2") is transformer_impl.FSDPEngineWithLMHead
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "repro")
    for backend in ("fsdp", "fsdp2"):
        engine_class = EngineRegistry.get_engine_cls("language_model", backend)
        assert issubclass(engine_class, transformer_impl.FSDPEngineWithLMHead)
        assert engine_class.__name__ == "ReproFSDPEngineWithLMHead"
    # The critic keeps veRL's engine: no value-model entry for the vendor.
    assert EngineRegistry.get_engine_cls("value_model", "fsdp") is transformer_impl.FSDPEngineWithValueHead


def test_plugin_registers_on_import_of_the_fsdp_engine():
    code = (
        "import os, json\n"
        "import verl\n"
        "from verl_repro.plugin.entry import registration_report\n"
        "report = registration_report()\n"
        "import verl.workers.engine.fsdp.transformer_impl\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "os.environ['VERL_ENGINE_VENDOR'] = 'repro'; os.environ['VERL_ENGINE_DEVICE'] = 'cuda'\n"
        "cls = EngineRegistry.get_engine_cls('language_model', 'fsdp2')\n"
        "print(json.dumps({'registered': report['registered'], 'failures': report['failures'], 'cls': cls.__name__}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_ENGINE_VENDOR", "VERL_ENGINE_DEVICE")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    import json

    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert "verl_repro.verl_ext.engine" not in payload["failures"]
    assert "engine:repro/fsdp2" in payload["registered"]
    assert payload["cls"] == "ReproFSDPEngineWithLMHead"


def test_vendor_engine_routes_prefix_shared_batches_to_the_scoring_hook(monkeypatch):
    """Prefix-shared scoring batches go through the tree-attention hook; others reach veRL."""
    from verl_repro.verl_ext import engine_step, transport
    from verl_repro.verl_ext.engine import engine_class_for

    calls = []

    class FakeBase:
        def forward_step(self, micro_batch, loss_function, forward_only):
            calls.append(("base", forward_only))
            return "base"

    def fake_hook(engine, micro_batch, loss_function, forward_only, base_forward_step):
        calls.append(("hook", base_forward_step(micro_batch, loss_function, forward_only)))
        return "hook"

    monkeypatch.setattr(engine_step, "prefix_shared_forward_step", fake_hook)
    engine = engine_class_for(FakeBase).__new__(engine_class_for(FakeBase))

    class Batch(dict):
        pass

    assert engine.forward_step(Batch(input_ids=1), None, True) == "base"
    assert engine.forward_step(Batch({"input_ids": 1, transport.PREFIX_LENGTHS_KEY: 2}), None, True) == "hook"
    assert calls == [("base", True), ("base", True), ("hook", "base")]


# ----------------------------------------------------------------------------------------------
# CorR-PO's parameter-gradient signal (verl_repro.gradients) inside the old-log-prob pass


def param_grad_oracle(model, matrices=("q_proj", "v_proj", "o_proj"), aggregate="mean") -> list[torch.Tensor]:
    """Per-token autograd on each sample alone: ||∂z[t, y_{t+1}]/∂W||_* of the last layer, combined
    over matrices, at the positions that predict the response tokens."""
    from verl_repro.gradients import logit_gradient_norms

    out = []
    for prompt, response in SAMPLES:
        tokens = torch.tensor(prompt + response)[None]
        targets = torch.roll(tokens, -1, dims=1)
        norms = logit_gradient_norms(model, tokens, targets, matrices=matrices, method="exact")[0, :, 0]
        combined = norms.sum(-1) if aggregate == "sum" else norms.mean(-1)
        out.append(combined[len(prompt) - 1 : len(prompt) + len(response) - 1])
    return out


@pytest.mark.parametrize("use_remove_padding", [True, False])
def test_old_log_prob_pass_returns_param_grad_equal_to_per_token_autograd(
    transformer_impl, tiny_model, monkeypatch, use_remove_padding
):
    from verl_repro.config import CorrConfig
    from verl_repro.verl_ext.engine import PARAM_GRAD_KEY, PARAM_GRAD_REQUEST_KEY, param_grad_spec

    spec = param_grad_spec(CorrConfig().validate())
    engine = make_engine(transformer_impl, tiny_model)
    engine.use_remove_padding = use_remove_padding
    batch = make_micro_batch(use_remove_padding=use_remove_padding, **{PARAM_GRAD_REQUEST_KEY: spec})
    output = run_forward(engine, batch, transformer_impl, monkeypatch)
    assert output[PARAM_GRAD_KEY].is_nested
    assert_lists_close(response_values(output[PARAM_GRAD_KEY]), param_grad_oracle(tiny_model), atol=1e-4)
    # log-probs are untouched by the extra measurement
    plain = run_forward(engine, make_micro_batch(use_remove_padding=use_remove_padding), transformer_impl, monkeypatch)
    assert PARAM_GRAD_KEY not in plain
    torch.testing.assert_close(output["log_probs"].values(), plain["log_probs"].values())


def test_param_grad_exact_method_and_sum_in_the_engine(transformer_impl, tiny_model, monkeypatch):
    """``repro.corr.method=exact`` (here with k_proj, which has no fast form) through the same pass."""
    from verl_repro.config import CorrConfig
    from verl_repro.verl_ext.engine import PARAM_GRAD_KEY, PARAM_GRAD_REQUEST_KEY, param_grad_spec

    corr = CorrConfig(matrices=["k_proj", "o_proj"], aggregate="sum", method="exact").validate()
    batch = make_micro_batch(**{PARAM_GRAD_REQUEST_KEY: param_grad_spec(corr)})
    output = run_forward(make_engine(transformer_impl, tiny_model), batch, transformer_impl, monkeypatch)
    oracle = param_grad_oracle(tiny_model, matrices=("k_proj", "o_proj"), aggregate="sum")
    assert_lists_close(response_values(output[PARAM_GRAD_KEY]), oracle, atol=1e-4)


def test_param_grad_is_not_computed_with_gradients_on(transformer_impl, tiny_model, monkeypatch):
    from verl_repro.config import CorrConfig
    from verl_repro.verl_ext.engine import PARAM_GRAD_KEY, PARAM_GRAD_REQUEST_KEY, param_grad_spec

    batch = make_micro_batch(**{PARAM_GRAD_REQUEST_KEY: param_grad_spec(CorrConfig().validate())})
    training = run_forward(make_engine(transformer_impl, tiny_model), batch, transformer_impl, monkeypatch, grad=True)
    assert PARAM_GRAD_KEY not in training


def test_param_grad_packed_equals_padded(transformer_impl, tiny_model, monkeypatch):
    """The same responses through veRL's packed (use_remove_padding) and padded layouts: one signal."""
    from verl_repro.config import CorrConfig
    from verl_repro.verl_ext.engine import PARAM_GRAD_KEY, PARAM_GRAD_REQUEST_KEY, param_grad_spec

    spec = param_grad_spec(CorrConfig().validate())
    outputs = []
    for use_remove_padding in (True, False):
        engine = make_engine(transformer_impl, tiny_model)
        engine.use_remove_padding = use_remove_padding
        batch = make_micro_batch(use_remove_padding=use_remove_padding, **{PARAM_GRAD_REQUEST_KEY: spec})
        outputs.append(response_values(run_forward(engine, batch, transformer_impl, monkeypatch)[PARAM_GRAD_KEY]))
    assert_lists_close(outputs[0], outputs[1], atol=1e-5)
