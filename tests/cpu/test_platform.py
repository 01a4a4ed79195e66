"""The cpu platform answers every device call veRL makes, for the host."""

from __future__ import annotations

import torch

from verl_repro.cpu.platform import CPUDeviceModule, CPUPlatform


def test_platform_identity_and_collectives():
    platform = CPUPlatform()
    assert platform.device_name == "cpu"
    assert platform.communication_backend_name() == "gloo"
    # get_device_id() must be usable with .to() and torch.device()
    assert torch.ones(1).to(platform.current_device()).device.type == "cpu"
    assert torch.device(platform.current_device()).type == "cpu"
    assert platform.is_available() and platform.device_count() == 1
    # chosen only explicitly (VERL_PLATFORM=cpu), never by auto-detection on a GPU host
    assert platform.is_platform_available(use_smi_check=True) is False
    assert platform.ray_resource_options(1) == {"num_gpus": 1}
    assert platform.is_ipc_supported() is False
    with platform.nvtx_range("no-op"):
        pass


def test_device_module_answers_the_cuda_only_calls():
    device = CPUPlatform().device_module
    assert isinstance(device, CPUDeviceModule)
    assert device.get_device_name() == "CPU"
    allocated = device.memory_allocated()  # resident set now ...
    peak = device.max_memory_allocated()  # ... and its high-water mark
    assert 0 < allocated <= peak <= device.max_memory_reserved()
    available, total = device.mem_get_info()
    assert 0 < available <= total
    for call in (device.empty_cache, device.synchronize, device.ipc_collect, device.reset_peak_memory_stats):
        assert call() is None
    assert device.get_device_properties().total_memory == total
    # falls through to torch.cpu for what it does not define
    assert device.current_stream() is not None and device.Stream is torch.cpu.Stream


def test_rng_calls_drive_torch_cpu_generator():
    device = CPUDeviceModule()
    device.manual_seed(1234)
    first = torch.rand(3)
    state = device.get_rng_state()
    second = torch.rand(3)
    device.set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), second)
    device.manual_seed(1234)
    torch.testing.assert_close(torch.rand(3), first)
