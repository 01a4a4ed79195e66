"""Training engines for device ``cpu``: veRL's own FSDP engines, registered for the host.

veRL 0.9.1 registers its FSDP engines for ``cuda`` and ``npu`` only; FSDP2 itself runs on CPU
tensors over gloo, so the CPU backend registers the same classes under device ``cpu``. (FSDP1,
``strategy=fsdp``, fails on CPU in ``sync_module_states``; the launcher selects ``fsdp2``.)
"""

from __future__ import annotations

from types import ModuleType

CPU_DEVICE = "cpu"
FSDP_BACKENDS = ["fsdp", "fsdp2"]


def register_fsdp_engines(transformer_impl: ModuleType) -> None:
    """Register the FSDP language/value-model engines for ``cpu`` (once per process)."""
    from verl.workers.engine.base import EngineRegistry

    EngineRegistry.register(model_type="language_model", backend=FSDP_BACKENDS, device=CPU_DEVICE)(
        transformer_impl.FSDPEngineWithLMHead
    )
    EngineRegistry.register(model_type="value_model", backend=FSDP_BACKENDS, device=CPU_DEVICE)(
        transformer_impl.FSDPEngineWithValueHead
    )
