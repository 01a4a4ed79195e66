"""Engine vendor ``repro``: veRL's FSDP LM-head engine whose forward also returns, per token,

* ``logit_grad_norm`` (g_t = ||softmax(z_t/T) - onehot(y_t)||₂, the softmax proxy of docs/corrpo.md),
  computed by the fused token-statistics kernel together with ``log_probs`` / ``entropy``
  (docs/kernel.md), and
* when asked (``PARAM_GRAD_REQUEST_KEY``), ``logit_param_grad_norm``: CorR-PO's gradient strength
  ``||∂z[t, y_{t+1}]/∂W||`` for the last decoder layer's attention projections, measured inside the
  same forward by :mod:`verl_repro.gradients` (docs/corrpo.md).

Enable it in every worker with the environment variable ``VERL_ENGINE_VENDOR=repro`` (veRL's own
switch, read by ``EngineRegistry.get_engine_cls``); veRL does not forward the driver's environment,
so pass it to Ray: ``+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR=repro``. Unset, veRL
picks its own engine and this module costs nothing: the plugin only leaves a hook that registers
the class once the process itself imports veRL's FSDP engine.

What the vendor engine changes (``strategy=fsdp|fsdp2``, ``model_type=language_model``):

* **Unfused path, packed sequences** (``use_remove_padding=True``, veRL's default): ``log_probs``,
  ``entropy``, ``sum_pi_squared`` and ``logit_grad_norm`` all come from one pass of kernel (a) over
  the logits, with its backward when the actor trains. Entropy is computed in float32 (veRL computes
  it in the logits' dtype, bf16).
* **Fused path** (``use_fused_kernels=True``, dense text models): the model's forward runs kernel (b)
  from the last hidden states and the lm_head weight (the ``[N, V]`` logits never exist), with its
  backward; unlike veRL's fused kernel it also gives ``sum_pi_squared``, so
  ``calculate_sum_pi_squared`` works with fused kernels here.
* Other layouts (``use_remove_padding=False``, top-k distillation): veRL's outputs unchanged, plus
  ``logit_grad_norm`` from the logits.

When it is computed: if the micro-batch carries the non-tensor flag ``calculate_logit_grad_norm``
(e.g. ``batch.extra_info["calculate_logit_grad_norm"] = True`` before ``compute_log_prob``), that
decides; otherwise it is computed in the no-grad passes that ask for entropy — veRL's old-log-prob
pass — so the trainer finds it in the TransferQueue next to ``entropy``. The output is nested
(jagged) over the full sequence like ``log_probs``: token ``t`` holds g of the distribution that
predicts token ``t+1``; ``verl.workers.utils.padding.response_from_nested(td["logit_grad_norm"],
response_mask)`` aligns it to the response as veRL does for ``old_log_probs``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch

from verl_repro.verl_ext.switches import ENGINE_VENDOR
from verl_repro.verl_ext.transport import jagged

logger = logging.getLogger("verl_repro")

OUTPUT_KEY = "logit_grad_norm"
REQUEST_KEY = "calculate_logit_grad_norm"
# CorR-PO's parameter-gradient signal (verl_repro.gradients): requested with a JSON spec under
# PARAM_GRAD_REQUEST_KEY, returned nested under PARAM_GRAD_KEY.
PARAM_GRAD_KEY = "logit_param_grad_norm"
PARAM_GRAD_REQUEST_KEY = "calculate_logit_param_grad"
BACKEND_ENV = "VERL_REPRO_TOKEN_STATS_BACKEND"
FSDP_BACKENDS = ("fsdp", "fsdp2")
# veRL registers its FSDP engines for cuda and npu; the CPU backend (verl_repro.cpu) adds cpu.
DEFAULT_DEVICES = ("cuda", "npu", "cpu")
TRANSFORMER_IMPL = "verl.workers.engine.fsdp.transformer_impl"


def token_stats_backend() -> str:
    """Kernel backend used by the engine: ``auto`` unless ``VERL_REPRO_TOKEN_STATS_BACKEND`` says
    ``triton`` or ``torch`` (the torch reference everywhere, e.g. to rule the kernel out)."""
    from verl_repro.kernels import BACKENDS

    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be {'|'.join(BACKENDS)}, got {backend!r}")
    return backend


# ----------------------------------------------------------------------------------------------
# Fused forward (use_fused_kernels=True): kernel (b) inside the model's forward
# ----------------------------------------------------------------------------------------------


def _fused_output_class():
    from verl.models.transformers.dense_common import CausalLMOutputForPPO

    @dataclass
    class CausalLMOutputWithTokenStats(CausalLMOutputForPPO):
        """veRL's fused output plus the two statistics its kernel does not give."""

        sum_pi_squared: Optional[torch.FloatTensor] = None
        logit_grad_norm: Optional[torch.FloatTensor] = None

    return CausalLMOutputWithTokenStats


