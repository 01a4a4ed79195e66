"""The CPU patch list and the patch bodies."""

from __future__ import annotations

import types

from verl_repro.cpu import patches
from verl_repro.cpu.patches import PATCHES


def test_every_patch_names_its_verl_file_and_reason():
    assert PATCHES, "the list is the single place patches live"
    for patch in PATCHES:
        assert patch.verl_file.startswith("verl/") and patch.verl_file.endswith(".py")
        assert patch.module.replace(".", "/") + ".py" == patch.verl_file
        assert patch.target and len(patch.reason) > 20


def test_process_group_patch_defaults_backend_to_gloo_and_keeps_explicit_ones():
    calls = []
    module = types.ModuleType("fake_distributed")
    module.initialize_global_process_group_ray = lambda timeout_second=None, backend=None: calls.append(backend)
    patches._gloo_process_group(module)
    patches._gloo_process_group(module)  # idempotent: no double wrapping
    module.initialize_global_process_group_ray(timeout_second=None)
    module.initialize_global_process_group_ray(backend="cpu:gloo")
    assert calls == ["gloo", "cpu:gloo"]


def test_offload_policy_patch_never_pins():
    from torch.distributed.fsdp import CPUOffloadPolicy

    module = types.ModuleType("fake_transformer_impl")
    module.CPUOffloadPolicy = CPUOffloadPolicy
    patches._unpinned_offload_policy(module)
    policy = module.CPUOffloadPolicy(pin_memory=True)
    assert isinstance(policy, CPUOffloadPolicy) and policy.pin_memory is False


def test_value_model_patch_builds_a_token_classification_critic_with_sdpa(tiny_model_dir):
    import torch
    from transformers import AutoConfig

    module = types.ModuleType("fake_model_utils")
    module.load_valuehead_model = lambda **kwargs: None
    patches._sdpa_value_model(module)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1  # as veRL's engine sets it for the critic
    critic = module.load_valuehead_model(
        local_path=str(tiny_model_dir), torch_dtype=torch.float32, model_config=config, trust_remote_code=False
    )
    assert critic.config._attn_implementation == "sdpa"
    values = critic(torch.tensor([[1, 2, 3]])).logits
    assert values.shape == (1, 3, 1)


def test_replay_buffer_patch_shortens_the_default_poll_and_keeps_an_explicit_one():
    from verl.trainer.ppo.v1 import replay_buffer

    class FakeBuffer:  # the real class's constructor contract: poll_interval is a keyword with a default
        def __init__(self, trainer_mode, poll_interval: float = 2.0):
            self.trainer_mode, self.poll_interval = trainer_mode, poll_interval

    class FakeAsyncBuffer(FakeBuffer):
        pass

    module = types.ModuleType("fake_replay_buffer")
    module.ReplayBuffer = FakeBuffer
    patches._quick_replay_poll(module)
    patches._quick_replay_poll(module)  # idempotent: no double wrapping
    assert FakeBuffer("sync").poll_interval == patches.CPU_REPLAY_POLL_INTERVAL_S
    assert FakeAsyncBuffer("async").poll_interval == patches.CPU_REPLAY_POLL_INTERVAL_S
    assert FakeBuffer("sync", poll_interval=1.5).poll_interval == 1.5
    assert FakeAsyncBuffer("async", 1.5).poll_interval == 1.5  # by position: explicit too
    # the pinned veRL still has the default this patch replaces
    import inspect

    default = inspect.signature(replay_buffer.ReplayBuffer.__init__).parameters["poll_interval"].default
    assert default in (2.0, patches.CPU_REPLAY_POLL_INTERVAL_S)
