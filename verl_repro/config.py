"""Configuration of verl-repro: one dataclass per group, defaults, and ``validate()`` naming the bad key.

In a veRL run these live under the top-level Hydra group ``repro`` (``+repro=default`` adds the
group with these defaults; ``repro.alpha=0.2`` then overrides a key). CorR-PO keys are the nested
group ``repro.corr``. This module imports no veRL, so the maths, the analysis tools and the
recipes' ``--dry-run`` can all validate the same objects. The choices the maths defines (``no_think_end``
policies, correlation kinds and scopes, the default boundary patterns and ``j_base_eps``) are read from
:mod:`verl_repro.algorithms`, their one owner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from verl_repro import UsageError
from verl_repro.algorithms.correlation import CORRELATION_KINDS, TOKEN_SCOPES
from verl_repro.algorithms.repro import DEFAULT_J_BASE_EPS
from verl_repro.algorithms.segments import DEFAULT_BOUNDARY_PATTERNS, NO_THINK_END_POLICIES

SCORERS = ("ref", "actor")
SCORING_MODES = ("naive", "prefix_shared")
PROCESS_REWARD_NORMS = ("auto", "group", "batch", "none")
CORR_SIGNALS = ("param_grad", "softmax_grad")
CORR_AGGREGATES = ("mean", "sum")
ANSWER_PLACEHOLDER = "{ground_truth}"


class ConfigError(UsageError):
    """A configuration value is invalid; the message names the full key, e.g. ``repro.alpha``."""


def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key} {message}, got {value!r}")


_ITEM_CHECKS = {"int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "ints"),
                "str": (lambda v: isinstance(v, str), "strings")}


def check_field_types(settings: Any, prefix: str, error: type[ValueError] = ConfigError) -> None:
    """Every field of the dataclass ``settings`` holds its declared type; ``error`` names the key.

    Runs before the range checks, which would otherwise fail with a bare ``TypeError`` (``None in
    "..."``) or pass a wrong value silently: ``inf`` passes ``>= 0`` and becomes NaN advantages, and
    a bare string where a list belongs (``repro.boundary_patterns=abc``) would be read as its
    characters. ``float``: a finite number (ints are numbers); ``int``: an int; ``bool``: true or
    false; ``str``: a string; ``list[int]`` / ``list[str]``: a list (never a bare string) of those.
    """
    for spec in dataclasses.fields(settings):
        key, value = f"{prefix}.{spec.name}", getattr(settings, spec.name)
        kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "float" and not (number and math.isfinite(value)):
            raise error(f"{key} must be a finite number, got {value!r}")
        if kind == "int" and not (number and isinstance(value, int)):
            raise error(f"{key} must be an int, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise error(f"{key} must be true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise error(f"{key} must be a string, got {value!r} ({type(value).__name__}); quote it to pass text")
        if kind.startswith("list[") and kind[5:-1] in _ITEM_CHECKS:
            item_ok, items = _ITEM_CHECKS[kind[5:-1]]
            if isinstance(value, str):
                raise error(f"{key} must be a list of {items}, got the bare string {value!r}; for one entry write {key}=[{value!r}]")
            if not isinstance(value, (list, tuple)):
                raise error(f"{key} must be a list of {items}, got {value!r}")
            wrong = [item for item in value if not item_ok(item)]
            if wrong:
                raise error(f"{key} must be a list of {items}, got {list(value)!r} ({wrong[0]!r} is not)")


@dataclass
class CorrConfig:
    """CorR-PO: reward regularization by the entropy / logit-gradient correlation (docs/corrpo.md)."""

    coef: float = 0.1
    """λ in ``r_i = outcome_weight · r_outcome_i − λ · ρ_i``."""
    kind: str = "spearman"
    """``spearman`` (average ranks for ties) or ``pearson``."""
    scope: str = "thinking"
    """Tokens that enter ρ: ``thinking`` (before the first ``</think>``) or ``all`` response tokens."""
    min_tokens: int = 8
    """Responses with fewer in-scope tokens (or unique token ids, for ``unit=unique_tokens``) get ρ = 0 (counted in ``corr/skipped``)."""
    outcome_weight: float = 1.0
    """Weight of the verifier's outcome reward; 0 is the verifier-free mode (regularizer only)."""
    signal: str = "param_grad"
    """Gradient strength s_t: ``param_grad`` (norm of ∂z[t, y_t]/∂W over attention projections, the paper's quantity) or ``softmax_grad`` (||softmax(z_t) − onehot(y_t)||, positively correlated with entropy by construction)."""
    layers: list[int] = field(default_factory=lambda: [-1])
    """Decoder layers of W for ``param_grad``; training supports the last layer, ``[-1]``."""
    matrices: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "o_proj"])
    """Projection matrices of W for ``param_grad``: any of q_proj, k_proj, v_proj, o_proj (k_proj needs ``method=exact``)."""
    norm: str = "nuc"
    """Matrix norm of ∂z/∂W: ``nuc`` (nuclear, the paper's) or ``fro``."""
    aggregate: str = "mean"
    """How the per-matrix norms combine into s_t: ``mean`` or ``sum``."""
    unit: str = "tokens"
    """What ρ correlates over: ``tokens`` (each in-scope token) or ``unique_tokens`` (per response, the mean of H and s per token id, as the paper's statistic)."""
    method: str = "auto"
    """How ``param_grad`` is computed: ``fast`` (all tokens at once; q/v/o of the last layer), ``exact`` (one backward of the last layer per token), ``auto`` (fast when it applies)."""

    def validate(self, prefix: str = "repro.corr") -> "CorrConfig":
        from verl_repro.algorithms.correlation import CORRELATION_UNITS
        from verl_repro.gradients import FAST_MATRICES, MATRICES, METHODS, NORMS

        check_field_types(self, prefix)
        _require(self.coef >= 0, f"{prefix}.coef", "must be >= 0", self.coef)
        _require(self.kind in CORRELATION_KINDS, f"{prefix}.kind", f"must be one of {CORRELATION_KINDS}", self.kind)
        _require(self.scope in TOKEN_SCOPES, f"{prefix}.scope", f"must be one of {TOKEN_SCOPES}", self.scope)
        _require(self.min_tokens >= 3, f"{prefix}.min_tokens", "must be >= 3 (a correlation needs 3 points)", self.min_tokens)
        _require(self.outcome_weight >= 0, f"{prefix}.outcome_weight", "must be >= 0", self.outcome_weight)
        _require(self.signal in CORR_SIGNALS, f"{prefix}.signal", f"must be one of {CORR_SIGNALS}", self.signal)
        _require(
            len(self.layers) > 0 and all(isinstance(v, int) and not isinstance(v, bool) for v in self.layers),
            f"{prefix}.layers", "must be a non-empty list of decoder layer indices", self.layers,
        )
        _require(
            len(self.matrices) > 0 and len(set(self.matrices)) == len(self.matrices) and all(m in MATRICES for m in self.matrices),
            f"{prefix}.matrices", f"must be a non-empty list of distinct names from {MATRICES}", self.matrices,
        )
        _require(self.norm in NORMS, f"{prefix}.norm", f"must be one of {NORMS}", self.norm)
        _require(self.aggregate in CORR_AGGREGATES, f"{prefix}.aggregate", f"must be one of {CORR_AGGREGATES}", self.aggregate)
        _require(self.unit in CORRELATION_UNITS, f"{prefix}.unit", f"must be one of {CORRELATION_UNITS}", self.unit)
        _require(self.method in METHODS, f"{prefix}.method", f"must be one of {METHODS}", self.method)
        if self.signal == "param_grad" and self.method == "fast":
            extra = sorted(set(self.matrices) - set(FAST_MATRICES))
            _require(not extra, f"{prefix}.method", f"fast covers {list(FAST_MATRICES)}; {extra} need method=exact", self.method)
        return self


