"""The CPU backend registers into veRL only with VERL_PLATFORM=cpu, and then everything resolves.

Each case runs in a fresh interpreter: veRL's platform is a process-wide singleton and the
registries are global, so the test process itself must stay untouched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

OFF_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import verl
    from verl.plugin.platform import PlatformRegistry
    from verl_repro.plugin.entry import registration_report
    from verl_repro.cpu import registration
    print(json.dumps({
        "platforms": list(PlatformRegistry.registered_names()),
        "report": registration_report(),
        "register": registration.register(),
        "cpu_modules": sorted(m for m in sys.modules if m.startswith("verl_repro.cpu")),
    }))
    """
)

ON_SCRIPT = textwrap.dedent(
    """
    import json
    import torch.distributed as dist
    import verl
    from verl_repro.plugin.entry import registration_report
    from verl.utils.device import get_device_name, get_nccl_backend, get_device_id, get_torch_device
    result = {"report": registration_report(), "device": get_device_name(), "backend": get_nccl_backend(),
              "device_id": get_device_id(), "device_label": get_torch_device().get_device_name()}
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import (
        CPUOffloadPolicy, FSDPEngineWithLMHead, FSDPEngineWithValueHead,
    )
    result["lm_engine"] = EngineRegistry.get_engine_cls("language_model", "fsdp2") is FSDPEngineWithLMHead
    result["value_engine"] = EngineRegistry.get_engine_cls("value_model", "fsdp2") is FSDPEngineWithValueHead
    result["ref_offload_pinned"] = CPUOffloadPolicy(pin_memory=True).pin_memory
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class
    result["rollout_class"] = get_rollout_class("hf", "async").__qualname__
    result["replica_class"] = get_rollout_replica_class("hf").__qualname__
    from verl.workers import engine_workers
    engine_workers.initialize_global_process_group_ray(timeout_second=None)
    result["process_group_backend"] = str(dist.get_backend())
    dist.destroy_process_group()
    print(json.dumps(result))
    """
)


def _run(script: str, env_updates: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env.update(env_updates)
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_without_the_switch_nothing_is_registered_or_imported():
    result = _run(OFF_SCRIPT, {})
    assert "cpu" not in result["platforms"]
    assert result["register"] == []
    assert not [name for name in result["report"]["registered"] if name.startswith(("platform:", "rollout:", "patch:"))]
    # the entry point stays cheap: nothing of the backend beyond the switch check is imported
    assert set(result["cpu_modules"]) <= {"verl_repro.cpu", "verl_repro.cpu.registration"}


def test_with_the_switch_platform_engines_rollout_and_gloo_resolve():
    result = _run(
        ON_SCRIPT,
        {
            "VERL_PLATFORM": "cpu",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
        },
    )
    assert result["report"]["failures"] == {}
    registered = set(result["report"]["registered"])
    assert {"platform:cpu", "rollout:hf", "engine:language_model/fsdp,fsdp2@cpu"} <= registered
    from verl_repro.cpu.patches import PATCHES

    applied = {name for name in registered if name.startswith("patch:")}
    assert applied == {f"patch:{patch.verl_file}:{patch.target}" for patch in PATCHES}
    assert len(applied) == 6
    identity = (result["device"], result["backend"], result["device_id"], result["device_label"])
    assert identity == ("cpu", "gloo", "cpu", "CPU")
    assert result["lm_engine"] and result["value_engine"]
    assert result["ref_offload_pinned"] is False
    assert result["rollout_class"] == "HFRolloutAdapter" and result["replica_class"] == "HFReplica"
    assert result["process_group_backend"] == "gloo"


@pytest.mark.parametrize("value", ["CPU", " cpu "])
def test_switch_is_case_and_space_insensitive(monkeypatch, value):
    from verl_repro.cpu.registration import cpu_mode_requested

    monkeypatch.setenv("VERL_PLATFORM", value)
    assert cpu_mode_requested()
    monkeypatch.setenv("VERL_PLATFORM", "nvidia")
    assert not cpu_mode_requested()
