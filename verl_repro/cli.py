"""``verl-repro`` command line: thin dispatch to subcommand modules, and the rules every command
(the subcommands and ``scripts/*.py``) follows for its options.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy
imports (torch, veRL, transformers) inside ``run`` so ``verl-repro --help`` stays fast.

The rules (docs/development.md, "Command-line options"):

* a bad option or input ends in **one line** on stderr naming it and what to do, exit code 2, no
  traceback (:class:`ArgumentParser`, :func:`report_usage_errors`; ``VERL_REPRO_TRACEBACK=1`` shows
  the traceback);
* every count-like option is read by :func:`count`: an int >= 1 (>= 0 where 0 has a stated
  meaning); "no limit" is the option left out, never 0 or -1;
* options are checked before any work (model loading, sampling, Ray).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from verl_repro import UsageError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("verl_repro.info", "versions, device, and what this package registered into veRL"),
    "demo": ("verl_repro.demo.command", "train RePro-GRPO and CorR-PO against GRPO for a few steps on SmolLM2-135M (CPU); --walkthrough: one batch in detail"),
    "cpu-run": ("verl_repro.cpu.launcher", "run veRL's main_ppo on a CPU (any main_ppo overrides)"),
    "inversion": ("verl_repro.analysis.inversion", "entropy-gradient inversion analysis of a model"),
    "analyze": ("verl_repro.analysis.trajectories", "RePro J-curves, backtracking and token efficiency"),
    "plot": ("verl_repro.analysis.training_curves", "training curves (reward, accuracy, length, entropy, repro/corr figures) of veRL metrics files"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: message``, exit 2) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(minimum: int = 1, *, optional_limit: bool = False) -> Callable[[str], int]:
    """The ``type=`` of every count-like option: an int >= ``minimum`` (1 unless 0 has a meaning of
    its own, like "disabled"). A negative or zero count never means "all": a limit that is optional
    (``optional_limit``, default None) means "all" when it is left out, and its message says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            hint = "; leave the option out for no limit" if optional_limit else ""
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}{hint}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse


def number(*, above: Optional[float] = None, minimum: Optional[float] = None, maximum: Optional[float] = None) -> Callable[[str], float]:
    """The ``type=`` of a real-valued option: a finite number ``> above``, ``>= minimum``, ``<= maximum``."""
    conditions = [text for bound, text in ((above, f"> {above}"), (minimum, f">= {minimum}"), (maximum, f"<= {maximum}"))
                  if bound is not None]
    wanted = " ".join(["a finite number", " and ".join(conditions)]).strip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (above is not None and not value > above) or (
                minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def claim_output_dir(requested: Optional[str | Path], default_parent: str | Path, flag: str = "--output-dir") -> Path:
    """The folder a command writes its results to, created empty: results never overwrite or mix
    with earlier ones.

    ``requested`` (the ``flag`` option) must be absent or an empty folder, else :class:`UsageError`.
    Without it, the command gets the next numbered folder ``default_parent/001``, ``002``, ... and
    ``default_parent/latest`` points at it. The caller prints the folder it got.
    """
    if requested is not None:
        path = Path(requested)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            what = "is a file" if not path.is_dir() else "is not empty"
            raise UsageError(f"{flag} {path} {what}; results never overwrite earlier ones: name a new folder, "
                             f"or leave {flag} out for a fresh numbered one under {default_parent}")
        path.mkdir(parents=True, exist_ok=True)
        return path
    parent = Path(default_parent)
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
    number = max(taken, default=0) + 1
    while True:
        path = parent / f"{number:03d}"
        try:
            path.mkdir()  # atomic: two commands started together never share a folder
            break
        except FileExistsError:
            number += 1
    latest = parent / "latest"
    try:
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(path.name)
    except OSError:  # a file system without symlinks: the printed path is enough
        pass
    return path


def check_new_file(path: str | Path, flag: str) -> Path:
    """An output file the command will write: refused when it exists (results never overwrite
    earlier ones) or when its folder is a file."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{flag} {path} already exists; results never overwrite earlier ones: name a new path or remove it")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: {path.parent} is a file, not a folder")
    return path


# An error of the user's input: the message says which and what to do. OSError covers a missing
# file, a folder given for a file and a denied path, which the message names (its filename).
USER_ERRORS = (UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def report_usage_errors(prog: str, run: Callable[[], int]) -> int:
    """``run()``, with a user's error reported as one line ``prog: error: ...`` on stderr (exit 2)."""
    try:
        return int(run() or 0)
    except USER_ERRORS as error:
        if os.environ.get("VERL_REPRO_TRACEBACK"):
            raise
        message = str(error) if not isinstance(error, OSError) or not error.filename else f"{error.filename}: {error.strerror}"
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="verl-repro", description="RePro and CorR-PO for veRL")
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
    prog = f"verl-repro {args.command}"
    if unknown and not getattr(args, "accepts_extra_args", False):
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)}\n")
    # Hydra overrides are key=value, +key=value, ~key: a flag or a bare word is a typo of ours or of
    # the user's, which main_ppo would report only after starting.
    not_overrides = [u for u in unknown if u.startswith("-") or not ("=" in u or u.startswith("~"))]
    if not_overrides:
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(not_overrides)} "
                       "(everything else is passed to main_ppo as a Hydra override key=value)\n")
    if unknown:
        args.extra_args = unknown
    return report_usage_errors(f"verl-repro {args.command}", lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
