"""Child process of :class:`verl_repro.rewards.guarded.GuardedPool` (``python -m`` this module).

Protocol over the inherited pipes: the parent sends argument tuples on stdin, the child answers
``("ready", None)`` once after importing the function, then ``("ok", result)`` or
``("error", "Type: message")`` per call. fd 1 is moved aside for the protocol and replaced by
stderr, so stray prints from scoring libraries cannot corrupt it.
"""

from __future__ import annotations

import importlib
import os
import sys
from multiprocessing.connection import Connection


def _limit_memory() -> None:
    limit_mb = int(os.environ.get("VERL_REPRO_WORKER_MEMORY_MB", "0") or 0)
    if limit_mb <= 0:
        return
    try:
        import resource

        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not available on this platform: run unlimited
        pass


def main(function_ref: str) -> int:
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(protocol_out, readable=False)
    try:
        module_name, _, attribute = function_ref.partition(":")
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # reported to the parent, which raises at start-up
        replies.send(("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    _limit_memory()
    replies.send(("ready", None))
    while True:
        try:
            args = requests.recv()
        except (EOFError, OSError):  # parent closed the pipe or died
            return 0
        try:
            replies.send(("ok", function(*args)))
        except MemoryError:
            replies.send(("error", "MemoryError: scoring exceeded the worker's memory limit"))
        except Exception as exc:
            replies.send(("error", f"{type(exc).__name__}: {str(exc)[:500]}"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
