"""Plugin hook of the CPU backend: registers it into veRL only when asked.

Called on every ``import verl`` (driver and every Ray worker) through ``verl_repro.plugin.entry``.
Without ``VERL_PLATFORM=cpu`` it returns at once. With it, it registers the ``cpu`` platform
right away (veRL resolves the platform on first use) and defers the rest until the veRL module
concerned is imported by the process that needs it: the FSDP engines for device ``cpu``, the
``hf`` rollout replica, and the patches listed in :mod:`verl_repro.cpu.patches`.
"""

from __future__ import annotations

import os

PLATFORM_ENV = "VERL_PLATFORM"


def cpu_mode_requested() -> bool:
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == "cpu"


def _load_hf_replica():
    from verl_repro.cpu.server import HFReplica

    return HFReplica


def _register_hf_replica(replica_module) -> None:
    replica_module.RolloutReplicaRegistry.register("hf", _load_hf_replica)


def register() -> list[str]:
    """Register the CPU backend if ``VERL_PLATFORM=cpu``; returns the ``kind:name`` entries added."""
    if not cpu_mode_requested():
        return []
    from verl.plugin.platform import PlatformRegistry

    from verl_repro.plugin.registrations import register_when_imported
    from verl_repro.cpu.engine import register_fsdp_engines
    from verl_repro.cpu.patches import install_patches
    from verl_repro.cpu.platform import PLATFORM_NAME, CPUPlatform

    added = install_patches()
    PlatformRegistry.register(platform=PLATFORM_NAME)(CPUPlatform)
    register_when_imported(__name__, "verl.workers.engine.fsdp.transformer_impl", register_fsdp_engines)
    register_when_imported(__name__, "verl.workers.rollout.replica", _register_hf_replica)
    return added + [
        f"platform:{PLATFORM_NAME}",
        "engine:language_model/fsdp,fsdp2@cpu",
        "engine:value_model/fsdp,fsdp2@cpu",
        "rollout:hf",
    ]
