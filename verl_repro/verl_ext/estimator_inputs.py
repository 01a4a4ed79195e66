"""Which extra inputs each of our advantage estimators needs from the trainer (docs/dev/estimator_contract.md)."""

from __future__ import annotations

from typing import Callable

KNOWN_INPUTS = frozenset(
    {"repro_config", "responses", "entropy", "logit_grad_norm", "think_end_id", "repro_scoring", "values", "metrics"}
)

# estimator name -> the extra kwargs the repro_sync trainer must pass
ESTIMATOR_INPUTS: dict[str, tuple[str, ...]] = {}


def requires_inputs(*names: str) -> Callable:
    """Mark an estimator function as needing ``names`` from the trainer; use under ``register_adv_est``."""
    unknown = set(names) - KNOWN_INPUTS
    if unknown:
        raise ValueError(f"unknown estimator inputs {sorted(unknown)}; known: {sorted(KNOWN_INPUTS)}")

    def decorator(fn: Callable) -> Callable:
        fn.required_inputs = tuple(names)
        return fn

    return decorator


def declare(estimator_name: str, fn: Callable) -> None:
    ESTIMATOR_INPUTS[estimator_name] = tuple(getattr(fn, "required_inputs", ()))


def missing_inputs_error(estimator_name: str, missing: list[str]) -> RuntimeError:
    hint = (
        f"advantage estimator '{estimator_name}' needs {missing}, which veRL's stock trainer does not pass. "
        "Run with trainer.v1.trainer_mode=repro_sync (registered by verl-repro)."
    )
    if "logit_grad_norm" in missing:
        hint += (
            " Per-token logit-gradient norms come from the repro engine vendor "
            "(+ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR=repro) or from "
            "actor_rollout_ref.actor.calculate_sum_pi_squared=True."
        )
    return RuntimeError(hint)
