#!/usr/bin/env python3
"""Helpers behind the recipe launchers' ``--dry-run`` and ``--cpu-smoke`` flags (run by path).

    python recipes/launch.py dry-run RECIPE [hydra overrides...]
    python recipes/launch.py cpu-smoke RECIPE [--print-command] [hydra overrides...]

``dry-run`` composes the recipe exactly as ``python -m verl.trainer.main_ppo --config-path=recipes
--config-name=RECIPE ...`` would (veRL's ``ppo_trainer`` defaults + ``paper_defaults.yaml`` + the
recipe + the overrides), then runs on the CPU every check that needs no worker: veRL's own
``validate_config``, the typed config sections, interpolations, the estimator / trainer mode /
reward manager registrations, and the start-up checks ``main_ppo``'s driver runs before Ray
(``verl_repro.verl_ext.preflight``: estimator / trainer pairing, the ``repro`` group and the
estimator's needs, reward options, finiteness). No Ray, no GPU.
Exit code 0 when everything passes, 1 otherwise (each failure names the key to change).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

RECIPE_DIR = Path(__file__).resolve().parent
SHARED_CONFIGS = {"paper_defaults", "repro_paper_setting"}


def list_recipes() -> list[str]:
    """Recipe names (YAML files with a matching bash launcher)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if p.stem not in SHARED_CONFIGS and p.with_suffix(".sh").exists())


