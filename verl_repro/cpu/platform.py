"""A veRL platform for machines without an accelerator: device ``cpu``, collectives over ``gloo``.

veRL 0.9.1 routes every device question through ``verl.plugin.platform.get_platform()`` and then
calls CUDA-style functions on ``platform.device_module`` without checking whether they exist
(``max_memory_allocated``, ``mem_get_info``, ``empty_cache``, ...). :class:`CPUDeviceModule`
answers those calls for the host: memory figures are the process's resident set (peak from
``getrusage``) and the machine's RAM, caches and synchronization are no-ops, RNG calls go to
torch's CPU generator.

Ray still has to place veRL's worker bundles, which always ask for one unit of the platform's
resource; :meth:`CPUPlatform.ray_resource_name` keeps Ray's ``GPU`` resource for that, and the
launcher declares ``num_gpus`` for the local cluster (see ``verl_repro.cpu.launcher``).
"""

from __future__ import annotations

import resource
import sys
import types
from contextlib import contextmanager
from typing import Any, Optional

import psutil  # a dependency of Ray, hence of veRL
import torch
from verl.plugin.platform import PlatformBase

PLATFORM_NAME = "cpu"


def _resident_bytes() -> int:
    """Current resident set size of this process in bytes (0 when unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _peak_resident_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS; it can lag the /proc reading slightly.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak if sys.platform == "darwin" else peak * 1024, _resident_bytes())


def _host_memory() -> tuple[int, int]:
    """(available, total) host memory in bytes."""
    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


class CPUDeviceModule(types.ModuleType):
    """Stands in for ``torch.cuda`` on the host: the calls veRL makes unguarded, answered for a CPU.

    Anything not defined here falls through to ``torch.cpu`` (``Stream``, ``current_stream``,
    ``synchronize``, ``device_count``, ...), so code written against a device module keeps working.
    """

    def __init__(self) -> None:
        super().__init__("verl_repro.cpu.device_module", "torch.cpu plus the CUDA-style calls veRL makes")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    # device identity -------------------------------------------------------------------------
    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def current_device() -> str:
        # veRL passes get_device_id() to .to() and torch.device(); "cpu" is valid for both.
        return "cpu"

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def set_device(device: Any) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "CPU"

    @staticmethod
    def get_device_capability(device: Any = None) -> tuple[None, None]:
        return None, None

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    # memory ----------------------------------------------------------------------------------
    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return _resident_bytes()

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        return _resident_bytes()

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return _peak_resident_bytes()

    @staticmethod
    def max_memory_reserved(device: Any = None) -> int:
        return _peak_resident_bytes()

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def reset_accumulated_memory_stats(device: Any = None) -> None:
        return None

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return _host_memory()

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def get_device_properties(device: Any = None) -> types.SimpleNamespace:
        return types.SimpleNamespace(name="CPU", total_memory=_host_memory()[1])

    # random numbers --------------------------------------------------------------------------
    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)


_DEVICE_MODULE = CPUDeviceModule()


class CPUPlatform(PlatformBase):
    """veRL platform ``cpu``: torch on the host, ``gloo`` collectives, Ray's ``GPU`` as the slot."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: the CPU platform is chosen explicitly with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets it for actors holding a GPU slot; torch on CPU ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # veRL's placement groups always reserve one accelerator unit per worker; on a CPU
        # machine the launcher declares that many logical GPUs so the bundles can be placed.
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
