"""The estimator registry: every advantage estimator this package adds to veRL, declared where it is
defined.

An estimator module decorates its function with :func:`advantage_estimator` — the name, the veRL
built-in it builds on, its default normalization and the extra inputs it takes, written once — as
veRL's own ``core_algos`` does with ``@register_adv_est``. The decorator fills :data:`SPECS`, which
every place that needs to know about our estimators reads:

* registration — :func:`register` puts each spec's function into veRL's registry once veRL itself
  imports ``verl.trainer.ppo.core_algos`` (importing that module costs about a second in every
  process that runs ``import verl``; the processes that look an estimator up import it anyway);
* the input check — the decorated function raises :func:`missing_inputs_error` when a required input
  is absent (veRL's stock trainer passes none);
* the trainer's field fetch — :func:`estimator_needs` and :data:`INPUT_FIELDS` (``repro_sync``);
* the start-up checks, the recipe launcher's dry run and the docs tables (:func:`markdown_table`).

The extra keyword arguments themselves are described in ``docs/dev/estimator_contract.md``.
:data:`ESTIMATOR_MODULES` names the modules that declare estimators; :func:`specs` imports them on
first use (torch and the maths, not veRL), so reading the table stays cheap.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from verl_repro.config import PROCESS_REWARD_NORMS
from verl_repro.verl_ext.switches import ENGINE_VENDOR, ENGINE_VENDOR_OVERRIDE, TRAINER_MODE

CORE_ALGOS = "verl.trainer.ppo.core_algos"

# The modules whose functions carry @advantage_estimator, in the order of the docs tables.
ESTIMATOR_MODULES = ("verl_repro.verl_ext.estimators", "verl_repro.verl_ext.corrpo")

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
NORMALIZATIONS = ("group", "batch", "none")


@dataclass(frozen=True)
class EstimatorSpec:
    """One advantage estimator, as veRL's registry and our trainer see it."""

    name: str
    """``algorithm.adv_estimator`` value."""
    method: str
    """``repro`` or ``corrpo`` (another package's estimator: any label)."""
    base: str
    """The veRL built-in whose outcome advantage (or reward normalization) it uses."""
    normalization: str
    """RePro: the default ``repro.process_reward_norm`` (``group`` / ``batch`` / ``none``);
    CorR-PO: how the regularized reward is normalized (``group``)."""
    inputs: tuple[str, ...]
    """Extra keyword arguments it needs from the ``repro_sync`` trainer (checked before the call)."""
    function: Callable
    """The function veRL's registry holds (input check included)."""
    optional_inputs: tuple[str, ...] = ()
    """Extra inputs the trainer passes when it has them; the estimator decides whether it needs them."""
    requirement: str = ""
    """What the run needs beyond the ``repro`` group (docs table)."""

    @property
    def group_form(self) -> str:
        """What ``group`` normalization means for it: the base's own group form, GRPO's otherwise."""
        return self.base if self.base in GROUP_FORMS else "grpo"

    @property
    def all_inputs(self) -> tuple[str, ...]:
        return self.inputs + tuple(name for name in self.optional_inputs if name not in self.inputs)

    def process_normalization(self, process_reward_norm: str = "auto") -> str:
        """The ``verl_repro.algorithms`` normalization for ``repro.process_reward_norm`` (``auto``: the
        spec's default; ``group``: the spec's group form)."""
        if process_reward_norm not in PROCESS_REWARD_NORMS:
            raise ValueError(f"repro.process_reward_norm must be one of {PROCESS_REWARD_NORMS}, got {process_reward_norm!r}")
        key = self.normalization if process_reward_norm == "auto" else process_reward_norm
        return self.group_form if key == "group" else _FIXED_NORMALIZATIONS[key]


SPECS: dict[str, EstimatorSpec] = {}
"""Every declared estimator by name (this package's, in :data:`ESTIMATOR_MODULES` order, then any added)."""


def add(spec: EstimatorSpec) -> EstimatorSpec:
    """Put ``spec`` in the table after checking its fields (also for an estimator of another package,
    so ``repro_sync`` passes it the inputs it names; registering its function in veRL stays the caller's)."""
    unknown = set(spec.all_inputs) - KNOWN_INPUTS
    if unknown:
        raise ValueError(f"estimator {spec.name!r}: unknown inputs {sorted(unknown)}; known: {sorted(KNOWN_INPUTS)}")
    if spec.normalization not in NORMALIZATIONS:
        raise ValueError(f"estimator {spec.name!r}: normalization must be one of {NORMALIZATIONS}, got {spec.normalization!r}")
    SPECS[spec.name] = spec
    return spec


