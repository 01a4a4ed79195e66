"""Run a scoring function in child processes with a hard per-call deadline.

Why not math-verify's own timeout: it uses ``signal.alarm``, which only works in the main thread of
the main interpreter. veRL's reward loop calls reward managers from an asyncio event loop inside a
Ray actor and pushes synchronous scoring to executor threads, where that timeout raises instead of
guarding. A thread cannot be killed either. So each call goes to a child process; a child that
misses its deadline is killed (SIGKILL) and replaced, and the caller gets :class:`ScoringTimeout`.

The children are plain ``python -m verl_repro.rewards._worker`` subprocesses speaking pickles over
their stdin / stdout pipes, not ``multiprocessing`` workers: they never re-import the parent's
``__main__`` (a Ray worker script, pytest, ...) and cannot inherit locks held by the parent's threads.
A child exits by itself when the parent dies (its stdin closes) and may be given an address-space
limit so a hostile input meets ``MemoryError`` instead of the machine's OOM killer.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any


class ScoringTimeout(TimeoutError):
    """The scoring function did not return within the per-call deadline; its process was killed."""


class ScoringCrash(RuntimeError):
    """The child process died while scoring (e.g. killed by the OS); it has been replaced."""


class ScoringError(RuntimeError):
    """The scoring function raised; the message carries the child's exception type and text."""


class _Child:
    """One child process and the two pipe ends the parent talks to it through."""

    def __init__(self, function_ref: str, memory_limit_mb: int | None, start_timeout_s: float):
        env = dict(os.environ)
        env["VERL_REPRO_WORKER_MEMORY_MB"] = str(memory_limit_mb or 0)
        # Children must not pick up the plugin machinery or fight over the parent's tokenizer threads.
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "verl_repro.rewards._worker", function_ref],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's warnings go to the parent's stderr
            env=env,
            close_fds=True,
        )
        # Connection objects own duplicated descriptors; the Popen file objects are closed here.
        self.to_child = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.from_child = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self._ready = False
        self._start_timeout_s = start_timeout_s

    def wait_ready(self) -> None:
        if self._ready:
            return
        if not self.from_child.poll(self._start_timeout_s):
            self.kill()
            raise ScoringCrash(f"scoring worker did not start within {self._start_timeout_s:.0f} s")
        try:
            tag, payload = self.from_child.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise ScoringCrash(f"scoring worker exited during start-up (exit code {self.process.poll()})") from exc
        if tag != "ready":
            self.kill()
            raise ScoringCrash(f"scoring worker failed to start: {payload}")
        self._ready = True

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always exits
            pass
        for conn in (self.to_child, self.from_child):
            try:
                conn.close()
            except OSError:
                pass


class GuardedPool:
    """A fixed number of child processes running ``function_ref`` with a per-call deadline.

    ``function_ref`` is ``"package.module:function"``; the function must be importable by the
    children and take / return picklable values. Calls are thread-safe (:meth:`call`) and
    awaitable (:meth:`acall`, on a private executor with one thread per child so a waiting call
    never blocks the event loop). Children start lazily on first use or with :meth:`start`; the
    deadline covers the scoring only, not a child's start-up (import of the scoring libraries).
    """

    def __init__(
        self,
        function_ref: str,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 4096,
        start_timeout_s: float = 120.0,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.function_ref = function_ref
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_s = start_timeout_s
        self._slots: queue.Queue[_Child | None] = queue.Queue()
        for _ in range(num_workers):
            self._slots.put(None)
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.num_timeouts = 0
        self.num_crashes = 0
        self.num_restarts = 0
        # Also runs at interpreter exit, so no child outlives a cleanly exiting parent.
        self._finalizer = weakref.finalize(self, _kill_all, self._children)

    # -- child management -------------------------------------------------------------------------
    def _spawn(self) -> _Child:
        child = _Child(self.function_ref, self.memory_limit_mb, self.start_timeout_s)
        with self._lock:
            self._children.add(child)
        return child

    def _discard(self, child: _Child) -> None:
        child.kill()
        with self._lock:
            self._children.discard(child)

    def _replace(self, child: _Child) -> _Child | None:
        """Kill ``child`` and start its successor now, so its start-up overlaps other work."""
        self._discard(child)
        self.num_restarts += 1
        try:
            return self._spawn()
        except OSError:  # cannot fork right now: the next call that takes this slot retries
            return None

    def start(self) -> "GuardedPool":
        """Start every child now and wait until each has imported the scoring function."""
        taken = [self._slots.get() for _ in range(self.num_workers)]
        try:
            for index, child in enumerate(taken):
                if child is None:
                    taken[index] = self._spawn()
            for child in taken:
                child.wait_ready()
        finally:
            for child in taken:
                self._slots.put(child)
        return self

    # -- calls ------------------------------------------------------------------------------------
    def call(self, *args: Any) -> Any:
        """Run the function on ``args`` in a child; raise :class:`ScoringTimeout` past the deadline."""
        if self._closed:
            raise RuntimeError("GuardedPool is closed")
        child = self._slots.get()
        in_flight = False  # a request was sent and its reply not yet read
        try:
            if child is None or child.process.poll() is not None:
                if child is not None:
                    self._discard(child)
                child = self._spawn()
            child.wait_ready()
            try:
                child.to_child.send(args)
            except (OSError, EOFError) as exc:
                self.num_crashes += 1
                child = self._replace(child)
                raise ScoringCrash("scoring worker died before receiving the input") from exc
            in_flight = True
            if not child.from_child.poll(self.timeout_s):
                self.num_timeouts += 1
                in_flight = False
                child = self._replace(child)
                raise ScoringTimeout(f"scoring took longer than {self.timeout_s:g} s; worker killed")
            try:
                tag, payload = child.from_child.recv()
            except (EOFError, OSError) as exc:
                self.num_crashes += 1
                in_flight = False
                child = self._replace(child)
                raise ScoringCrash("scoring worker died while scoring") from exc
            in_flight = False
        except BaseException:
            if in_flight and child is not None:  # e.g. KeyboardInterrupt mid-call: its late reply would desync the pipe
                child = self._replace(child)
            self._slots.put(child)
            raise
        self._slots.put(child)
        if tag == "error":
            raise ScoringError(payload)
        return payload

    async def acall(self, *args: Any) -> Any:
        """Awaitable :meth:`call`; the blocking wait runs on this pool's own threads."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="guarded-scoring")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.call, *args)

    def close(self) -> None:
        """Kill every child; further calls raise."""
        self._closed = True
        self._finalizer()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "GuardedPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _kill_all(children: set[_Child]) -> None:
    for child in list(children):
        child.kill()
    children.clear()