_output_class = None


def forward_with_token_stats(
    self,
    input_ids: Optional[torch.LongTensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.LongTensor] = None,
    past_key_values=None,
    inputs_embeds: Optional[torch.FloatTensor] = None,
    labels: Optional[torch.LongTensor] = None,
    use_cache: Optional[bool] = None,
    output_attentions: Optional[bool] = None,
    output_hidden_states: Optional[bool] = None,
    return_dict: Optional[bool] = None,
    cache_position: Optional[torch.LongTensor] = None,
    logits_to_keep=0,
    temperature: float = 1.0,
    shift_labels: Optional[torch.LongTensor] = None,
    **unused_kwargs,
):
    """Causal-LM forward for veRL's fused path: decoder, then kernel (b) on the last hidden states
    and ``lm_head.weight``. Same contract as veRL's ``forward_with_triton_backend`` (labels: the
    engine's globally rolled ``shift_labels`` first), plus ``sum_pi_squared`` / ``logit_grad_norm``."""
    global _output_class
    from verl.models.transformers.dense_common import forward_base_model

    from verl_repro.kernels import token_stats_from_hidden

    if not return_dict:
        raise NotImplementedError("forward_with_token_stats returns a ModelOutput; call it with return_dict=True")
    outputs = forward_base_model(
        self,
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        output_attentions=output_attentions,
        output_hidden_states=output_hidden_states,
        return_dict=return_dict,
        cache_position=cache_position,
    )
    if shift_labels is not None:
        rolled_labels = shift_labels
    elif labels is not None:
        rolled_labels = torch.roll(labels, shifts=-1, dims=-1)
    elif input_ids is not None:
        rolled_labels = torch.roll(input_ids, shifts=-1, dims=-1)
    else:
        raise RuntimeError("forward_with_token_stats needs shift_labels, labels or input_ids")
    stats = token_stats_from_hidden(
        outputs[0], self.lm_head.weight, rolled_labels, temperature=temperature, backend=token_stats_backend()
    )
    if _output_class is None:
        _output_class = _fused_output_class()
    return _output_class(
        log_probs=stats.logprob,
        entropy=stats.entropy,
        sum_pi_squared=stats.sum_p_squared,
        logit_grad_norm=stats.grad_norm,
        past_key_values=outputs.past_key_values,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def install_fused_forward(module: torch.nn.Module) -> bool:
    """Swap veRL's fused forward of a dense text model for :func:`forward_with_token_stats`.

    veRL patches the model *class* (``patch_forward_with_backends``); this replaces that patch the
    same way, and only where veRL installed its generic dense forward (multimodal models keep
    veRL's). Returns whether it was installed."""
    from verl.models.transformers import dense_common

    current = type(module).forward
    if current is forward_with_token_stats:
        return True
    if current not in (dense_common.forward_with_torch_backend, dense_common.forward_with_triton_backend):
        return False
    type(module).forward = forward_with_token_stats
    return True


# ----------------------------------------------------------------------------------------------
# The engine mixin
# ----------------------------------------------------------------------------------------------


def param_grad_spec(corr) -> str:
    """The request a trainer attaches to a batch (``batch.extra_info[PARAM_GRAD_REQUEST_KEY]``) for
    CorR-PO's parameter-gradient signal, from a validated ``CorrConfig``: a JSON string, since
    non-tensor batch data crosses Ray."""
    import json

    method = corr.method
    if method == "auto":
        from verl_repro.gradients import FAST_MATRICES

        method = "fast" if set(corr.matrices) <= set(FAST_MATRICES) else "exact"
    return json.dumps({"matrices": list(corr.matrices), "norm": corr.norm, "aggregate": corr.aggregate, "method": method})


def param_grad_request(micro_batch) -> Optional[dict]:
    """The decoded request on a micro-batch, or None (no request, or a pass with gradients on)."""
    import json

    from verl.utils import tensordict_utils as tu

    raw = tu.get_non_tensor_data(data=micro_batch, key=PARAM_GRAD_REQUEST_KEY, default=None)
    if not raw or torch.is_grad_enabled():
        return None
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def _nest(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    return jagged(values, cu_seqlens.diff())


def _pack_padded(values: torch.Tensor, input_ids) -> torch.Tensor:
    """[bsz, T, ...] padded per-sequence values -> [nnz, ...] packed in the order of ``input_ids``."""
    seq_lengths = input_ids.offsets().diff()
    positions = torch.arange(values.shape[1], device=values.device)
    return values[positions < seq_lengths.to(values.device).unsqueeze(1)]


class TokenStatsEngineMixin:
    """Adds ``logit_grad_norm`` to an FSDP LM-head engine's model output; put it first in the bases."""

    def _build_module(self):
        module = super()._build_module()
        self._repro_fused_forward = False
        if self.model_config.use_fused_kernels:
            self._repro_fused_forward = install_fused_forward(module)
            if not self._repro_fused_forward:
                logger.warning(
                    "verl-repro engine: %s keeps veRL's fused forward; %s is unavailable with "
                    "use_fused_kernels=True for this model",
                    type(module).__name__,
                    OUTPUT_KEY,
                )
        return module

    def forward_step(self, micro_batch, loss_function, forward_only):
        # RePro's prefix-shared scoring batches (repro.scoring_mode=prefix_shared) need a tree
        # attention layout on this forward; every other batch takes veRL's path unchanged.
        from verl_repro.verl_ext.engine_step import is_prefix_shared_batch, prefix_shared_forward_step

        if is_prefix_shared_batch(micro_batch):
            return prefix_shared_forward_step(self, micro_batch, loss_function, forward_only, super().forward_step)
        spec = param_grad_request(micro_batch)
        if spec is None:
            return super().forward_step(micro_batch, loss_function, forward_only)
        from verl_repro.gradients import capture_last_layer

        if getattr(self, "use_ulysses_sp", False):
            raise RuntimeError(f"verl-repro engine: {PARAM_GRAD_KEY} does not support Ulysses sequence parallelism")
        self._repro_param_grad = None
        with capture_last_layer(self.module, on_output=lambda capture: self._measure_param_grad(capture, spec)):
            return super().forward_step(micro_batch, loss_function, forward_only)

    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        self._repro_model_inputs = model_inputs, output_args
        return model_inputs, output_args

    def _measure_param_grad(self, capture, spec: dict) -> None:
        """Inside the last decoder layer's forward hook, where FSDP still holds that layer's and the
        root's parameters unsharded: every token's ``||∂z[t, y_t]/∂W||`` (verl_repro.gradients)."""
        from torch.distributed.tensor import DTensor

        from verl_repro.gradients import decoder_layers, final_norm, last_layer_norms, sequence_ids

        model_inputs, output_args = self._repro_model_inputs
        input_ids = model_inputs["input_ids"]
        if model_inputs.get("attention_mask") is None:  # packed: [1, nnz + pad]
            labels = output_args["input_ids_rmpad_rolled"].reshape(1, -1)
            segments = sequence_ids(model_inputs["position_ids"].reshape(1, -1))
            valid = torch.ones_like(labels, dtype=torch.bool)
            if output_args.get("pad_size"):
                valid[:, -int(output_args["pad_size"]):] = False
        else:  # padded rows [B, T]
            mask = model_inputs["attention_mask"].bool()
            labels = torch.roll(input_ids, shifts=-1, dims=1)
            segments = torch.where(mask, 0, -1)
            valid = mask
        weight = self.module.lm_head.weight
        if isinstance(weight, DTensor):
            weight = weight.full_tensor()
        norms = last_layer_norms(
            decoder_layers(self.module)[-1], final_norm(self.module), capture, weight[labels].detach(), valid, segments,
            matrices=spec["matrices"], norm=spec["norm"], method=spec["method"],
        )
        values = norms.sum(-1) if spec["aggregate"] == "sum" else norms.mean(-1)
        self._repro_param_grad = values.masked_fill(~valid, 0).float()

    def _wants_logit_grad_norm(self, micro_batch, calculate_entropy: bool) -> bool:
        from verl.utils import tensordict_utils as tu

        requested = tu.get_non_tensor_data(data=micro_batch, key=REQUEST_KEY, default=None)
        if requested is not None:
            return bool(requested)
        # Default: the no-grad passes that want entropy — veRL's old-log-prob pass.
        return calculate_entropy and not torch.is_grad_enabled()

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = self._token_stats_outputs(output, output_args, micro_batch, logits_processor_func)
        values = getattr(self, "_repro_param_grad", None)
        if values is not None:
            from verl.utils import tensordict_utils as tu

            self._repro_param_grad = None
            use_remove_padding = bool(tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True))
            model_output[PARAM_GRAD_KEY] = self._nest_like_log_probs(values, output_args, micro_batch, use_remove_padding)
        return model_output

    def _token_stats_outputs(self, output, output_args, micro_batch, logits_processor_func):
        from verl.utils import tensordict_utils as tu

        flag = lambda key: bool(tu.get_non_tensor_data(data=micro_batch, key=key, default=False))  # noqa: E731
        use_remove_padding = bool(tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True))
        calculate_entropy = flag("calculate_entropy")
        want_grad_norm = self._wants_logit_grad_norm(micro_batch, calculate_entropy)
        distillation = flag("distillation_use_topk") or flag("distillation_only")

        if flag("use_fused_kernels"):
            return self._fused_outputs(output, output_args, micro_batch, logits_processor_func, want_grad_norm)
        if use_remove_padding and not distillation:
            return self._packed_outputs_from_logits(output, output_args, micro_batch, want_grad_norm)
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        if want_grad_norm:
            model_output[OUTPUT_KEY] = self._grad_norm_from_logits(output, output_args, micro_batch, use_remove_padding)
        return model_output

    # -- unfused, packed: everything from one kernel pass -----------------------------------------

    def _packed_outputs_from_logits(self, output, output_args, micro_batch, want_grad_norm):
        from verl.utils import tensordict_utils as tu

        from verl_repro.kernels import token_stats_from_logits

        logits = self._full_logits(output.logits.squeeze(0))  # [(nnz / sp) + pad, V]
        stats = token_stats_from_logits(
            logits,
            output_args["input_ids_rmpad_rolled"],
            temperature=output_args["temperature_rmpad"],
            backend=token_stats_backend(),
        )
        cu_seqlens = micro_batch["input_ids"].offsets()
        pad_size = output_args["pad_size"]

        def nested(values):
            return _nest(self._gather_and_unpad_packed(values, pad_size), cu_seqlens)

        model_output = {"log_probs": nested(stats.logprob)}
        if tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=False):
            model_output["entropy"] = nested(stats.entropy)
        if tu.get_non_tensor_data(data=micro_batch, key="calculate_sum_pi_squared", default=False):
            model_output["sum_pi_squared"] = nested(stats.sum_p_squared)
        if want_grad_norm:
            model_output[OUTPUT_KEY] = nested(stats.grad_norm)
        return model_output

    # -- fused: kernel (b) already ran inside the model's forward ----------------------------------

    def _fused_outputs(self, output, output_args, micro_batch, logits_processor_func, want_grad_norm):
        from verl.utils import tensordict_utils as tu

        extra = {}
        if want_grad_norm:
            extra[OUTPUT_KEY] = getattr(output, OUTPUT_KEY, None)
        wants_sum_pi_squared = bool(tu.get_non_tensor_data(data=micro_batch, key="calculate_sum_pi_squared", default=False))
        if wants_sum_pi_squared:
            extra["sum_pi_squared"] = getattr(output, "sum_pi_squared", None)
        missing = [key for key, value in extra.items() if value is None]
        if missing:
            raise RuntimeError(
                f"verl-repro engine: {missing} requested with use_fused_kernels=True, but this model kept "
                "veRL's fused forward (only dense text models get ours); set "
                "actor_rollout_ref.model.use_fused_kernels=False"
            )
        if wants_sum_pi_squared:
            # veRL refuses Σp² with fused kernels because its kernel has none; ours supplies it.
            tu.assign_non_tensor(micro_batch, calculate_sum_pi_squared=False)
        try:
            model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        finally:
            if wants_sum_pi_squared:
                tu.assign_non_tensor(micro_batch, calculate_sum_pi_squared=True)
        use_remove_padding = bool(tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True))
        for key, values in extra.items():
            model_output[key] = self._nest_like_log_probs(values, output_args, micro_batch, use_remove_padding)
        return model_output

    # -- other layouts: veRL's outputs plus g from the logits --------------------------------------

    def _grad_norm_from_logits(self, output, output_args, micro_batch, use_remove_padding):
        from verl_repro.kernels import token_stats_from_logits

        input_ids = micro_batch["input_ids"]
        if use_remove_padding:
            logits = self._full_logits(output.logits.squeeze(0))
            labels = output_args["input_ids_rmpad_rolled"]
            temperature = output_args["temperature_rmpad"]
        else:
            logits = _pack_padded(self._full_logits(output.logits), input_ids)  # [nnz, V]
            labels = output_args["input_ids_rmpad_rolled"]
            seq_lengths = input_ids.offsets().diff().to(logits.device)
            temperature = output_args["temperature"].to(logits.device).repeat_interleave(seq_lengths)
        with torch.no_grad():
            grad_norm = token_stats_from_logits(
                logits, labels, temperature=temperature, backend=token_stats_backend()
            ).grad_norm
        if use_remove_padding:
            return self._nest_like_log_probs(grad_norm, output_args, micro_batch, True)
        return _nest(grad_norm, input_ids.offsets())

    def _nest_like_log_probs(self, values, output_args, micro_batch, use_remove_padding):
        input_ids = micro_batch["input_ids"]
        if use_remove_padding:
            values = self._gather_and_unpad_packed(values.reshape(-1), output_args["pad_size"])
        else:
            values = _pack_padded(values, input_ids)
        return _nest(values, input_ids.offsets())

    @staticmethod
    def _full_logits(logits):
        from torch.distributed.tensor import DTensor

        # With tensor parallelism the logits are vocabulary-sharded DTensors (as in veRL).
        return logits.full_tensor() if isinstance(logits, DTensor) else logits


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------

