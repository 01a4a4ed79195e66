"""GuardedPool: a hard per-call deadline that survives threads, hostile calls and dying children.

The scored functions are stdlib callables so the children need nothing from the test tree.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from verl_repro.rewards.guarded import GuardedPool, ScoringCrash, ScoringError, ScoringTimeout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_results_errors_and_restart_after_a_timeout():
    with GuardedPool("math:sqrt", num_workers=1, timeout_s=1.0).start() as pool:
        assert pool.call(16.0) == 4.0
        with pytest.raises(ScoringError, match="ValueError"):
            pool.call(-1.0)
        assert pool.call(9.0) == 3.0  # an exception in the function leaves the child usable

    with GuardedPool("time:sleep", num_workers=1, timeout_s=0.5).start() as pool:
        (child,) = pool._children
        with pytest.raises(ScoringTimeout):
            pool.call(30)
        assert not _alive(child.process.pid), "the timed-out child must be killed"
        assert pool.num_timeouts == 1 and pool.num_restarts == 1
        assert pool.call(0.01) is None  # its successor serves the next call


def test_dying_child_is_a_crash_and_is_replaced():
    with GuardedPool("os:_exit", num_workers=1, timeout_s=5.0).start() as pool:
        with pytest.raises(ScoringCrash):
            pool.call(3)
        assert pool.num_crashes == 1
        (child,) = pool._children
        child.wait_ready()  # a fresh child is already starting
        assert child.process.poll() is None


def test_memory_limit_turns_a_huge_allocation_into_an_error():
    with GuardedPool("builtins:bytearray", num_workers=1, timeout_s=20.0, memory_limit_mb=1024).start() as pool:
        with pytest.raises(ScoringError, match="MemoryError"):
            pool.call(8 * 1024**3)
        assert len(pool.call(10)) == 10


def test_unimportable_function_fails_at_start_up():
    pool = GuardedPool("verl_repro.no_such_module:f", num_workers=1, timeout_s=1.0)
    with pytest.raises(ScoringCrash, match="ModuleNotFoundError"):
        pool.start()
    pool.close()


def test_threads_and_event_loop_share_the_children_without_mixing_replies():
    with GuardedPool("math:sqrt", num_workers=2, timeout_s=5.0).start() as pool:
        results: dict[int, float] = {}

        def work(value: int) -> None:
            results[value] = pool.call(float(value * value))

        threads = [threading.Thread(target=work, args=(v,)) for v in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == {v: float(v) for v in range(40)}

        async def gather():
            return await asyncio.gather(*(pool.acall(float(v * v)) for v in range(40)))

        assert asyncio.run(gather()) == [float(v) for v in range(40)]


def test_a_slow_call_delays_only_itself():
    with GuardedPool("time:sleep", num_workers=2, timeout_s=1.5).start() as pool:
        finished: list[str] = []

        async def outcome(name: str, seconds: float):
            try:
                await pool.acall(seconds)
                result = "ok"
            except ScoringTimeout:
                result = "timeout"
            finished.append(name)
            return result

        async def run():
            return await asyncio.gather(outcome("slow", 60), *(outcome(f"fast {i}", 0.01) for i in range(10)))

        slow, *fast = asyncio.run(run())
        assert slow == "timeout" and all(result == "ok" for result in fast)
        assert pool.num_timeouts == 1
        # the second process served the short calls while the slow one held the first (calls queued
        # behind the slow one would all finish after it)
        assert finished[0] != "slow", finished


def test_close_kills_children_and_rejects_calls():
    pool = GuardedPool("math:sqrt", num_workers=2, timeout_s=1.0).start()
    pids = [child.process.pid for child in pool._children]
    pool.close()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        pool.call(1.0)
