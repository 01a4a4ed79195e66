"""The estimator table: one spec per advantage estimator this package adds to veRL.

Every place that needs to know about our estimators reads :data:`ESTIMATORS`:

* registration — :func:`register` puts each spec's function into veRL's registry once veRL itself
  imports ``verl.trainer.ppo.core_algos`` (importing that module costs about a second in every
  process that runs ``import verl``; the processes that look an estimator up import it anyway);
* the input check — :func:`checked_inputs` wraps an estimator so that a call without its required
  inputs (veRL's stock trainer passes none) raises :func:`missing_inputs_error`;
* the trainer's field fetch — :func:`estimator_needs` and :data:`INPUT_FIELDS` (``repro_sync``);
* the recipe launcher's checks (``recipes/launch.py``) and the docs tables (:func:`markdown_table`).

The extra keyword arguments themselves are described in ``docs/dev/estimator_contract.md``. This
module imports neither veRL nor torch, so the launcher's dry run and the docs test read it cheaply.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Union

from verl_repro.config import PROCESS_REWARD_NORMS

logger = logging.getLogger("verl_repro")

CORE_ALGOS = "verl.trainer.ppo.core_algos"

# Extra estimator input -> the TransferQueue fields the repro_sync trainer fetches to build it
# (empty: the trainer holds it itself). Fields a batch lacks are simply not returned.
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "repro_config": (),
    "metrics": (),
    "think_end_id": (),
    "responses": ("responses",),
    "entropy": ("entropy",),
    "values": ("values",),
    "logit_grad_norm": ("logit_grad_norm", "sum_pi_squared", "logit_param_grad_norm"),
    "repro_scoring": ("responses", "entropy", "input_ids", "reward_model"),
}
KNOWN_INPUTS = frozenset(INPUT_FIELDS)

# The process-reward normalization of verl_repro.algorithms.normalize_process_rewards for "batch" / "none".
_FIXED_NORMALIZATIONS = {"batch": "reinforce_plus_plus", "none": "none"}
GROUP_FORMS: dict[str, str] = {
    "grpo": "mean / std over the prompt group's reward entries (std division follows `algorithm.norm_adv_by_std_in_grpo`)",
    "rloo": "minus the mean of the other responses' entries in the prompt group",
    "reinforce_plus_plus_baseline": "minus the prompt group's mean entry, then whitened over the batch",
}


@dataclass(frozen=True)
class EstimatorSpec:
    """One advantage estimator of this package, as veRL's registry and our trainer see it."""

    name: str
    """``algorithm.adv_estimator`` value."""
    method: str
    """``repro`` or ``corrpo``."""
    base: str
    """The veRL built-in whose outcome advantage (or reward normalization) it uses."""
    normalization: str
    """RePro: the default ``repro.process_reward_norm`` (``group`` / ``batch`` / ``none``);
    CorR-PO: how the regularized reward is normalized (``group``)."""
    group_form: str
    """What ``group`` normalization means for it (a key of :data:`GROUP_FORMS`)."""
    inputs: tuple[str, ...]
    """Extra keyword arguments it needs from the ``repro_sync`` trainer (checked before the call)."""
    function: Union[str, Callable]
    """``"module:attribute"`` of the estimator function (imported only at registration), or the function."""
    optional_inputs: tuple[str, ...] = ()
    """Extra inputs the trainer passes when it has them; the estimator decides whether it needs them."""
    requirement: str = ""
    """What the run needs beyond the ``repro`` group (docs table)."""

    @property
    def all_inputs(self) -> tuple[str, ...]:
        return self.inputs + tuple(name for name in self.optional_inputs if name not in self.inputs)

    def load(self) -> Callable:
        if callable(self.function):
            return self.function
        module_name, attribute = self.function.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def process_normalization(self, process_reward_norm: str = "auto") -> str:
        """The ``verl_repro.algorithms`` normalization for ``repro.process_reward_norm`` (``auto``: the
        spec's default; ``group``: the spec's group form)."""
        if process_reward_norm not in PROCESS_REWARD_NORMS:
            raise ValueError(f"repro.process_reward_norm must be one of {PROCESS_REWARD_NORMS}, got {process_reward_norm!r}")
        key = self.normalization if process_reward_norm == "auto" else process_reward_norm
        return self.group_form if key == "group" else _FIXED_NORMALIZATIONS[key]


_REPRO_INPUTS = ("repro_scoring", "repro_config", "metrics")
_CORRPO_INPUTS = ("repro_config", "entropy", "logit_grad_norm")
_ESTIMATORS_MODULE = "verl_repro.verl_ext.estimators"
_CORRPO_MODULE = "verl_repro.verl_ext.corrpo"

