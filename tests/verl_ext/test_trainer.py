"""The ``repro_sync`` trainer: registration, sync behaviour, and its advantage step
run on veRL data structures (TransferQueue-shaped jagged TensorDicts, KVBatchMeta, DataProto) with the
scoring going through veRL's engine code on CPU (see conftest.py).

veRL code exercised here: ``PPOTrainer.__init__`` (replay buffer choice), ``PPOTrainer._compute_advantage``
(as the reference the override must match), ``_compute_old_log_prob``, ``DataProto``,
``compute_advantage``'s built-ins, ``response_to_nested`` / ``response_from_nested``, the DP dispatch
chunking and the FSDP engine's forward. Not exercised on CPU: Ray workers, the real TransferQueue, FSDP.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import verl  # noqa: F401  (loads the plugin)
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_repro.config import ConfigError
from verl_repro.verl_ext import estimator_registry
from verl_repro.verl_ext.switches import TRAINER_MODE
from verl_repro.verl_ext.trainer import (
    as_jagged,
    build_trainer_class,
    logit_grad_norm_from_sum_pi_squared,
)

BASE_OVERRIDES = [
    "+repro=default",
    "algorithm.adv_estimator=repro_grpo",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.0",
]


@pytest.fixture(scope="module")
def base_config():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=BASE_OVERRIDES)


def make_config(base_config, **updates):
    config = copy.deepcopy(base_config)
    with open_dict(config):
        for key, value in updates.items():
            OmegaConf.update(config, key, value, force_add=True)
    return config


# ----------------------------------------------------------------------------- registration


def test_registered_lazily_and_found_by_verls_lookup():
    code = (
        "import json, sys, verl\n"
        "deferred = 'verl.trainer.ppo.v1.trainer_sync' not in sys.modules\n"
        "from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls\n"
        "import verl_repro.verl_ext.trainer as t\n"
        "cls = get_trainer_cls('repro_sync')\n"
        "print(json.dumps({'deferred': deferred, 'subclass': issubclass(cls, PPOTrainerSync),\n"
        "                  'same': cls is t.ReproSyncTrainer, 'name': cls.__qualname__}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload == {"deferred": True, "subclass": True, "same": True, "name": "ReproSyncTrainer"}


def test_checkpointing_and_loop_are_veRLs_own():
    cls = build_trainer_class()
    for method in ("_save_checkpoint", "_load_checkpoint", "fit", "step", "_step_once", "_update_actor", "_validate"):
        assert getattr(cls, method) is getattr(PPOTrainer, method) or getattr(cls, method) is getattr(PPOTrainerSync, method), method


# ----------------------------------------------------------------------------- sync behaviour


def test_keeps_sync_behaviour(base_config):
    config = make_config(base_config)
    assert config.trainer.v1.trainer_mode == TRAINER_MODE  # set by +repro=default
    trainer = build_trainer_class()(config)
    assert trainer.requested_trainer_mode == TRAINER_MODE
    assert trainer.trainer_mode == "sync" and config.trainer.v1.trainer_mode == "sync"
    assert type(trainer.replay_buffer) is ReplayBuffer and trainer.parameter_sync_step == 1
    stock = PPOTrainerSync(make_config(base_config, **{"trainer.v1.trainer_mode": "sync"}))
    assert trainer.replay_buffer.gen_batch_size == stock.replay_buffer.gen_batch_size
    assert trainer.replay_buffer.trainer_config == stock.replay_buffer.trainer_config
    # The trap this guards against: veRL treats any other mode string as async.
    unguarded = PPOTrainerSync(make_config(base_config))
    assert unguarded.trainer_mode == TRAINER_MODE and type(unguarded.replay_buffer) is ReplayBufferAsync


# ----------------------------------------------------------------------------- start-up validation
# (the checks themselves: test_preflight.py)

VENDOR = {"ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR": "repro"}


def test_missing_think_end_token_is_a_config_error(base_config, tiny_tokenizer):
    trainer = build_trainer_class()(make_config(base_config, **{"repro.think_end_token": "<never>"}))
    trainer.tokenizer = tiny_tokenizer
    with pytest.raises(ConfigError, match=r"repro\.think_end_token='<never>'"):
        trainer._init_repro_tokens()


# ----------------------------------------------------------------------------- the advantage step


def put_rollout(fake_tq, batch, rm_scores, seed=0, with_sum_pi_squared=False):
    """Store a rollout batch per sample, as veRL's agent loop and log-prob passes leave it in the TransferQueue."""
    from transfer_queue import KVBatchMeta

    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    generator = torch.Generator().manual_seed(seed)
    uids = ["q1", "q1", "q1", "q2", "q2", "padX"]
    keys, tags, samples = [], [], []
    for row, uid in enumerate(uids):
        response = batch["response_list"][row]
        length = response.numel()
        prompt = batch["prompt_list"][row]
        rm = torch.zeros(length)
        rm[-1] = rm_scores[row]
        is_padding = bool(batch["padding"][row])
        sample = {
            "uid": uid,
            "prompts": prompt,
            "responses": response,
            "response_mask": torch.zeros(length, dtype=torch.long) if is_padding else torch.ones(length, dtype=torch.long),
            "input_ids": torch.cat([prompt, response]),
            "position_ids": torch.arange(prompt.numel() + length),
            "rm_scores": rm,
            "old_log_probs": -torch.rand(length, generator=generator),
            "ref_log_prob": -torch.rand(length, generator=generator),
            "entropy": batch["entropy"][row, :length].clone(),
            "reward_model": batch["reward_models"][row],
        }
        if with_sum_pi_squared:  # full sequence, as the worker pass writes it
            sample["sum_pi_squared"] = torch.rand(prompt.numel() + length, generator=generator)
        samples.append(sample)
        keys.append(f"{uid}_{row}_0")
        tags.append({"is_padding": True} if is_padding else {"status": "success"})
    fake_tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(samples), tags=tags)
    return KVBatchMeta(keys=keys, tags=tags, partition_id="train")