@dataclass
class ReproConfig:
    """RePro process rewards (docs/repro.md, "RePro maths") and the ground-truth scoring that feeds them."""

    num_segments: int = 10
    """k: step boundaries kept per response, those whose next token has the highest entropy."""
    stability_weight: float = 0.5
    """w in ``S = (1-w)·S_magn + w·S_stab``; 0 is magnitude-only (the public reference code)."""
    stability_ema: float = 0.0
    """EMA smoothing factor applied to the J sequence before Kendall τ; 0 disables it."""
    alpha: float = 0.1
    """α in ``Â = A + α·Ã``: weight of the process advantage on the outcome advantage."""
    gamma: float = 1.0
    """Discount of the process-reward return-to-go."""
    scorer: str = "ref"
    """Which policy computes J: ``ref`` (frozen reference worker) or ``actor`` (current policy)."""
    scoring_mode: str = "naive"
    """``naive`` scores one sequence per cut; ``prefix_shared`` scores all cuts in one pass."""
    scoring_micro_batch_size: int = 16
    """Per data-parallel rank: sequences per scoring micro-batch (naive) or whole responses with all their answer copies (prefix_shared: size it like log_prob_micro_batch_size_per_gpu)."""
    answer_template: str = "\\boxed{" + ANSWER_PLACEHOLDER + "}"
    """How the ground truth is rendered after a cut; ``{ground_truth}`` is replaced literally."""
    max_answer_tokens: int = 64
    """Rendered answers longer than this are truncated (counted in ``repro/truncated_answers``)."""
    answer_bos: bool = False
    """Put the tokenizer's BOS token before the answer tokens, as the authors' code tokenizes J's answer (J then averages over it too); False: the answer follows the cut directly (docs/repro.md)."""
    boundary_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_BOUNDARY_PATTERNS))
    """A step ends after the token where the decoded response text ends with one of these, however the tokenizer split them; a run of newlines ends one step."""
    think_end_token: str = "</think>"
    """End-of-thinking token; its id is looked up in the tokenizer, never hard-coded."""
    no_think_end: str = "skip"
    """Response without ``</think>``: ``skip`` (outcome advantage only) or ``use_end`` (end acts as e)."""
    j_base_eps: float = DEFAULT_J_BASE_EPS
    """|J_b| below this makes the magnitude undefined: that response gets no process reward."""
    process_reward_norm: str = "auto"
    """How process rewards are normalized: ``group`` (per prompt group, in the estimator's group form), ``batch`` (whitened over the batch), ``none``; ``auto`` is each estimator's own (docs/repro.md)."""
    corr: CorrConfig = field(default_factory=CorrConfig)

    def validate(self, prefix: str = "repro") -> "ReproConfig":
        check_field_types(self, prefix)
        _require(isinstance(self.num_segments, int) and self.num_segments > 0, f"{prefix}.num_segments", "must be a positive int", self.num_segments)
        _require(0.0 <= self.stability_weight <= 1.0, f"{prefix}.stability_weight", "must be in [0, 1]", self.stability_weight)
        _require(0.0 <= self.stability_ema < 1.0, f"{prefix}.stability_ema", "must be in [0, 1) (0 disables smoothing)", self.stability_ema)
        _require(self.alpha >= 0, f"{prefix}.alpha", "must be >= 0", self.alpha)
        _require(0.0 < self.gamma <= 1.0, f"{prefix}.gamma", "must be in (0, 1]", self.gamma)
        _require(self.scorer in SCORERS, f"{prefix}.scorer", f"must be one of {SCORERS}", self.scorer)
        _require(self.scoring_mode in SCORING_MODES, f"{prefix}.scoring_mode", f"must be one of {SCORING_MODES}", self.scoring_mode)
        _require(self.scoring_micro_batch_size > 0, f"{prefix}.scoring_micro_batch_size", "must be > 0", self.scoring_micro_batch_size)
        _require(ANSWER_PLACEHOLDER in self.answer_template, f"{prefix}.answer_template", f"must contain {ANSWER_PLACEHOLDER}", self.answer_template)
        _require(self.max_answer_tokens > 0, f"{prefix}.max_answer_tokens", "must be > 0", self.max_answer_tokens)
        _require(isinstance(self.answer_bos, bool), f"{prefix}.answer_bos", "must be true or false", self.answer_bos)
        _require(
            len(self.boundary_patterns) > 0 and all(isinstance(p, str) and p for p in self.boundary_patterns),
            f"{prefix}.boundary_patterns", "must be a non-empty list of non-empty strings", self.boundary_patterns,
        )
        _require(bool(self.think_end_token), f"{prefix}.think_end_token", "must be a non-empty string", self.think_end_token)
        _require(self.no_think_end in NO_THINK_END_POLICIES, f"{prefix}.no_think_end", f"must be one of {NO_THINK_END_POLICIES}", self.no_think_end)
        _require(self.process_reward_norm in PROCESS_REWARD_NORMS, f"{prefix}.process_reward_norm", f"must be one of {PROCESS_REWARD_NORMS}", self.process_reward_norm)
        _require(self.j_base_eps > 0, f"{prefix}.j_base_eps", "must be > 0", self.j_base_eps)
        self.corr.validate(prefix=f"{prefix}.corr")
        return self

    def render_answer(self, ground_truth: str) -> str:
        return self.answer_template.replace(ANSWER_PLACEHOLDER, ground_truth)

    def answer_token_ids(self, tokenizer, ground_truths: Sequence[Optional[str]]) -> list[list[int]]:
        """The answer tokens J is scored on, one list per ground truth (``[]`` for ``None``), not truncated.

        The rendered answer is tokenized on its own, without special tokens: the text the policy
        would write right after the cut. With ``answer_bos`` the tokenizer's BOS token comes first,
        as in the authors' code (a tokenizer without one gets none). Each distinct text is
        tokenized once (the responses of a prompt share it).
        """
        texts = sorted({self.render_answer(text) for text in ground_truths if text is not None})
        encoded = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
        bos = getattr(tokenizer, "bos_token_id", None)
        prefix = [int(bos)] if self.answer_bos and bos is not None else []
        return [prefix + list(encoded[self.render_answer(text)]) if text is not None else [] for text in ground_truths]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, prefix: str = "repro") -> "ReproConfig":
        """Build from a dict / OmegaConf node; unknown keys are an error naming the key."""
        return _from_mapping(cls, values, prefix).validate(prefix)