_engine_classes: dict[type, type] = {}


def engine_class_for(base: type) -> type:
    """The vendor engine class on top of ``base`` (an FSDP LM-head engine class), built once."""
    if base not in _engine_classes:
        name = f"Repro{base.__name__}"
        _engine_classes[base] = type(name, (TokenStatsEngineMixin, base), {"__module__": __name__, "__qualname__": name})
    return _engine_classes[base]


def register_engine_vendor(
    devices=DEFAULT_DEVICES, transformer_impl: ModuleType | None = None, base: type | None = None
) -> list[str]:
    """Register the ``repro`` vendor engine for ``devices`` and both FSDP backends, now.

    Args:
        devices: device names as veRL's ``EngineRegistry`` keys them (``cuda``, ``npu``, ``cpu``).
        transformer_impl: veRL's FSDP engine module, if the caller already has it.
        base: the engine class to extend (default: veRL's ``FSDPEngineWithLMHead``).

    Returns the ``engine:`` entries now in the registry (already present ones included); a key held
    by another class is left alone with a warning.
    """
    from verl.workers.engine.base import EngineRegistry

    if base is None:
        if transformer_impl is None:
            import importlib

            transformer_impl = importlib.import_module(TRANSFORMER_IMPL)
        base = transformer_impl.FSDPEngineWithLMHead
    engine_class = engine_class_for(base)
    added = []
    for backend in FSDP_BACKENDS:
        for device in devices:
            try:
                EngineRegistry.register(model_type="language_model", backend=backend, device=device, vendor=ENGINE_VENDOR)(
                    engine_class
                )
            except AssertionError:  # veRL asserts the (device, vendor) key is new
                holder = EngineRegistry._engines["language_model"][backend][(device, ENGINE_VENDOR)]
                if holder is not engine_class:
                    logger.warning(
                        "verl-repro: engine key (%s, %s) for %s is held by %s; left alone", device, ENGINE_VENDOR, backend, holder
                    )
                    continue
            added.append(f"engine:{ENGINE_VENDOR}/{backend}" + ("" if device == "cuda" else f"@{device}"))
    return added


def register() -> list[str]:
    """Plugin hook: register the vendor engine once this process imports veRL's FSDP engine
    (immediately if it already has), so a plain ``import verl`` does not pay for that import."""
    from verl_repro.plugin.registrations import register_when_imported

    register_when_imported(__name__, TRANSFORMER_IMPL, lambda module: register_engine_vendor(transformer_impl=module))
    return [f"engine:{ENGINE_VENDOR}/{backend}" + ("" if device == "cuda" else f"@{device}") for backend in FSDP_BACKENDS for device in DEFAULT_DEVICES]


__all__ = [
    "BACKEND_ENV",
    "OUTPUT_KEY",
    "PARAM_GRAD_KEY",
    "PARAM_GRAD_REQUEST_KEY",
    "REQUEST_KEY",
    "TokenStatsEngineMixin",
    "engine_class_for",
    "forward_with_token_stats",
    "install_fused_forward",
    "register",
    "register_engine_vendor",
]