def written(fake_tq, meta, field):
    return [fake_tq.store[("train", key)][field] for key in meta.keys]


def make_trainer(base_config, tiny_tokenizer, make_worker_group, **updates):
    trainer = build_trainer_class()(make_config(base_config, **updates))
    trainer.tokenizer = tiny_tokenizer
    trainer._init_repro_tokens()
    trainer.ref_in_actor = False
    trainer.ref_policy_wg = make_worker_group(dp_size=2)
    trainer.actor_rollout_wg = make_worker_group(dp_size=2)
    trainer.timing_raw = {}
    return trainer


RM_SCORES = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_stock_estimator_runs_veRLs_own_step(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"algorithm.adv_estimator": "grpo"})
    meta = put_rollout(fake_tq, rollout_batch(tiny_tokenizer), RM_SCORES)
    trainer._compute_advantage(meta, metrics := {})
    ours = written(fake_tq, meta, "advantages")
    PPOTrainer._compute_advantage(trainer, meta, {})
    assert all(torch.equal(a, b) for a, b in zip(ours, written(fake_tq, meta, "advantages")))
    assert trainer.ref_policy_wg.received == [] and not any(key.startswith("repro/") for key in metrics)


@pytest.mark.parametrize("scorer", ["ref", "actor"])
def test_repro_grpo_step(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq, scorer):
    batch = rollout_batch(tiny_tokenizer)
    # Reference: veRL's own advantage step with its built-in GRPO on the same stored batch.
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"repro.alpha": 0.0, "repro.scorer": scorer, "algorithm.adv_estimator": "grpo"})
    meta = put_rollout(fake_tq, batch, RM_SCORES)
    PPOTrainer._compute_advantage(trainer, meta, {})
    stock = written(fake_tq, meta, "advantages")

    for alpha in (0.0, 0.5):
        trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"repro.alpha": alpha, "repro.scorer": scorer, "repro.num_segments": 3})
        meta = put_rollout(fake_tq, batch, RM_SCORES)
        metrics: dict = {}
        trainer._compute_advantage(meta, metrics)
        ours = written(fake_tq, meta, "advantages")
        used, unused = (trainer.ref_policy_wg, trainer.actor_rollout_wg) if scorer == "ref" else (trainer.actor_rollout_wg, trainer.ref_policy_wg)
        assert [method for method, _ in used.received] == ["compute_ref_log_prob" if scorer == "ref" else "compute_log_prob"]
        assert unused.received == []
        assert "repro_scoring" in trainer.timing_raw
        for key in ("repro/num_cuts_mean", "repro/j_base_mean", "repro/process_adv_abs_mean", "repro/scored_tokens"):
            assert math.isfinite(metrics[key])
        assert metrics["repro/with_process_reward"] == 3  # rows 0, 1, 4 (2: no </think>, 3: no truth, 5: padding)
        assert metrics["repro/skipped_no_think_end"] == 1 and metrics["repro/skipped_no_ground_truth"] == 1
        assert [a.shape for a in ours] == [r.shape for r in batch["response_list"]]
        if alpha == 0.0:
            assert all(torch.equal(a, b) for a, b in zip(ours, stock))
        else:
            changed = [not torch.allclose(a, b) for a, b in zip(ours, stock)]
            assert changed[0] and changed[1] and changed[4]
            assert not any(changed[i] for i in (2, 3, 5))
            assert metrics["repro/process_adv_abs_mean"] > 0