def _as_plain(value: Any) -> Any:
    """An OmegaConf list or dict node as a plain list / dict (a scalar unchanged)."""
    if type(value).__name__ in ("ListConfig", "DictConfig"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def _from_mapping(cls, values: Mapping[str, Any] | None, prefix: str):
    values = {} if values is None else _as_plain(values)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix} must be a group of keys (e.g. {prefix}.<key>=...), got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]} is not a known key; known keys: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name == "corr":
            kwargs[name] = _from_mapping(CorrConfig, value, f"{prefix}.corr")
        else:  # types are checked by validate(), naming the key: nothing is converted here
            kwargs[name] = list(value) if isinstance(value, tuple) else value
    return cls(**kwargs)


def setting_docs(cls=ReproConfig) -> dict[str, str]:
    """Each field's docstring (the string under its annotation in the dataclass), on one line."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def config_table(cls=ReproConfig, prefix: str = "repro") -> list[tuple[str, Any, str]]:
    """(key, default, doc) rows for the README table, read from the dataclass attribute docstrings."""
    docs = setting_docs(cls)
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(config_table(type(value), f"{prefix}.{f.name}"))
        else:
            rows.append((f"{prefix}.{f.name}", value, docs.get(f.name, "")))
    return rows


def add_setting_arguments(parser, keys: Sequence[str], cls=ReproConfig, prefix: str = "repro", **tool_defaults: Any) -> None:
    """One ``--key-name`` option per setting of ``cls`` that a command-line tool exposes: its type,
    default and help come from the dataclass, so the tool and a training run read the same values.
    ``tool_defaults`` names the keys where a tool deliberately starts elsewhere (its help says so).
    A list setting takes several values, with backslash escapes such as ``\\n`` decoded
    (:func:`settings_from_arguments`)."""
    docs, defaults = setting_docs(cls), cls()
    for key in keys:
        default = tool_defaults.get(key, getattr(defaults, key))
        note = " (this tool's default)" if key in tool_defaults else ""
        help_text = f"{prefix}.{key}: {docs.get(key, '')} Default: {default!r}{note}.".replace("%", "%%")
        option = "--" + key.replace("_", "-")
        if isinstance(getattr(defaults, key), list):
            parser.add_argument(option, nargs="+", default=list(default), metavar="TEXT", help=help_text)
        else:
            parser.add_argument(option, type=_setting_value(cls, key, type(getattr(defaults, key))), default=default, help=help_text)


def _setting_value(cls, key: str, kind: type):
    """The ``type=`` of one setting's option: the text read as ``kind``, then checked by the
    dataclass's own ``validate`` (its ranges, written once), so a bad value stops the tool at parse
    with argparse's one line naming the option."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an int' if kind is int else 'a number' if kind is float else kind.__name__}, got {text!r}") from None
        try:
            cls(**{key: value}).validate()
        except ConfigError as refused:
            # argparse names the option; the key's own name would only repeat it.
            raise argparse.ArgumentTypeError(str(refused).split(f".{key} ", 1)[-1]) from None
        return value

    parse.__name__ = kind.__name__
    return parse


def settings_from_arguments(args: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The values of :func:`add_setting_arguments`' options as keyword arguments of the dataclass."""
    import codecs

    values = {key: getattr(args, key) for key in keys}
    return {key: [codecs.decode(v, "unicode_escape") for v in value] if isinstance(value, list) else value for key, value in values.items()}


def config_markdown_table() -> str:
    """The README's configuration table; ``tests/test_readme.py`` checks the README contains it verbatim."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in config_table():
        shown = repr(default).replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def setting(config: Any, key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` of ``config`` (an OmegaConf node, a mapping or an object with
    attributes), or ``default`` where a part of the key is missing or the value is None.

    One reader for every place that looks a veRL setting up: the start-up checks, the trainer and
    the estimators (which veRL hands the ``algorithm`` node, or None in direct calls).
    """
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        value = OmegaConf.select(config, key, default=None)
        return default if value is None else value
    node = config
    for part in key.split("."):
        if node is None:
            break
        getter = getattr(node, "get", None)
        node = getter(part, None) if callable(getter) else getattr(node, part, None)
    return default if node is None else node
