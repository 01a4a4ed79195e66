"""``verl-repro`` command line: thin dispatch to subcommand modules.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports (torch, veRL, transformers) inside ``run`` so ``verl-repro --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("verl_repro.info", "versions, device, and what this package registered into veRL"),
    "demo": ("verl_repro.demo.command", "train RePro-GRPO and CorR-PO against GRPO for a few steps on SmolLM2-135M (CPU); --walkthrough: one batch in detail"),
    "cpu-run": ("verl_repro.cpu.launcher", "run veRL's main_ppo on a CPU (any main_ppo overrides)"),
    "inversion": ("verl_repro.analysis.inversion", "entropy-gradient inversion analysis of a model"),
    "analyze": ("verl_repro.analysis.trajectories", "RePro J-curves, backtracking and token efficiency"),
    "plot": ("verl_repro.analysis.training_curves", "training curves (reward, accuracy, length, entropy, repro/corr figures) of veRL metrics files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-repro", description="RePro and CorR-PO for veRL")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # cpu-run forwards arbitrary Hydra overrides, which argparse would reject.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.extra_args = unknown
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
