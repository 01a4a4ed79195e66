"""Every change the CPU backend makes to a private name of veRL, in one list.

Each :class:`Patch` names the veRL file and attribute it replaces and why. Patches are applied
only in CPU mode (``VERL_PLATFORM=cpu``), each when its veRL module is first imported (see
:mod:`verl_repro.plugin.import_hooks`), and only against the pinned veRL release: another version, or
a target that has disappeared, stops with an error saying which patch to revisit.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType

from verl_repro.plugin.patching import Patch, apply_patch, check_verl_version

REVISIT = "verl_repro/cpu/patches.py"


# --- patch bodies ---------------------------------------------------------------------------------


def _gloo_process_group(module: ModuleType) -> None:
    # veRL builds the backend string "cpu:gloo,<device>:<backend>", which on the CPU platform is
    # "cpu:gloo,cpu:gloo"; torch rejects the duplicated device. The worker group needs plain gloo.
    original = getattr(module, "initialize_global_process_group_ray")
    if getattr(original, "_verl_repro_cpu", False):
        return

    @functools.wraps(original)
    def initialize_with_gloo(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_with_gloo._verl_repro_cpu = True
    module.initialize_global_process_group_ray = initialize_with_gloo


def _engine_workers_gloo(module: ModuleType) -> None:
    # engine_workers binds the function by name at import; point it at the patched one.
    from verl.utils import distributed

    _gloo_process_group(distributed)
    module.initialize_global_process_group_ray = distributed.initialize_global_process_group_ray


def _unpinned_offload_policy(module: ModuleType) -> None:
    # The FSDP2 engine gives the reference model CPUOffloadPolicy(pin_memory=True); pinning host
    # memory needs an accelerator runtime and fails on a CPU-only torch. Same policy, unpinned.
    policy_cls = getattr(module, "CPUOffloadPolicy")
    if getattr(policy_cls, "_verl_repro_cpu", False):
        return

    class UnpinnedCPUOffloadPolicy(policy_cls):
        _verl_repro_cpu = True

        def __init__(self, pin_memory: bool = False, **kwargs):
            super().__init__(pin_memory=False, **kwargs)

    module.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def _sdpa_value_model(module: ModuleType) -> None:
    # The critic's model is loaded with attn_implementation="flash_attention_2" hard-coded, which
    # needs the flash-attn package and a GPU. Same token-classification head, SDPA attention.
    if getattr(module.load_valuehead_model, "_verl_repro_cpu", False):
        return

    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForTokenClassification

        try:
            return AutoModelForTokenClassification.from_pretrained(
                local_path,
                dtype=torch_dtype,
                config=model_config,
                attn_implementation="sdpa",
                trust_remote_code=trust_remote_code,
            )
        except ValueError as error:  # no token-classification head for this architecture
            raise RuntimeError(
                f"the CPU backend builds the critic as AutoModelForTokenClassification; {local_path} "
                f"has no such head ({error}); veRL's trl value-head fallback needs flash-attention"
            ) from error

    load_valuehead_model._verl_repro_cpu = True
    module.load_valuehead_model = load_valuehead_model


# How often the trainer looks for finished rollouts on a CPU (seconds). veRL polls every 2 s, which a
# GPU step of minutes does not notice; a CPU step of the demo is ~30 s, and the rollout's wait then
# ended on the next 2 s tick (timing_s/gen was 8.02 s in every step for ~6.5 s of sampling).
CPU_REPLAY_POLL_INTERVAL_S = 0.2


def _quick_replay_poll(module: ModuleType) -> None:
    # The poll interval is a constructor default that the trainer never passes; change the default
    # on the class itself, so the sync buffer and its async subclass both see it wherever they are
    # imported from.
    buffer_cls = getattr(module, "ReplayBuffer")
    original = buffer_cls.__init__
    if getattr(original, "_verl_repro_cpu", False):
        return

    # A subclass may pass the interval by position; then it is explicit and stays as given.
    position = list(inspect.signature(original).parameters).index("poll_interval") - 1  # less self

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if len(args) <= position:
            kwargs.setdefault("poll_interval", CPU_REPLAY_POLL_INTERVAL_S)
        original(self, *args, **kwargs)

    __init__._verl_repro_cpu = True
    buffer_cls.__init__ = __init__


def _register_hf_rollout_class(module: ModuleType) -> None:
    # get_rollout_class() resolves (name, mode) only through this private table; there is no
    # public registration for worker-side rollout classes in 0.9.1.
    module._ROLLOUT_REGISTRY[("hf", "async")] = "verl_repro.cpu.rollout.HFRolloutAdapter"


PATCHES: tuple[Patch, ...] = (
    Patch(
        verl_file="verl/utils/distributed.py",
        module="verl.utils.distributed",
        target="initialize_global_process_group_ray",
        reason="default backend string 'cpu:gloo,cpu:gloo' is rejected by torch; use 'gloo'",
        apply=_gloo_process_group,
    ),
    Patch(
        verl_file="verl/workers/engine_workers.py",
        module="verl.workers.engine_workers",
        target="initialize_global_process_group_ray",
        reason="imported by name at module load; must see the gloo version above",
        apply=_engine_workers_gloo,
    ),
    Patch(
        verl_file="verl/workers/engine/fsdp/transformer_impl.py",
        module="verl.workers.engine.fsdp.transformer_impl",
        target="CPUOffloadPolicy",
        reason="reference engine hard-codes CPUOffloadPolicy(pin_memory=True); pinning fails without an accelerator",
        apply=_unpinned_offload_policy,
    ),
    Patch(
        verl_file="verl/utils/model.py",
        module="verl.utils.model",
        target="load_valuehead_model",
        reason="the critic's model is loaded with flash_attention_2 hard-coded; load it with sdpa",
        apply=_sdpa_value_model,
    ),
    Patch(
        verl_file="verl/trainer/ppo/v1/replay_buffer.py",
        module="verl.trainer.ppo.v1.replay_buffer",
        target="ReplayBuffer",
        reason="the trainer polls for finished rollouts every 2 s, a quarter of a CPU demo's sampling time",
        apply=_quick_replay_poll,
    ),
    Patch(
        verl_file="verl/workers/rollout/base.py",
        module="verl.workers.rollout.base",
        target="_ROLLOUT_REGISTRY",
        reason="the only way to make get_rollout_class('hf') return the worker-side hf adapter",
        apply=_register_hf_rollout_class,
    ),
)


# --- checks and installation -------------------------------------------------------------------


def install_patches() -> list[str]:
    """Check the veRL version, then apply each patch when its module is imported.

    Returns ``"patch:<file>:<target>"`` entries for the registration report.
    """
    from verl_repro.plugin.import_hooks import when_imported

    listing = "; ".join(f"{patch.verl_file}:{patch.target}" for patch in PATCHES)
    check_verl_version(f"verl-repro's CPU backend ({listing})", REVISIT)
    for patch in PATCHES:
        when_imported(patch.module, functools.partial(apply_patch, patch, revisit=REVISIT))
    return [f"patch:{patch.verl_file}:{patch.target}" for patch in PATCHES]
