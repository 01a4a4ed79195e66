"""The ``repro_sync`` trainer: veRL's synchronous v1 trainer plus the inputs our estimators need.

veRL 0.9.1 calls an advantage estimator with ``token_level_rewards``, ``response_mask``, the
``algorithm`` config and the uid index only, and its step has no hook between the reference pass
and the advantage step (docs/repro.md, "Using RePro in a veRL recipe"). So the plugin registers
``ReproSyncTrainer`` (a ``PPOTrainerSync`` subclass) with veRL's ``register_trainer`` under
``repro_sync``; the stock entry point selects it:

    python -m verl.trainer.main_ppo +repro=default algorithm.adv_estimator=repro_grpo ...

(``+repro=default`` adds the ``repro`` group and sets ``trainer.v1.trainer_mode=repro_sync``.)
What it changes, and only for estimators declared in ``estimator_registry`` (others run veRL's code
unchanged):

* ``__init__`` validates the ``repro`` group and the estimator's needs (reference model for
  ``scorer=ref``, critic for ``repro_ppo``, a source of ``logit_grad_norm`` for CorR-PO) before
  any worker starts, with the driver's own start-up checks (:mod:`verl_repro.verl_ext.preflight`),
  and resets ``trainer.v1.trainer_mode`` to ``"sync"``: veRL switches on async behaviour (async
  replay buffer, ``gen_batch_size=1``, TransferQueue checkpoints) for every mode string other than
  ``"sync"``, and this trainer must behave exactly like the sync one.
* ``_init_tokenizer`` resolves the ``</think>`` id and the step-boundary tables once.
* ``_compute_old_log_prob`` asks the actor for ``Σp²`` when CorR-PO derives ``logit_grad_norm`` from it.
* ``_compute_advantage`` fetches the extra fields from the TransferQueue, runs RePro's
  ground-truth scoring (timed as ``timing_s/repro_scoring``) and calls the estimator with the
  extra keyword arguments of ``docs/dev/estimator_contract.md``; KL-in-reward, rollout correction
  and the write-back are veRL's own steps, in veRL's order.

Checkpointing, resume, validation and the rest of the loop are inherited unchanged.

Importing veRL's v1 trainer costs seconds and ~100 MB in every process that runs ``import verl``
(every Ray worker), so :func:`register` defers the class definition until veRL itself imports
``verl.trainer.ppo.v1.trainer_sync`` (``main_ppo``'s task runner does, right before looking the
trainer up), with the package's import hook :func:`verl_repro.plugin.import_hooks.when_imported`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from verl_repro.config import ConfigError, setting
from verl_repro.verl_ext import estimator_registry
from verl_repro.verl_ext.preflight import validate_repro_setup
from verl_repro.verl_ext.switches import TRAINER_MODE, engine_vendor_requested

logger = logging.getLogger("verl_repro")

SYNC_TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_sync"

# What veRL's own _compute_advantage fetches (verl/trainer/ppo/v1/trainer_base.py); the fields of
# each extra estimator input come from the estimator table (estimator_registry.INPUT_FIELDS).
BASE_ADVANTAGE_FIELDS = ["uid", "response_mask", "rm_scores", "rollout_log_probs", "old_log_probs", "ref_log_prob", "values"]
# Per-token engine outputs laid out over the full sequence (shifted by one, like log_probs).
FULL_SEQUENCE_FIELDS = ("logit_grad_norm", "sum_pi_squared", "logit_param_grad_norm")


def estimator_needs(config: Any) -> tuple[str, ...]:
    """Extra inputs the configured ``algorithm.adv_estimator`` takes (empty for veRL's own)."""
    return estimator_registry.estimator_needs(config.algorithm.adv_estimator)


# ----------------------------------------------------------------------------- batch helpers


def non_tensor_list(value: Any, batch: int) -> list:
    """A per-sample non-tensor field from the TransferQueue (NonTensorStack / list / array) as a list."""
    if value is None:
        return [None] * batch
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(items) != batch:
        raise ValueError(f"non-tensor field has {len(items)} entries for {batch} samples")
    return list(items)


def as_jagged(tensor: torch.Tensor) -> torch.Tensor:
    """A per-sample field as a jagged nested tensor. The TransferQueue stores a field densely when
    every sample has the same shape, and then returns a plain ``[B, L, ...]`` tensor."""
    if tensor.is_nested:
        return tensor
    from verl_repro.verl_ext.transport import jagged

    batch, length = tensor.shape[0], tensor.shape[1]
    return jagged(tensor.reshape(batch * length, *tensor.shape[2:]), torch.full((batch,), length))


def response_aligned(field: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """A nested per-token field as response-aligned nested ``[B, R_b]``: fields stored by a worker pass
    cover prompt + response (shifted by one, as veRL's ``log_probs``); response-aligned ones pass through."""
    from verl.workers.utils.padding import response_from_nested

    if torch.equal(field.offsets().diff(), response_mask.offsets().diff()):
        return field
    return response_from_nested(field, response_mask)


def logit_grad_norm_from_sum_pi_squared(log_probs: torch.Tensor, sum_pi_squared: torch.Tensor) -> torch.Tensor:
    """``g_t = ||p − onehot(y)||₂ = sqrt(Σp² − 2·p_y + 1)`` (docs/corrpo.md) from veRL's unfused outputs."""
    p_y = log_probs.float().exp()
    return torch.sqrt((sum_pi_squared.float() - 2.0 * p_y + 1.0).clamp_min(0.0))


def mesh_dp_size(worker_group: Any, mesh: str) -> int:
    """Data-parallel size of ``mesh`` in a veRL worker group (as ``_balance_batch`` reads it)."""
    if mesh not in worker_group._dispatch_info:
        worker_group._dispatch_info[mesh] = worker_group._query_dispatch_info(mesh)
    return max(worker_group._dispatch_info[mesh]) + 1


# ----------------------------------------------------------------------------- the trainer


class _ReproSyncMixin:
    """The ``repro_sync`` behaviour, mixed into veRL's ``PPOTrainerSync`` (see the module docstring)."""

    def __init__(self, config):
        from omegaconf import open_dict

        from verl_repro.plugin.patching import check_verl_version

        check_verl_version(f"trainer.v1.trainer_mode={TRAINER_MODE}", "verl_repro/verl_ext/patches.py")
        self.repro_config = validate_repro_setup(config)
        from verl_repro.verl_ext.estimators import log_paper_setting_differences

        log_paper_setting_differences(str(config.algorithm.adv_estimator), self.repro_config)
        self.requested_trainer_mode = config.trainer.v1.trainer_mode
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        self.think_end_id: Optional[int] = None
        self.boundaries = None  # StepBoundaries of the policy tokenizer
        super().__init__(config)

    # -- start-up -----------------------------------------------------------------------

    def _init_tokenizer(self):
        super()._init_tokenizer()
        if estimator_needs(self.config):
            self._init_repro_tokens()

    def _init_repro_tokens(self) -> None:
        from verl_repro.algorithms import step_boundaries, think_end_token_id

        try:
            self.think_end_id = think_end_token_id(self.tokenizer, self.repro_config.think_end_token)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if self.repro_config.answer_bos and getattr(self.tokenizer, "bos_token_id", None) is None:
            logger.warning("verl-repro: repro.answer_bos=True but this tokenizer has no BOS token; answers are scored without one")
        self.boundaries = step_boundaries(self.tokenizer, tuple(self.repro_config.boundary_patterns))
        if not self.boundaries.can_end_a_step():
            logger.warning(
                "verl-repro: no text of this tokenizer can end with repro.boundary_patterns=%r; every response "
                "gets only the end-of-thinking cut", self.repro_config.boundary_patterns,
            )

    # -- old log-prob pass ------------------------------------------------------------------

    def _wants_sum_pi_squared(self) -> bool:
        return (
            "logit_grad_norm" in estimator_needs(self.config)
            and not engine_vendor_requested(self.config)
            and bool(setting(self.config, "actor_rollout_ref.actor.calculate_sum_pi_squared", False))
        )

    def _wants_param_grad(self) -> bool:
        return "logit_grad_norm" in estimator_needs(self.config) and self.repro_config.corr.signal == "param_grad"

    def _wants_softmax_grad(self) -> bool:
        return "logit_grad_norm" in estimator_needs(self.config) and self.repro_config.corr.signal == "softmax_grad"

    def _compute_old_log_prob(self, batch, metrics):
        from verl_repro.verl_ext.engine import PARAM_GRAD_REQUEST_KEY, REQUEST_KEY, param_grad_spec

        requests = {}
        if self._wants_sum_pi_squared():
            requests["calculate_sum_pi_squared"] = True
        if self._wants_param_grad():
            requests[PARAM_GRAD_REQUEST_KEY] = param_grad_spec(self.repro_config.corr)
        if engine_vendor_requested(self.config) and not self._wants_softmax_grad():
            # The vendor adds the softmax-proxy g to this pass unless told not to; nothing here reads it
            # (on padded rows it is a second pass over the logits: 4.6 s of a 12 s pass in the demo).
            requests[REQUEST_KEY] = False
        if not requests:
            return super()._compute_old_log_prob(batch, metrics)
        batch.extra_info.update(requests)
        try:
            output = super()._compute_old_log_prob(batch, metrics)
        finally:
            # Only this pass: later passes on the same batch (ref, actor update) must not pay for them.
            for key in requests:
                batch.extra_info.pop(key, None)
        for key in requests:
            getattr(output, "extra_info", {}).pop(key, None)
        return output

    # -- advantage step -----------------------------------------------------------------

    def _compute_advantage(self, batch, metrics):
        needs = estimator_needs(self.config)
        if not needs:
            return super()._compute_advantage(batch, metrics)
        return self._compute_advantage_with_inputs(batch, metrics, needs)

    def _scoring_backend(self):
        from verl_repro.verl_ext.transport import LogProbBackend

        extra = {}
        if self.repro_config.scorer == "ref":
            if self.ref_in_actor:  # LoRA: the reference is the actor without its adapter
                worker_group, method, mesh, extra = self.actor_rollout_wg, "compute_log_prob", "actor", {"no_lora_adapter": True}
            else:
                worker_group, method, mesh = self.ref_policy_wg, "compute_ref_log_prob", "ref"
        else:
            worker_group, method, mesh = self.actor_rollout_wg, "compute_log_prob", "actor"
        return LogProbBackend(
            getattr(worker_group, method),
            dp_size=mesh_dp_size(worker_group, mesh),
            temperature=self.config.actor_rollout_ref.rollout.temperature,
            extra_non_tensor=extra,
        )

    def _compute_advantage_with_inputs(self, batch, metrics, needs: tuple[str, ...]):
        import transfer_queue as tq

        from verl.protocol import DataProto
        from verl.trainer.ppo import core_algos
        from verl.trainer.ppo.ray_trainer import apply_kl_penalty
        from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
        from verl.workers.utils.padding import response_to_nested

        estimator = str(self.config.algorithm.adv_estimator)
        fields = list(BASE_ADVANTAGE_FIELDS)
        fields += [name for name in estimator_registry.fields_to_fetch(needs) if name not in fields]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        size = len(batch)
        for name in ("response_mask", "responses", "input_ids", *FULL_SEQUENCE_FIELDS):
            if name in data.keys():
                data[name] = as_jagged(data[name])
        response_mask = data["response_mask"]
        padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=torch.bool)

        # Fields that are not response-aligned leave before padding to [B, T].
        reward_models = non_tensor_list(data.pop("reward_model"), size) if "reward_model" in data.keys() else [None] * size
        input_ids = data.pop("input_ids") if "input_ids" in data.keys() else None
        prompt_lengths = None
        if input_ids is not None and "responses" in data.keys():
            prompt_lengths = input_ids.offsets().diff() - data["responses"].offsets().diff()
        for name in FULL_SEQUENCE_FIELDS:
            if name in data.keys():
                data[name] = response_aligned(data[name], response_mask)

        data = DataProto(batch=data.to_padded_tensor())
        data.batch["token_level_scores"] = data.batch["rm_scores"]
        data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)
        # Cuts are chosen on the tokens the policy wrote, before rollout correction may mask some out.
        written_mask = data.batch["response_mask"].clone()

        # 1-2. veRL's own steps, in its order: KL penalty in the reward, rollout correction.
        if self.config.algorithm.use_kl_in_reward:
            data, kl_metrics = apply_kl_penalty(data, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=self.config.algorithm.kl_penalty)
            metrics.update(kl_metrics)
        else:
            data.batch["token_level_rewards"] = data.batch["token_level_scores"]
        rollout_corr_config = self.config.algorithm.get("rollout_correction", None)
        bypass = rollout_corr_config and rollout_corr_config.get("bypass_mode", False)
        rollout_correction = rollout_corr_config is not None and "rollout_log_probs" in data.batch and not bypass
        if rollout_correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(data, rollout_corr_config)
            metrics.update(is_metrics)

        # 3. the estimator, with its extra inputs.
        estimator_metrics: dict[str, float] = {}
        inputs = self._estimator_inputs(needs, data, estimator_metrics, input_ids, prompt_lengths, reward_models, padding, written_mask)
        kwargs = {
            "token_level_rewards": data.batch["token_level_rewards"],
            "response_mask": data.batch["response_mask"],
            "config": self.config.algorithm,
            "index": data.non_tensor_batch["uid"],
            **inputs,
        }
        if "reward_baselines" in data.batch:
            kwargs["reward_baselines"] = data.batch["reward_baselines"]
        advantages, returns = core_algos.get_adv_estimator_fn(estimator)(**kwargs)
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        metrics.update(estimator_metrics)

        # 4. write back, as veRL does.
        out_fields = ["advantages", "returns"]
        if self.config.algorithm.use_kl_in_reward:
            out_fields.append("token_level_rewards")
        if rollout_correction:
            out_fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                out_fields.append("rollout_is_weights")
        from tensordict import TensorDict

        output = TensorDict({name: response_to_nested(data.batch[name], response_mask) for name in out_fields}, batch_size=size)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

    def _estimator_inputs(self, needs, data, estimator_metrics, input_ids, prompt_lengths, reward_models, padding, written_mask) -> dict:
        inputs: dict[str, Any] = {}
        tensors = data.batch
        for need in needs:
            if need == "repro_config":
                inputs[need] = self.repro_config
            elif need == "metrics":
                inputs[need] = estimator_metrics
            elif need == "think_end_id":
                inputs[need] = self.think_end_id
            elif need == "responses":
                inputs[need] = tensors["responses"] if "responses" in tensors else None
            elif need == "entropy":
                inputs[need] = tensors["entropy"] if "entropy" in tensors else None
            elif need == "values":
                inputs[need] = tensors["values"] if "values" in tensors else None
            elif need == "logit_grad_norm":
                inputs[need] = self._logit_grad_norm(tensors)
            elif need == "repro_scoring":
                inputs[need] = self._repro_scoring(tensors, input_ids, prompt_lengths, reward_models, padding, written_mask)
            else:
                raise ValueError(f"repro_sync trainer cannot provide estimator input {need!r}")
        return inputs

    def _logit_grad_norm(self, tensors) -> Optional[torch.Tensor]:
        """The per-token gradient strength CorR-PO correlates with entropy (``repro.corr.signal``)."""
        if self.repro_config.corr.signal == "param_grad":
            return tensors["logit_param_grad_norm"].float() if "logit_param_grad_norm" in tensors else None
        if "logit_grad_norm" in tensors:
            return tensors["logit_grad_norm"].float()
        if "sum_pi_squared" in tensors and "old_log_probs" in tensors:
            return logit_grad_norm_from_sum_pi_squared(tensors["old_log_probs"], tensors["sum_pi_squared"])
        return None

    def _repro_scoring(self, tensors, input_ids, prompt_lengths, reward_models, padding, response_mask):
        from verl.utils.debug import marked_timer

        from verl_repro.verl_ext.scoring import score_ground_truth

        missing = [name for name in ("responses", "entropy") if name not in tensors]
        if input_ids is None:
            missing.append("input_ids")
        if missing:
            raise RuntimeError(f"RePro scoring: the TransferQueue batch has no {missing} (needed to cut and score responses)")
        with marked_timer("repro_scoring", self.timing_raw, color="purple"):
            return score_ground_truth(
                input_ids=input_ids,
                prompt_lengths=prompt_lengths,
                responses=tensors["responses"],
                response_mask=response_mask,
                entropy=tensors["entropy"],
                reward_models=reward_models,
                padding=padding,
                tokenizer=self.tokenizer,
                config=self.repro_config,
                boundaries=self.boundaries,
                think_end_id=self.think_end_id,
                backend=self._scoring_backend(),
            )


