"""Ending a run's process session, also when the launcher itself is killed.

``cpu-run`` starts ``main_ppo`` in a session of its own; the private Ray instance main_ppo starts
(GCS, raylet, workers) stays in that session. The launcher ends the session when main_ppo exits,
on Ctrl-C and on SIGTERM; a SIGKILL gives it no chance to. For that case two mechanisms stand by:

* main_ppo gets a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, Linux), so it dies
  with the launcher;
* a watchdog process (``python -m verl_repro.cpu.watchdog SESSION``, in a session of its own)
  holds the read end of a pipe whose write end only the launcher holds. When the pipe closes
  without the launcher's "done" byte, the launcher is gone: the watchdog kills every process of
  the run's session, Ray included, and exits.

Only standard-library imports here: the watchdog must start in a blink.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

DONE = b"d"
PR_SET_PDEATHSIG = 1


def session_processes(session_id: int) -> list[int]:
    """PIDs (other than this process) whose session is ``session_id``, read from ``/proc``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.getsid(int(name)) == session_id:
                pids.append(int(name))
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
    return pids


def end_session(session_id: int) -> int:
    """SIGKILL every process still in ``session_id`` (a session the launcher created); returns how many.

    Only that session is touched: other Ray clusters on the machine live on.
    """
    killed = 0
    for pid in session_processes(session_id):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            continue
    return killed


def die_with_parent(parent_pid: int) -> None:
    """``preexec_fn`` of main_ppo: SIGKILL this process when its parent (the launcher) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone covers it
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Wait on stdin (the launcher's pipe); on EOF without :data:`DONE`, end session ``argv[0]``."""
    argv = sys.argv[1:] if argv is None else argv
    session_id = int(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    received = b""
    try:
        while True:
            chunk = os.read(0, 64)
            if not chunk:
                break
            received += chunk
    except OSError:
        pass
    if DONE not in received:
        end_session(session_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