def advantage_estimator(
    name: str,
    *,
    method: str,
    base: str,
    normalization: str,
    inputs: tuple[str, ...],
    optional_inputs: tuple[str, ...] = (),
    requirement: str = "",
) -> Callable[[Callable], Callable]:
    """Declare the decorated function as the advantage estimator ``name`` (``algorithm.adv_estimator``).

    The function is called as veRL calls an estimator, plus the extra inputs it names and
    ``spec=`` its own :class:`EstimatorSpec`; a call in which a required input is absent or None
    raises :func:`missing_inputs_error` before the body runs. Returns the checked function, which
    is what veRL's registry receives.
    """

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def estimator(*args: Any, **kwargs: Any):
            missing = [key for key in inputs if kwargs.get(key) is None]
            if missing:
                raise missing_inputs_error(name, missing)
            return fn(*args, spec=SPECS[name], **kwargs)

        add(EstimatorSpec(name, method, base, normalization, tuple(inputs), estimator, tuple(optional_inputs), requirement))
        return estimator

    return decorator


def load_estimators() -> dict[str, EstimatorSpec]:
    """Import the modules that declare this package's estimators (once) and return the table."""
    for module_name in ESTIMATOR_MODULES:
        importlib.import_module(module_name)
    return SPECS


def _table_rank(spec: EstimatorSpec) -> int:
    module = spec.function.__module__
    return ESTIMATOR_MODULES.index(module) if module in ESTIMATOR_MODULES else len(ESTIMATOR_MODULES)


def specs(method: str | None = None) -> list[EstimatorSpec]:
    """The declared specs (``method``: only ``repro`` or ``corrpo`` ones): this package's in
    :data:`ESTIMATOR_MODULES` order, each module's in declaration order, then any added."""
    ordered = sorted(load_estimators().values(), key=_table_rank)
    return [spec for spec in ordered if method is None or spec.method == method]


def estimator_needs(estimator: str) -> tuple[str, ...]:
    """Extra inputs ``estimator`` takes from the trainer (empty for veRL's own)."""
    spec = load_estimators().get(str(estimator))
    return spec.all_inputs if spec is not None else ()


def fields_to_fetch(needs: tuple[str, ...]) -> list[str]:
    """The TransferQueue fields that build ``needs``, each once, in order."""
    fields: list[str] = []
    for need in needs:
        fields += [name for name in INPUT_FIELDS[need] if name not in fields]
    return fields


def missing_inputs_error(estimator_name: str, missing: list[str]) -> RuntimeError:
    hint = (
        f"advantage estimator '{estimator_name}' needs {missing}, which veRL's stock trainer does not pass. "
        f"Run with trainer.v1.trainer_mode={TRAINER_MODE} (registered by verl-repro)."
    )
    if "logit_grad_norm" in missing:
        hint += (
            f" Per-token logit-gradient norms come from the {ENGINE_VENDOR} engine vendor "
            f"({ENGINE_VENDOR_OVERRIDE}) or from actor_rollout_ref.actor.calculate_sum_pi_squared=True."
        )
    return RuntimeError(hint)


# ----------------------------------------------------------------------------- registration


def own_specs() -> list[EstimatorSpec]:
    """The estimators this package declares (not those another package added with :func:`add`)."""
    return [spec for spec in specs() if spec.function.__module__ in ESTIMATOR_MODULES]


def register_now() -> list[str]:
    """Put every estimator of this package into veRL's registry now (imports ``core_algos``; idempotent)."""
    core_algos = importlib.import_module(CORE_ALGOS)
    for spec in own_specs():
        core_algos.register_adv_est(spec.name)(spec.function)
    return [f"adv_estimator:{spec.name}" for spec in own_specs()]


def register() -> list[str]:
    """Plugin hook: register the estimators once this process imports veRL's ``core_algos`` (at once if
    it already has). Returns the names it will register."""
    from verl_repro.plugin.registrations import register_when_imported

    register_when_imported(__name__, CORE_ALGOS, lambda core_algos: register_now())
    return [f"adv_estimator:{spec.name}" for spec in own_specs()]


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
