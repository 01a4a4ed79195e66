"""The compact console of a quiet ``cpu-run``: one line per training step, a heartbeat in between.

veRL's console output (~1,000 lines for a two-step run, most of it a config dump) goes to the run's
log file; this prints what a reader follows instead, read from the metrics veRL's file logger
writes (one JSON line per step, :mod:`verl_repro.run_metrics`)::

    [grpo] step 2/4  reward 0.438  acc 0.438  len 27.1  H 0.512 | 35.2 s/step  elapsed 2:10  ETA 1:10
    [grpo]   ... step 3/4 running 0:30 (last step 35 s)
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import IO, Optional

from verl_repro.run_metrics import figure_value, read_metrics

# (figure, short label) in the order of the step line; absent figures are left out of the line.
STEP_LINE_FIGURES = (
    ("reward", "reward"),
    ("accuracy", "acc"),
    ("response_length", "len"),
    ("entropy", "H"),
    ("process_adv", "|Ã|"),
    ("rho", "ρ"),
)
# veRL's phase timers worth a glance: (metric key, short label)
STEP_LINE_PHASES = (("timing_s/gen", "rollout"), ("timing_s/repro_scoring", "scoring"), ("timing_s/update_actor", "update"))
LOG_TAIL_LINES = 25
# veRL's trainer logs this once every worker is up and the first step begins.
TRAINING_STARTS = b"ready to fit"


def clock(seconds: float) -> str:
    """``75.3`` → ``"1:15"``; ``3725`` → ``"1:02:05"``."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def step_line(step: int, total: Optional[int], data: dict[str, float], elapsed: float, eta: Optional[float]) -> str:
    """One training step in one line (figures from :data:`STEP_LINE_FIGURES`, then timing)."""
    from verl_repro.run_metrics import FIGURES_BY_NAME

    parts = [f"step {step}/{total}" if total else f"step {step}"]
    for name, short in STEP_LINE_FIGURES:
        value = figure_value(data, name)
        if value is not None:
            parts.append(f"{short} {FIGURES_BY_NAME[name].fmt.format(value)}")
    timing = []
    step_time = figure_value(data, "step_time")
    if step_time is not None:
        phases = [f"{short} {data[key]:.0f} s" for key, short in STEP_LINE_PHASES if key in data]
        timing.append(f"{step_time:.1f} s/step" + (f" ({', '.join(phases)})" if phases else ""))
    timing.append(f"elapsed {clock(elapsed)}")
    if eta is not None:
        timing.append(f"ETA {clock(eta)}")
    return "  ".join(parts) + " | " + "  ".join(timing)


class RunProgress:
    """Follows ``metrics_path`` from a background thread and prints to ``stream``."""

    def __init__(
        self,
        metrics_path: str | Path,
        total_steps: Optional[int] = None,
        label: str = "",
        stream: Optional[IO] = None,
        heartbeat_s: float = 30.0,
        poll_s: float = 1.0,
        quiet: bool = True,
        log_path: str | Path | None = None,
    ):
        self.metrics_path = Path(metrics_path)
        self.log_path = None if log_path is None else Path(log_path)
        self._log_offset = 0
        self._training_started: Optional[float] = None
        self.total_steps = total_steps
        self.prefix = f"[{label}] " if label else ""
        self.stream = sys.stdout if stream is None else stream
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.quiet = quiet
        self.metrics: dict[int, dict[str, float]] = {}
        self._printed: set[int] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = 0.0
        self._last_line = 0.0
        self._step_ends: list[float] = []

    def say(self, text: str) -> None:
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    def start(self) -> None:
        self._started = self._last_line = time.monotonic()
        if self.quiet:
            self.say("starting Ray and veRL's workers, loading the model ...")
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()
            if time.monotonic() - self._last_line >= self.heartbeat_s and self.quiet:
                self.say("  ... " + self.phase())

    def phase(self) -> str:
        """What the run is doing now, as far as the metrics tell."""
        now = time.monotonic()
        self._watch_log()
        if not self._step_ends:
            if self._training_started is None:
                return f"start-up (Ray, workers, model) {clock(now - self._started)}"
            first = f"1/{self.total_steps}" if self.total_steps else "1"
            return (f"step {first} running {clock(now - self._training_started)} (rollout, log-probs, "
                    f"reference, scoring, update; start-up took {clock(self._training_started - self._started)})")
        done = max(self._printed)
        next_step = f"{done + 1}/{self.total_steps}" if self.total_steps else f"{done + 1}"
        last = self._step_ends[-1] - (self._step_ends[-2] if len(self._step_ends) > 1 else self._training_started or self._started)
        return f"step {next_step} running {clock(now - self._step_ends[-1])} (last step {last:.0f} s)"

    def _watch_log(self) -> None:
        """Notice in the console log when start-up is over (only read while it is not)."""
        if self._training_started is not None or self.log_path is None:
            return
        start = max(self._log_offset - len(TRAINING_STARTS), 0)  # a marker split across two reads
        try:
            with self.log_path.open("rb") as log:
                log.seek(start)
                chunk = log.read()
        except OSError:
            return
        self._log_offset = start + len(chunk)
        if TRAINING_STARTS in chunk:
            self._training_started = time.monotonic()

    def eta(self) -> Optional[float]:
        """Remaining steps times the mean wall time of the steps after the first (which also warms up)."""
        if not self.total_steps or not self._step_ends:
            return None
        remaining = self.total_steps - max(self._printed)
        if remaining <= 0:
            return 0.0
        if len(self._step_ends) >= 2:
            per_step = (self._step_ends[-1] - self._step_ends[0]) / (len(self._step_ends) - 1)
        else:
            data = self.metrics[max(self._printed)]
            per_step = figure_value(data, "step_time") or (self._step_ends[0] - self._started)
        return remaining * per_step

    def poll(self) -> None:
        try:
            self.metrics = read_metrics(self.metrics_path)
        except (OSError, ValueError):
            return
        for step in sorted(set(self.metrics) - self._printed):
            self._printed.add(step)
            self._step_ends.append(time.monotonic())
            self.say(step_line(step, self.total_steps, self.metrics[step], time.monotonic() - self._started, self.eta()))

    def finish(self, code: int, log_path: str | Path) -> None:
        """The closing line; on failure also the last lines of the log, which holds the reason."""
        elapsed = clock(time.monotonic() - self._started)
        if code == 0:
            self.say(f"done: {len(self.metrics)} steps in {elapsed}")
            return
        reason = {124: "timed out", 130: "interrupted", 143: "terminated"}.get(code, f"failed (exit {code})")
        self.say(f"main_ppo {reason} after {elapsed}; full console output: {log_path}")
        if code in (130, 143) or not self.quiet:
            return
        try:
            lines = Path(log_path).read_text(errors="replace").splitlines()
        except OSError:
            return
        for line in lines[-LOG_TAIL_LINES:]:
            self.stream.write("  | " + line + "\n")
        self.stream.flush()
