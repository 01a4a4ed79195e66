"""``verl-repro info``: versions, device, and the registrations this package made into veRL."""

from __future__ import annotations

import argparse
import importlib.metadata
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, object]:
    import torch

    import verl  # noqa: F401  (runs the verl.plugins entry point, i.e. our registrations)
    from verl_repro.plugin.entry import register_all, registration_report

    register_all()
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        device = "cpu (no CUDA device)"
    return {
        "verl-repro": _version("verl-repro"),
        "verl": _version("verl"),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "device": device,
        **registration_report(),
    }


def all_patches() -> list[dict[str, str]]:
    """Every monkey-patch of a veRL private name in this package: layer, veRL file, target, reason."""
    from verl_repro.cpu.patches import PATCHES as CPU_PATCHES
    from verl_repro.verl_ext.patches import VERL_EXT_PATCHES

    return [
        {"layer": layer, "verl_file": patch.verl_file, "target": f"{patch.module}:{patch.target}", "reason": patch.reason}
        for layer, patches in (("verl_ext", VERL_EXT_PATCHES), ("cpu", CPU_PATCHES))
        for patch in patches
    ]


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0 if not info["failures"] else 1
    for key in ("verl-repro", "verl", "torch", "triton", "transformers", "device"):
        print(f"{key:>13}: {info[key]}")
    print("   registered:")
    for name in info["registered"]:
        print(f"      {name}")
    for module_name, error in info["failures"].items():
        print(f"       FAILED: {module_name}: {error}")
    return 0 if not info["failures"] else 1