def compose_recipe(recipe: str, overrides: list[str]):
    """The full veRL trainer config of ``recipe`` with ``overrides`` (Hydra compose, struct mode)."""
    import verl  # noqa: F401  -- loads the verl.plugins entry points (ConfigStore group, registrations)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not (RECIPE_DIR / f"{recipe}.yaml").exists():
        raise SystemExit(f"unknown recipe {recipe!r}; recipes: {', '.join(list_recipes())}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(RECIPE_DIR), version_base=None):
        return compose(config_name=recipe, overrides=list(overrides))


# ----------------------------------------------------------------------------- checks
# Each check takes the composed config, raises on failure (message names the key) or returns a
# one-line detail for the report.


def check_verl_validate_config(config) -> str:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    use_ref, use_critic = need_reference_policy(config), need_critic(config)
    import contextlib
    import io

    # veRL's own checks; the plugin extends validate_config with verl-repro's, which run below.
    validate_config = getattr(validate_config, "__wrapped__", validate_config)
    with contextlib.redirect_stdout(io.StringIO()):  # veRL prints a success banner
        validate_config(config=_without_model_downloads(config), use_reference_policy=use_ref, use_critic=use_critic)
    return f"reference model: {'yes' if use_ref else 'no'}, critic: {'yes' if use_critic else 'no'}"


def _without_model_downloads(config):
    """A copy whose critic has no ``model`` node: building its HFModelConfig downloads the model's
    config.json, which a dry run must not do (the model path itself is reported, not fetched)."""
    from omegaconf import OmegaConf, open_dict

    copy = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    OmegaConf.set_struct(copy, True)
    if OmegaConf.select(copy, "critic.model") is not None:
        with open_dict(copy):
            copy.critic.model = None
    return copy


def check_typed_sections(config) -> str:
    """Instantiate the config dataclasses veRL's workers build from these sections."""
    from verl.utils.config import omega_conf_to_dataclass

    # The sections veRL's trainer and agent loop turn into dataclasses before any worker starts.
    # actor_rollout_ref.model is left out: instantiating it downloads the model's config.
    sections = ["algorithm", "actor_rollout_ref.rollout", "actor_rollout_ref.rollout.checkpoint_engine", "distillation"]
    from omegaconf import OmegaConf

    if OmegaConf.select(config, "critic.enable"):
        sections.append("critic")
    offline_config = _without_model_downloads(config)
    for key in sections:
        node = OmegaConf.select(offline_config, key)
        try:
            omega_conf_to_dataclass(node)
        except Exception as exc:
            raise ValueError(f"{key}: {type(exc).__name__}: {exc}") from exc
    return ", ".join(sections)


def check_interpolations(config) -> str:
    from omegaconf import OmegaConf

    OmegaConf.to_container(config, resolve=True)
    return "all ${...} values resolve"


def check_estimator(config) -> str:
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    name = str(config.algorithm.adv_estimator)
    try:
        get_adv_estimator_fn(name)
    except ValueError:
        raise ValueError(f"algorithm.adv_estimator={name} is not registered in veRL ({_plugin_failures()})") from None
    return name


def check_trainer_mode(config) -> str:
    mode = str(config.trainer.v1.trainer_mode)
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_repro.verl_ext import preflight

    try:
        trainer_cls = get_trainer_cls(mode)
    except ValueError as exc:
        raise ValueError(f"trainer.v1.trainer_mode={mode}: {exc} ({_plugin_failures()})") from None
    preflight.check_estimator_pairing(config)  # what the driver checks before Ray starts
    return f"{mode} -> {trainer_cls.__name__}"


def check_reward_manager(config) -> str:
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    name = str(config.reward.reward_manager.name)
    try:
        manager_cls = resolve_reward_manager_cls(config)
    except ValueError as exc:
        raise ValueError(f"reward.reward_manager.name={name}: {exc} ({_plugin_failures()})") from None
    from verl_repro.verl_ext import preflight

    # The reward workers' own option check, as the driver runs it before Ray starts.
    return f"{name} -> {manager_cls.__name__} ({preflight.check_reward_options(config)})"


def check_repro_group(config) -> str:
    from verl_repro.verl_ext import preflight
    from verl_repro.verl_ext.estimator_registry import load_estimators

    estimator = str(config.algorithm.adv_estimator)
    spec = load_estimators().get(estimator)
    if spec is None:
        if preflight.check_repro_group(config) is not None:
            return "present, valid (unused by this estimator)"
        return f"not needed by {estimator}"
    preflight.check_estimator_pairing(config)  # the repro group is there (+repro=default)
    # The trainer's own start-up check: ranges, finiteness, reference model / critic / gradient-norm needs.
    repro = preflight.check_repro_group(config)
    if spec.method == "repro":
        from verl_repro.verl_ext.estimators import paper_setting_differences

        for line in paper_setting_differences(repro):
            print(f"[note]      {line}")
    if spec.method == "corrpo":
        c = repro.corr
        return f"corr: coef={c.coef} kind={c.kind} scope={c.scope} min_tokens={c.min_tokens} outcome_weight={c.outcome_weight}"
    return (
        f"k={repro.num_segments} alpha={repro.alpha} w={repro.stability_weight} scorer={repro.scorer} "
        f"no_think_end={repro.no_think_end} process_reward_norm={repro.process_reward_norm} scoring_mode={repro.scoring_mode}"
    )


def _plugin_failures() -> str:
    from verl_repro.plugin.entry import registration_report

    failures = registration_report()["failures"]
    return f"plugin failures: {failures}" if failures else "the verl-repro plugin reported no failure"


CHECKS: list[tuple[str, Callable[[Any], str]]] = [
    ("veRL validate_config", check_verl_validate_config),
    ("typed config sections", check_typed_sections),
    ("interpolations", check_interpolations),
    ("advantage estimator", check_estimator),
    ("trainer mode", check_trainer_mode),
    ("reward manager", check_reward_manager),
    ("repro group", check_repro_group),
]


def _data_note(path: str) -> str:
    return "" if os.path.exists(os.path.expanduser(path)) else "   (missing: see scripts/prepare_data.py)"


def dry_run(recipe: str, overrides: list[str], print_config: bool = False) -> int:
    from omegaconf import OmegaConf

    try:
        config = compose_recipe(recipe, overrides)
    except Exception as exc:  # Hydra names the key: unknown override, missing default
        cause = exc.__cause__ or exc
        detail = "; ".join(line.strip() for line in str(cause).splitlines() if line.strip())  # OmegaConf's full_key on the same line
        print(f"[FAIL]      compose recipes/{recipe}.yaml with {list(overrides)}: {type(cause).__name__}: {detail}")
        print("dry run FAILED: the config does not compose (an override that adds a key needs a leading +)")
        return 1
    cfg = config
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    print(f"recipe      {recipe}  (recipes/{recipe}.yaml on veRL's ppo_trainer defaults, {len(overrides)} override(s))")
    print(f"model       {cfg.actor_rollout_ref.model.path}")
    print(f"cluster     {cfg.trainer.nnodes} node(s) x {cfg.trainer.n_gpus_per_node} GPU(s), rollout {rollout.name} TP={rollout.tensor_model_parallel_size}")
    print(f"estimator   {cfg.algorithm.adv_estimator}   trainer mode {cfg.trainer.v1.trainer_mode}   reward {cfg.reward.reward_manager.name}")
    print(
        f"hparams     lr={actor.optim.lr:g} prompts/step={cfg.data.train_batch_size} n={rollout.n} "
        f"max_response={cfg.data.max_response_length} T={rollout.temperature} "
        f"clip={actor.clip_ratio_low}/{actor.clip_ratio_high} kl_loss={actor.kl_loss_coef if actor.use_kl_loss else 'off'}"
    )
    resolved = OmegaConf.to_container(cfg.data, resolve=True)
    train_files = resolved["train_files"] if isinstance(resolved["train_files"], list) else [resolved["train_files"]]
    val_files = resolved["val_files"] if isinstance(resolved["val_files"], list) else [resolved["val_files"]]
    for path in train_files:
        print(f"train data  {path}{_data_note(path)}")
    for path in val_files:
        print(f"val data    {path}{_data_note(path)}")
    if print_config:
        print(OmegaConf.to_yaml(config))

    failures = 0
    for title, check in CHECKS:
        try:
            detail = check(config)
            print(f"[ok]        {title}: {detail}")
        except Exception as exc:  # report every failing check, then exit 1
            failures += 1
            print(f"[FAIL]      {title}: {type(exc).__name__}: {exc}")
    if failures:
        print(f"dry run FAILED: {failures} check(s) failed")
        return 1
    print(f"dry run OK: the config is valid; no Ray, worker or GPU was started")
    return 0


# ----------------------------------------------------------------------------- CPU smoke hook


def cpu_smoke(recipe: str, overrides: list[str], workdir: str, print_command: bool) -> int:
    """Run a few steps of this recipe on a tiny model on the CPU.

    Uses ``verl_repro.cpu.launcher`` (what ``verl-repro cpu-run --smoke`` runs): CPU platform, HF
    rollout, a tiny checkpoint and dataset; the recipe keeps its estimator, trainer mode and
    reward manager.
    """
    import subprocess

    from verl_repro.cpu import launcher, smoke

    config = compose_recipe(recipe, [])
    keep = [
        f"algorithm.adv_estimator={config.algorithm.adv_estimator}",
        f"trainer.v1.trainer_mode={config.trainer.v1.trainer_mode}",
        f"reward.reward_manager.name={config.reward.reward_manager.name}",
        # The smoke workload's custom reward would be ignored by our reward manager anyway.
        "reward.custom_reward_function.path=null",
        "reward.reward_kwargs.num_processes=1",
        f"trainer.experiment_name={recipe}_cpu_smoke",
    ]
    if config.get("repro") is not None and "num_segments" in config.repro:
        # A random tiny model never closes its thinking: let RePro treat the end as </think> so the
        # smoke run exercises the ground-truth scoring too.
        keep.append("repro.no_think_end=use_end")
    workers = 1
    # --print-command runs nothing, so it only names the workspace's paths.
    workspace = smoke.smoke_workspace_paths(workdir) if print_command else smoke.prepare_smoke_workspace(workdir)
    merged = launcher.merge_overrides(launcher.cpu_overrides(workers), smoke.smoke_overrides(workspace), keep, overrides)
    # Hydra's own options go first: argparse stops collecting overrides at the first option.
    command = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={RECIPE_DIR}", f"--config-name={recipe}", *merged]
    if print_command:
        print(" ".join(command))
        return 0
    print("cpu smoke: " + " ".join(command), flush=True)
    return subprocess.call(command, env=launcher.cpu_environment())


def _quiet() -> None:
    """A dry run must not reach the network, and veRL's import-time warnings are noise here."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VERL_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dry = sub.add_parser("dry-run", help="validate the full Hydra config on the CPU, start nothing")
    dry.add_argument("recipe")
    dry.add_argument("--print-config", action="store_true", help="also print the composed config")
    smoke_parser = sub.add_parser("cpu-smoke", help="a few steps on a tiny model on the CPU (needs the CPU backend)")
    smoke_parser.add_argument("recipe")
    smoke_parser.add_argument("--workdir", default=os.environ.get("SMOKE_DIR", "/tmp/verl_repro_cpu_smoke"))
    smoke_parser.add_argument("--print-command", action="store_true")
    sub.add_parser("list", help="list the recipes")
    args, overrides = parser.parse_known_args(argv)
    unknown_flags = [o for o in overrides if o.startswith("--")]
    if unknown_flags:
        parser.error(f"unrecognized options {unknown_flags}; Hydra overrides look like key=value")
    if args.command == "list":
        print("\n".join(list_recipes()))
        return 0
    if args.command == "dry-run":
        _quiet()
        return dry_run(args.recipe, overrides, print_config=args.print_config)
    return cpu_smoke(args.recipe, overrides, args.workdir, args.print_command)


if __name__ == "__main__":
    sys.exit(main())
