"""benchmarks/gpu_check.py --dry-run: the GPU machine's one command runs on a CPU at tiny sizes with
only what the GPU image has (veRL, Ray, vLLM and tensordict unimportable), and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
NOT_IN_THE_IMAGE = ("verl", "ray", "vllm", "tensordict")

# Runs gpu_check as __main__ in a fresh interpreter whose import system refuses the packages the GPU
# image lacks, then prints which of them were asked for and whether any got imported anyway.
RUNNER = """
import json, runpy, sys
BLOCKED = set(json.loads(sys.argv[1]))
asked = set()
class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            asked.add(name.split(".")[0])
            raise ModuleNotFoundError(f"No module named {name!r} (not in the GPU image)")
        return None
sys.meta_path.insert(0, NotInTheImage())
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
try:
    runpy.run_path(script, run_name="__main__")
    code = 0
except SystemExit as stop:
    code = stop.code
imported = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
print("RUNNER " + json.dumps({"code": code, "asked": sorted(asked), "imported": imported}))
"""


def test_gpu_check_dry_run_without_verl_writes_the_report(tmp_path):
    out = tmp_path / "results" / "cpu-dry-run.md"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(NOT_IN_THE_IMAGE), str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("RUNNER ")]
    assert summary, (result.stdout[-3000:], result.stderr[-3000:])
    run = json.loads(summary[-1][len("RUNNER "):])
    assert run["code"] == 0, (result.stdout[-4000:], result.stderr[-3000:])
    assert run["imported"] == [], run
    assert "verl" in run["asked"]  # the optional veRL baseline was looked for, and found absent

    report = out.read_text()
    for heading in ("# GPU check — CPU (dry run)", "## Environment", "## Kernel correctness",
                    "## Prefix-shared vs naive J scoring", "## CorR-PO gradient signal", "## Kernel speed and peak memory",
                    "## Targets"):
        assert heading in report, heading
    assert "**ERROR**" not in report and "Correctness: every check passed." in report
    assert "* `verl` package: absent" in report and "veRL linear_cross_entropy: not importable" in report
    # every dtype of both kernels was checked, outputs and gradients
    for dtype in ("bf16", "fp16", "fp32"):
        for kernel in ("(a) logits", "(b) hidden"):
            assert f"| {kernel} | {dtype} | ok: max abs error log p" in report, (kernel, dtype)
    assert "| fp64 |" in report and "| fp32 |" in report  # fast vs exact, both precisions
    assert "no target is judged" in report and "| yes |" not in report and "| **no** |" not in report


CARRIED_KERNEL = """
import json, sys
BLOCKED = {"ray", "tensordict", "vllm"}
class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the GPU image)")
        return None
sys.meta_path.insert(0, NotInTheImage())
sys.path.insert(0, sys.argv[1])  # the carried tree, ahead of any installed veRL
sys.path.insert(0, sys.argv[2])
import gpu_check
assert gpu_check.load_verl_kernel_files() is None
import verl.utils.kernel.kernels as kernels
from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy
print("CARRIED " + json.dumps({"kernels": kernels.__file__, "callable": callable(linear_cross_entropy),
                               "blocked_imported": sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)}))
"""


def test_veRL_kernel_files_load_from_a_carried_tree_without_verl_init(tmp_path):
    import importlib.util

    spec = importlib.util.find_spec("verl")
    if spec is None:
        import pytest

        pytest.skip("veRL is not installed here: nothing to carry")
    source = Path(spec.origin).parent / "utils" / "kernel"
    carried = tmp_path / "carry" / "verl" / "utils" / "kernel"
    carried.mkdir(parents=True)
    for name in ("kernels.py", "linear_cross_entropy.py"):  # what `unzip verl-*.whl 'verl/utils/kernel/*'` leaves
        (carried / name).write_text((source / name).read_text())
    result = subprocess.run(
        [sys.executable, "-c", CARRIED_KERNEL, str(tmp_path / "carry"), str(REPO / "benchmarks")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("CARRIED ")]
    assert lines, (result.stdout[-3000:], result.stderr[-3000:])
    loaded = json.loads(lines[-1][len("CARRIED "):])
    assert loaded["kernels"].startswith(str(tmp_path)) and loaded["callable"], loaded
    assert loaded["blocked_imported"] == [], loaded