ESTIMATORS: tuple[EstimatorSpec, ...] = (
    EstimatorSpec("repro_grpo", "repro", "grpo", "group", "grpo", _REPRO_INPUTS,
                  f"{_ESTIMATORS_MODULE}:compute_repro_grpo_advantage"),
    EstimatorSpec("repro_rloo", "repro", "rloo", "group", "rloo", _REPRO_INPUTS,
                  f"{_ESTIMATORS_MODULE}:compute_repro_rloo_advantage"),
    EstimatorSpec("repro_reinforce_plus_plus", "repro", "reinforce_plus_plus", "batch", "grpo", _REPRO_INPUTS,
                  f"{_ESTIMATORS_MODULE}:compute_repro_reinforce_plus_plus_advantage"),
    EstimatorSpec("repro_reinforce_plus_plus_baseline", "repro", "reinforce_plus_plus_baseline", "group",
                  "reinforce_plus_plus_baseline", _REPRO_INPUTS,
                  f"{_ESTIMATORS_MODULE}:compute_repro_reinforce_plus_plus_baseline_advantage"),
    EstimatorSpec("repro_ppo", "repro", "gae", "none", "grpo", _REPRO_INPUTS + ("values",),
                  f"{_ESTIMATORS_MODULE}:compute_repro_ppo_advantage", requirement="`critic.enable=True`"),
    EstimatorSpec("corrpo", "corrpo", "grpo", "group", "grpo", _CORRPO_INPUTS, f"{_CORRPO_MODULE}:compute_corrpo_advantage",
                  optional_inputs=("responses", "think_end_id", "metrics"), requirement="a source of `logit_grad_norm`"),
    EstimatorSpec("corrpo_rloo", "corrpo", "rloo", "group", "rloo", _CORRPO_INPUTS, f"{_CORRPO_MODULE}:compute_corrpo_rloo_advantage",
                  optional_inputs=("responses", "think_end_id", "metrics"), requirement="a source of `logit_grad_norm`"),
)
SPECS: dict[str, EstimatorSpec] = {spec.name: spec for spec in ESTIMATORS}


def _check_spec(spec: EstimatorSpec) -> EstimatorSpec:
    unknown = set(spec.all_inputs) - KNOWN_INPUTS
    if unknown:
        raise ValueError(f"estimator {spec.name!r}: unknown inputs {sorted(unknown)}; known: {sorted(KNOWN_INPUTS)}")
    if spec.group_form not in GROUP_FORMS:
        raise ValueError(f"estimator {spec.name!r}: group_form must be one of {sorted(GROUP_FORMS)}, got {spec.group_form!r}")
    return spec


for _spec in ESTIMATORS:
    _check_spec(_spec)


def add(spec: EstimatorSpec) -> EstimatorSpec:
    """Add an estimator of another package to the table, so ``repro_sync`` passes it the inputs it names.
    Registering its function in veRL stays the caller's business."""
    SPECS[spec.name] = _check_spec(spec)
    return spec


def specs(method: str | None = None) -> list[EstimatorSpec]:
    """The specs of this package (``method``: only ``repro`` or ``corrpo`` ones), in table order."""
    return [spec for spec in ESTIMATORS if method is None or spec.method == method]


def estimator_needs(estimator: str) -> tuple[str, ...]:
    """Extra inputs ``estimator`` takes from the trainer (empty for veRL's own estimators)."""
    spec = SPECS.get(str(estimator))
    return spec.all_inputs if spec is not None else ()


def fields_to_fetch(needs: tuple[str, ...]) -> list[str]:
    """The TransferQueue fields that build ``needs``, each once, in order."""
    fields: list[str] = []
    for need in needs:
        fields += [name for name in INPUT_FIELDS[need] if name not in fields]
    return fields


# ----------------------------------------------------------------------------- the input check


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


def checked_inputs(estimator_name: str) -> Callable[[Callable], Callable]:
    """Decorate the function of ``SPECS[estimator_name]``: a call in which one of the spec's required
    inputs is absent or None raises :func:`missing_inputs_error` before the body runs."""
    required = SPECS[estimator_name].inputs

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def estimator(*args: Any, **kwargs: Any):
            missing = [name for name in required if kwargs.get(name) is None]
            if missing:
                raise missing_inputs_error(estimator_name, missing)
            return fn(*args, **kwargs)

        return estimator

    return decorator


# ----------------------------------------------------------------------------- registration


def register_now() -> list[str]:
    """Put every estimator of the table into veRL's registry now (imports ``core_algos``; idempotent)."""
    core_algos = importlib.import_module(CORE_ALGOS)
    for spec in ESTIMATORS:
        core_algos.register_adv_est(spec.name)(spec.load())
    return [f"adv_estimator:{spec.name}" for spec in ESTIMATORS]


def _register_when_veRL_imports_core_algos(module) -> None:
    try:
        register_now()
    except Exception as error:  # never break veRL's own import; the lookup then names the estimator
        from verl_repro.plugin.entry import record_failure

        record_failure(__name__, error)


def register() -> list[str]:
    """Plugin hook: register the table's estimators once this process imports veRL's ``core_algos``
    (at once if it already has). Returns the names it will register."""
    from verl_repro.plugin.import_hooks import when_imported

    when_imported(CORE_ALGOS, _register_when_veRL_imports_core_algos)
    return [f"adv_estimator:{spec.name}" for spec in ESTIMATORS]


# ----------------------------------------------------------------------------- docs


def markdown_table(method: str = "repro") -> str:
    """The estimator table of ``docs/repro.md`` (``method="repro"``); a test keeps the page in sync."""
    lines = [
        "| estimator | base (veRL) | `repro.process_reward_norm` default | `group` means | extra requirement |",
        "|---|---|---|---|---|",
    ]
    for spec in specs(method):
        lines.append(
            f"| `{spec.name}` | `{spec.base}` | `{spec.normalization}` | {GROUP_FORMS[spec.group_form]} | "
            f"{spec.requirement or '—'} |"
        )
    return "\n".join(lines)