def test_reference_as_actor_without_lora_adapter(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group)
    trainer.ref_in_actor = True
    meta = put_rollout(fake_tq, rollout_batch(tiny_tokenizer), RM_SCORES)
    trainer._compute_advantage(meta, {})
    (method, sent), = trainer.actor_rollout_wg.received
    assert method == "compute_log_prob" and sent["no_lora_adapter"] is True


def test_contract_inputs_for_corrpo_like_estimators(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    seen = {}

    def probe(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        seen.update(kwargs, response_mask=response_mask, index=index)
        kwargs["metrics"]["corr/probe"] = 1.0
        return token_level_rewards, token_level_rewards

    register_adv_est("test_contract_probe")(probe)
    estimator_registry.add(estimator_registry.EstimatorSpec(
        "test_contract_probe", method="probe", base="grpo", normalization="group",
        inputs=("responses", "entropy", "logit_grad_norm", "think_end_id", "repro_config", "metrics"), function=probe,
    ))
    try:
        trainer = make_trainer(
            base_config, tiny_tokenizer, make_worker_group,
            **{
                "algorithm.adv_estimator": "test_contract_probe",
                "repro.corr.signal": "softmax_grad",
                "actor_rollout_ref.actor.calculate_sum_pi_squared": True,
            },
        )
        batch = rollout_batch(tiny_tokenizer)
        meta = put_rollout(fake_tq, batch, RM_SCORES, with_sum_pi_squared=True)
        metrics: dict = {}
        trainer._compute_advantage(meta, metrics)
    finally:
        ADV_ESTIMATOR_REGISTRY.pop("test_contract_probe", None)
        estimator_registry.SPECS.pop("test_contract_probe", None)
    assert metrics["corr/probe"] == 1.0
    assert seen["think_end_id"] == tiny_tokenizer.convert_tokens_to_ids("</think>")
    assert seen["repro_config"] is trainer.repro_config
    width = max(r.numel() for r in batch["response_list"])
    assert torch.equal(seen["responses"][:, :width].long() * seen["response_mask"].long(), batch["responses"][:, :width] * batch["response_mask"][:, :width])
    torch.testing.assert_close(seen["entropy"] * seen["response_mask"], batch["entropy"][:, :width] * seen["response_mask"])
    # g_t from Σp² (full sequence, shifted by one like log_probs) and the response's old log-probs.
    for row, key in enumerate(meta.keys):
        stored = fake_tq.store[("train", key)]
        length = stored["responses"].numel()
        spp = stored["sum_pi_squared"][-length - 1 : -1]
        expected = torch.sqrt((spp - 2 * stored["old_log_probs"].exp() + 1).clamp_min(0))
        torch.testing.assert_close(seen["logit_grad_norm"][row, :length], expected)


def test_logit_grad_norm_formula():
    probabilities = torch.softmax(torch.randn(5, 11, dtype=torch.float64), dim=-1)
    sampled = torch.tensor([0, 3, 10, 4, 4])
    onehot = torch.nn.functional.one_hot(sampled, 11).double()
    expected = torch.linalg.vector_norm(probabilities - onehot, dim=-1)
    got = logit_grad_norm_from_sum_pi_squared(probabilities.gather(1, sampled[:, None]).squeeze(1).log(), probabilities.square().sum(-1))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def old_log_prob_requests(trainer, fake_tq, meta, fields) -> list[dict]:
    """Run the trainer's old-log-prob pass against a stand-in worker that records each call's
    requests (``extra_info``) and writes one random non-negative full-sequence tensor per name in
    ``fields`` under the sample keys (``log_probs`` negated), as the worker would."""
    from tensordict import TensorDict

    requests = []

    def compute_log_prob(kv_meta):
        requests.append(dict(kv_meta.extra_info))
        lengths = [fake_tq.store[("train", key)]["input_ids"].numel() for key in kv_meta.keys]
        full = lambda: torch.nested.as_nested_tensor([torch.rand(n) for n in lengths], layout=torch.jagged)  # noqa: E731
        outputs = {name: -full() if name == "log_probs" else full() for name in fields}
        fake_tq.kv_batch_put(kv_meta.keys, "train", TensorDict(outputs, batch_size=[len(lengths)]))
        return kv_meta

    trainer.actor_rollout_wg.compute_log_prob = compute_log_prob
    trainer._compute_old_log_prob(meta, {})
    return requests


def test_old_log_prob_pass_asks_for_sum_pi_squared_only_there(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    trainer = make_trainer(
        base_config, tiny_tokenizer, make_worker_group,
        **{
            "algorithm.adv_estimator": "corrpo",
            "repro.corr.signal": "softmax_grad",
            "actor_rollout_ref.actor.calculate_sum_pi_squared": True,
            "actor_rollout_ref.rollout.calculate_log_probs": False,
        },
    )
    meta = put_rollout(fake_tq, rollout_batch(tiny_tokenizer), RM_SCORES)
    requests = old_log_prob_requests(trainer, fake_tq, meta, ("log_probs", "entropy", "sum_pi_squared"))
    assert requests[0]["calculate_sum_pi_squared"] is True and requests[0]["calculate_entropy"] is True
    assert "calculate_sum_pi_squared" not in meta.extra_info


def test_old_log_prob_pass_requests_the_param_grad_signal_and_corrpo_uses_it(
    base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq
):
    import json

    from verl_repro.verl_ext.engine import PARAM_GRAD_KEY, PARAM_GRAD_REQUEST_KEY, REQUEST_KEY

    trainer = make_trainer(
        base_config, tiny_tokenizer, make_worker_group,
        **{"algorithm.adv_estimator": "corrpo", **VENDOR, "actor_rollout_ref.rollout.calculate_log_probs": False},
    )
    meta = put_rollout(fake_tq, rollout_batch(tiny_tokenizer), RM_SCORES)
    requests = old_log_prob_requests(trainer, fake_tq, meta, ("log_probs", "entropy", "logit_grad_norm", PARAM_GRAD_KEY))
    spec = json.loads(requests[0][PARAM_GRAD_REQUEST_KEY])
    assert spec == {"matrices": ["q_proj", "v_proj", "o_proj"], "norm": "nuc", "aggregate": "mean", "method": "fast"}
    assert "calculate_sum_pi_squared" not in requests[0] and PARAM_GRAD_REQUEST_KEY not in meta.extra_info
    assert requests[0][REQUEST_KEY] is False  # the softmax proxy, which this signal does not read, is refused
    # the estimator receives the parameter-gradient field, not the softmax proxy
    tensors = {"logit_grad_norm": torch.zeros(2, 4), PARAM_GRAD_KEY: torch.full((2, 4), 7.0)}
    assert torch.equal(trainer._logit_grad_norm(tensors), tensors[PARAM_GRAD_KEY])
    assert trainer._logit_grad_norm({"logit_grad_norm": torch.zeros(2, 4)}) is None


@pytest.mark.parametrize(
    "estimator, signal, refused",
    [("grpo", "param_grad", True), ("repro_grpo", "param_grad", True), ("corrpo", "softmax_grad", False)],
)
def test_engine_vendor_adds_the_softmax_proxy_only_where_an_estimator_reads_it(
    base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq, estimator, signal, refused
):
    from verl_repro.verl_ext.engine import REQUEST_KEY

    trainer = make_trainer(
        base_config, tiny_tokenizer, make_worker_group,
        **{"algorithm.adv_estimator": estimator, "repro.corr.signal": signal, **VENDOR,
           "actor_rollout_ref.rollout.calculate_log_probs": False},
    )
    meta = put_rollout(fake_tq, rollout_batch(tiny_tokenizer), RM_SCORES)
    requests = old_log_prob_requests(trainer, fake_tq, meta, ("log_probs", "entropy"))
    assert (requests[0].get(REQUEST_KEY) is False) == refused
    assert REQUEST_KEY not in meta.extra_info  # later passes on the batch decide for themselves


def test_as_jagged_turns_dense_fields_into_nested():
    dense = torch.arange(12).reshape(3, 4)
    nested = as_jagged(dense)
    assert nested.is_nested and nested.offsets().tolist() == [0, 4, 8, 12]
    assert torch.equal(nested.to_padded_tensor(0), dense)
    assert as_jagged(nested) is nested


def test_equal_length_responses_stored_densely(base_config, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    batch = rollout_batch(tiny_tokenizer)
    length = min(r.numel() for r in batch["response_list"][:5])
    batch["response_list"] = [r[:length] for r in batch["response_list"][:5]] + [torch.full((length,), r[0]) for r in batch["response_list"][5:]]
    batch["entropy"] = batch["entropy"][:, :length]
    batch["prompt_list"] = [batch["prompt_list"][0]] * 6  # equal prompts too: input_ids come back dense
    fake_tq.dense_when_equal = True
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"repro.no_think_end": "use_end"})
    meta = put_rollout(fake_tq, batch, RM_SCORES)
    metrics: dict = {}
    trainer._compute_advantage(meta, metrics)
    assert all(a.shape == (length,) for a in written(fake_tq, meta, "advantages"))
    assert metrics["repro/with_process_reward"] == 4  # rows 0-2 and 4 (use_end); 3: no truth; 5: padding


def test_step_equals_a_direct_pipeline(base_config, tiny_model, tiny_tokenizer, make_worker_group, rollout_batch, fake_tq):
    """Written advantages = veRL's GRPO + α·Ã, with Ã from J computed by a plain HF forward per cut."""
    from verl_repro.algorithms import compute_repro_process_advantage, select_cuts
    from verl_repro.verl_ext.scoring import render_answers

    batch = rollout_batch(tiny_tokenizer)
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"algorithm.adv_estimator": "grpo"})
    meta = put_rollout(fake_tq, batch, RM_SCORES)
    PPOTrainer._compute_advantage(trainer, meta, {})
    stock = written(fake_tq, meta, "advantages")

    alpha = 0.5
    trainer = make_trainer(base_config, tiny_tokenizer, make_worker_group, **{"repro.alpha": alpha, "repro.num_segments": 2})
    meta = put_rollout(fake_tq, batch, RM_SCORES)
    trainer._compute_advantage(meta, {})
    ours = written(fake_tq, meta, "advantages")

    config = trainer.repro_config
    cuts, cut_mask, has_think_end = select_cuts(
        batch["responses"], batch["response_mask"], batch["entropy"], trainer.boundaries, trainer.think_end_id,
        config.num_segments,
    )
    answers = render_answers(tiny_tokenizer, batch["reward_models"], config)
    j_base = torch.full((6,), float("nan"))
    j_cuts = torch.full(cuts.shape, float("nan"))
    for row in range(6):
        if not (answers.valid[row] and cut_mask[row].any() and not batch["padding"][row]):
            continue
        for slot, cut in enumerate([0] + cuts[row][cut_mask[row]].tolist()):
            ids = torch.cat([batch["prompt_list"][row], batch["response_list"][row][:cut], answers.token_ids[row]])
            with torch.no_grad():
                log_probs = torch.log_softmax(tiny_model(ids.unsqueeze(0)).logits[0, :-1].float(), dim=-1)
            value = log_probs.gather(1, ids[1:].unsqueeze(1))[-answers.token_ids[row].numel():].mean()
            if slot == 0:
                j_base[row] = value
            else:
                j_cuts[row, slot - 1] = value
    process = compute_repro_process_advantage(
        j_cuts, j_base, cuts, cut_mask, has_think_end, batch["response_mask"].float(),
        group_ids=torch.tensor([0, 0, 0, 1, 1, 2]), valid=answers.valid, padding=batch["padding"],
        normalization="grpo", stability_weight=config.stability_weight,
    )
    assert process.counts.with_process_reward == 3
    for row in range(6):
        length = batch["response_list"][row].numel()
        expected = stock[row] + alpha * process.process_advantages[row, :length] * batch["response_mask"][row, :length]
        torch.testing.assert_close(ours[row], expected, rtol=1e-4, atol=1e-4)


def test_other_verl_versions_are_refused_loudly(base_config, monkeypatch):
    import verl as verl_module

    from verl_repro.info import all_patches
    from verl_repro.plugin.patching import VerlVersionError

    monkeypatch.setattr(verl_module, "__version__", "0.9.2")
    with pytest.raises(VerlVersionError, match=r"trainer\.v1\.trainer_mode=repro_sync .*veRL 0\.9\.1 but veRL 0\.9\.2"):
        build_trainer_class()(make_config(base_config))
    listed = all_patches()
    assert listed and all(entry["verl_file"].startswith("verl/") for entry in listed)
    # the glue patches one name: veRL's driver-side validate_config also runs the start-up checks
    assert [entry["target"] for entry in listed if entry["layer"] == "verl_ext"] == ["verl.utils.config:validate_config"]
