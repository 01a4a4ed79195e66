"""Benchmark: what the verl-repro plugin adds to ``import verl``.

veRL imports every ``verl.plugins`` entry point on ``import verl``, in the driver and in every Ray
worker, so the plugin's cost is paid once per process. This runs ``import verl`` in fresh
interpreters, alternating with the plugin (veRL's default, ``VERL_USE_EXTERNAL_PLUGINS=auto``) and
without it (``VERL_USE_EXTERNAL_PLUGINS=none``, veRL's own switch), and reports the median time of
the import itself (measured inside the child, so interpreter start-up is left out), the median
wall time of the whole child process, and the peak resident memory of the child. Each child also
reports whether the plugin loaded and whether ``verl.trainer.ppo.core_algos`` was imported (the
plugin defers its estimator registration until veRL imports that module).

``python -X importtime`` would not show the plugin's cost fairly: registration modules are loaded
with ``importlib.import_module`` from the entry point, whose nested imports it attributes oddly.

    python benchmarks/bench_import.py [--repeats 7] [--out benchmarks/results/bench_import.txt]

The default is the setting of the committed ``benchmarks/results/bench_import.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import machine_line

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.05  # `import verl` with the plugin at most 5 % slower than without it

CHILD = """
import json, resource, sys, time
start = time.perf_counter()
import verl
seconds = time.perf_counter() - start
print(json.dumps({
    "import_s": seconds,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "plugin_loaded": "verl_repro.plugin.entry" in sys.modules,
    "core_algos_imported": "verl.trainer.ppo.core_algos" in sys.modules,
}))
"""

MODES = {"with plugin": "auto", "without (VERL_USE_EXTERNAL_PLUGINS=none)": "none"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per mode (>= 5)")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    return parser


def run_child(policy: str) -> dict:
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=policy, VERL_LOGGING_LEVEL="ERROR", PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"import verl failed (VERL_USE_EXTERNAL_PLUGINS={policy}):\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall_s"] = wall
    return record




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 5:
        raise SystemExit("--repeats must be >= 5")
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    load_before = os.getloadavg()
    run_child("none")  # warm the file cache once; not counted
    for _ in range(args.repeats):  # alternate, so drift in the machine's load hits both modes alike
        for mode, policy in MODES.items():
            runs[mode].append(run_child(policy))
    load_after = os.getloadavg()

    lines = [
        f"bench_import: `import verl` in fresh interpreters, median of {args.repeats} per mode, modes alternated",
        machine_line(packages=("verl", "verl-repro")),
        "load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after),
        f"{'mode':44s} {'import verl':>12s} {'process wall':>13s} {'peak RSS':>10s}  plugin  core_algos",
    ]
    medians = {}
    for mode, records in runs.items():
        import_s = statistics.median(r["import_s"] for r in records)
        wall_s = statistics.median(r["wall_s"] for r in records)
        rss = statistics.median(r["max_rss_mb"] for r in records)
        medians[mode] = (import_s, wall_s, rss)
        plugin = {r["plugin_loaded"] for r in records}
        core_algos = {r["core_algos_imported"] for r in records}
        lines.append(
            f"{mode:44s} {import_s:10.3f} s {wall_s:11.3f} s {rss:7.0f} MiB  {'/'.join(map(str, sorted(plugin))):6s}  "
            f"{'/'.join(map(str, sorted(core_algos)))}"
        )
        lines.append(f"  {'runs (import verl, s)':42s} " + " ".join(f"{r['import_s']:.3f}" for r in records))
    (with_import, with_wall, with_rss), (without_import, without_wall, without_rss) = medians.values()
    ratio = with_import / without_import
    lines.append(
        f"ratio with / without: import verl {ratio:.3f}x ({with_import - without_import:+.3f} s), "
        f"process wall {with_wall / without_wall:.3f}x, peak RSS {with_rss - without_rss:+.0f} MiB"
    )
    lines.append(f"goal: import verl with the plugin <= {GOAL:.2f}x without: {'met' if ratio <= GOAL else 'NOT met'}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