# ----------------------------------------------------------------------------- registration

_trainer_class: Optional[type] = None


def build_trainer_class() -> type:
    """Define ``ReproSyncTrainer`` on top of veRL's ``PPOTrainerSync`` and register it as ``repro_sync``."""
    global _trainer_class
    if _trainer_class is not None:
        return _trainer_class
    # Importing veRL's v1 package can itself trigger the deferred registration (the import hook
    # below), which then has already defined the class: check again after the imports.
    from verl.trainer.ppo.v1.trainer_base import register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    if _trainer_class is None:

        class ReproSyncTrainer(_ReproSyncMixin, PPOTrainerSync):
            """veRL's synchronous PPO trainer with RePro scoring and the extra estimator inputs."""

        ReproSyncTrainer.__module__ = __name__
        ReproSyncTrainer.__qualname__ = "ReproSyncTrainer"
        _trainer_class = register_trainer(TRAINER_MODE)(ReproSyncTrainer)
    return _trainer_class


def __getattr__(name: str):
    if name == "ReproSyncTrainer":
        return build_trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> list[str]:
    from verl_repro.plugin.registrations import register_when_imported

    # build_trainer_class is looked up at call time, so a test can make it fail.
    register_when_imported(__name__, SYNC_TRAINER_MODULE, lambda trainer_sync: build_trainer_class())
    return [f"trainer:{TRAINER_MODE}"]
