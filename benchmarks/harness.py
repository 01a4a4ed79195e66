"""What every benchmark here shares: one timer, one memory probe, one machine line.

    timing = time_calls(fn, device, repeats=5, warmup=1)   # .median_s, .best_s, .result
    with PeakMemory(device) as memory: fn()                  # memory.mib: peak above the level at entry
    print(machine_line(device))                              # "machine: ..." for the results file

Benchmarks run by path (``python benchmarks/bench_X.py``) import it as ``harness``; the tests find
it through pytest's ``pythonpath``.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


def sync(device: torch.device | str) -> None:
    """Wait for the device, so that a wall time covers the work and not only its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    result: object
    """What the last call returned."""
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def best_s(self) -> float:
        return min(self.times_s)


def time_calls(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 1, warmup: int = 0) -> Timing:
    """Wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (the device synchronized around each)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return Timing(result, times)


class PeakMemory:
    """Peak memory above the level at entry (``peak_bytes``; the level itself: ``base_bytes``): the CUDA
    allocator's on a GPU, the process's resident set on a CPU (sampled by a thread, so a short spike
    between two samples can be missed)."""

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002):
        self.device, self.interval_s = torch.device(device), interval_s
        self.base_bytes = self.peak_bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_bytes = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            self._process = psutil.Process()
            self.base_bytes = self._peak = self._process.memory_info().rss
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base_bytes
        else:
            self._running = False
            self._thread.join()
            self.peak_bytes = max(self._peak, self._process.memory_info().rss) - self.base_bytes

    @property
    def mib(self) -> float:
        return self.peak_bytes / 2**20


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_line(device: torch.device | str = "cpu", packages: Sequence[str] = ()) -> str:
    """One line naming the machine and its load: device, CPU model and count, load average, Python,
    torch and its threads, and the versions of ``packages``."""
    import importlib.metadata

    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts = [f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
                 f"sm_{props.major}{props.minor}), CUDA {torch.version.cuda}"]
    else:
        parts = ["CPU only"]
    parts.append(f"{os.cpu_count()} CPUs ({_cpu_model()})")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    parts += [f"python {platform.python_version()}", f"torch {torch.__version__}", f"torch threads {torch.get_num_threads()}"]
    for name in packages:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return "machine: " + "; ".join(parts)


def finish_report(lines: Sequence[str], failures: Sequence[str], passed: str, out: str | None = None) -> int:
    """Close a benchmark's report with its self-check (``passed`` or every failure), print it, also
    write it to ``out`` when given; returns the exit status (1 when a self-check failed)."""
    verdict = f"self-check: {passed}" if not failures else "self-check FAILED:\n" + "\n".join(f"- {f}" for f in failures)
    text = "\n".join([*lines, verdict]) + "\n"
    print(text, end="")
    if out:
        with open(out, "w") as handle:
            handle.write(text)
    return 1 if failures else 0
