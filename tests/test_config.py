"""Settings: ``verl_repro.config.setting``, one reader of veRL settings for OmegaConf nodes, mappings
and objects; and settings read wrongly — every wrong type is refused naming the key, before any
range check.

Wrong types are tried as a Hydra command line produces them (``key=abc`` is a string, ``key=5`` an
int, ``key=null`` None): hand cases first, then every field of every settings group against a pool
of values of every type: a value of the wrong type is always refused with a message that starts
with the full key, and nothing ever ends in a bare ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from verl_repro.config import ConfigError, CorrConfig, ReproConfig, setting
from verl_repro.rewards import MathRewardConfig, RewardConfigError

VALUES = {"algorithm": {"gamma": 0.5, "lam": None, "kl_ctrl": {"kl_coef": 0.0}}, "trainer": {"nnodes": 2}}


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(OmegaConf.create(VALUES), id="omegaconf"),
        pytest.param(OmegaConf.structured(OmegaConf.create(VALUES)), id="omegaconf-struct"),
        pytest.param(VALUES, id="dict"),
        pytest.param(SimpleNamespace(algorithm=SimpleNamespace(gamma=0.5, lam=None, kl_ctrl={"kl_coef": 0.0}), trainer={"nnodes": 2}), id="objects"),
    ],
)
def test_reads_a_dotted_key_and_falls_back_on_missing_or_none(config):
    if type(config).__module__.startswith("omegaconf"):
        OmegaConf.set_struct(config, True)
    assert setting(config, "algorithm.gamma", 1.0) == 0.5
    assert setting(config, "algorithm.kl_ctrl.kl_coef", 1.0) == 0.0  # a falsy value is a value
    assert setting(config, "trainer.nnodes") == 2
    assert setting(config, "algorithm.lam", 1.0) == 1.0  # None reads as unset
    assert setting(config, "algorithm.missing", "default") == "default"
    assert setting(config, "nothing.here.at.all") is None


def test_no_config_reads_the_default():
    # veRL's estimators are called with config=None in direct calls.
    assert setting(None, "norm_adv_by_std_in_grpo", True) is True


def test_tool_options_take_their_defaults_from_the_config_class():
    import argparse
    import dataclasses

    from verl_repro.config import ReproConfig, add_setting_arguments, settings_from_arguments

    keys = ("num_segments", "alpha", "boundary_patterns", "no_think_end")
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, keys, no_think_end="use_end")
    defaults = settings_from_arguments(parser.parse_args([]), keys)
    expected = {key: value for key, value in dataclasses.asdict(ReproConfig()).items() if key in keys}
    assert defaults == {**expected, "no_think_end": "use_end"}
    given = settings_from_arguments(parser.parse_args(["--num-segments", "3", "--boundary-patterns", "\\n", ".\\n\\n"]), keys)
    assert given["num_segments"] == 3 and given["boundary_patterns"] == ["\n", ".\n\n"]


@pytest.mark.parametrize(
    "values, message",
    [
        # a bare string where a list belongs used to be split into its characters: ['a', 'b', 'c']
        ({"boundary_patterns": "abc"}, "repro.boundary_patterns must be a list of strings, got the bare string 'abc'; "
                                       "for one entry write repro.boundary_patterns=['abc']"),
        ({"corr": {"matrices": "q_proj"}}, "repro.corr.matrices must be a list of strings, got the bare string 'q_proj'"),
        ({"corr": {"layers": "-1"}}, "repro.corr.layers must be a list of ints, got the bare string '-1'"),
        # used to end in a bare TypeError: 'int' object is not iterable
        ({"corr": {"layers": 5}}, "repro.corr.layers must be a list of ints, got 5"),
        ({"corr": {"layers": [1.5]}}, "repro.corr.layers must be a list of ints, got [1.5] (1.5 is not)"),
        ({"boundary_patterns": ["\n\n", 3]}, "repro.boundary_patterns must be a list of strings, got ['\\n\\n', 3] (3 is not)"),
        # used to end in a bare TypeError: argument of type 'NoneType' is not iterable
        ({"answer_template": None}, "repro.answer_template must be a string, got None (NoneType); quote it to pass text"),
        # used to be accepted: the token 123 never appears, so no response ever ends its thinking
        ({"think_end_token": 123}, "repro.think_end_token must be a string, got 123 (int); quote it to pass text"),
        ({"num_segments": True}, "repro.num_segments must be an int, got True"),
        ({"num_segments": 2.5}, "repro.num_segments must be an int, got 2.5"),
        ({"alpha": "0.1"}, "repro.alpha must be a finite number, got '0.1'"),
        ({"corr": 5}, "repro.corr must be a group of keys (e.g. repro.corr.<key>=...), got 5"),
        ({"corr": {"kind": None}}, "repro.corr.kind must be a string, got None (NoneType); quote it to pass text"),
    ],
)
def test_repro_settings_of_the_wrong_type_are_refused_by_key(values, message):
    with pytest.raises(ConfigError) as refused:
        ReproConfig.from_mapping(values)
    assert str(refused.value).startswith(message)
    # the same through OmegaConf, as the trainer and the dry run read the group
    with pytest.raises(ConfigError, match="^" + message.split(" ")[0].replace(".", r"\.") + " "):
        ReproConfig.from_mapping(OmegaConf.create({"x": values}).x)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"timeout_s": 1e-6}, "reward.reward_kwargs.timeout_s must be >= 0.1 s"),  # every sample would time out
        ({"timeout_s": 0.05}, "reward.reward_kwargs.timeout_s must be >= 0.1 s"),
        ({"timeout_s": "5"}, "reward.reward_kwargs.timeout_s must be a finite number, got '5'"),
        ({"think_end_token": 7}, "reward.reward_kwargs.think_end_token must be a string, got 7 (int)"),
        ({"require_think_end": "yes"}, "reward.reward_kwargs.require_think_end must be true or false, got 'yes'"),
        ({"num_processes": 1.0}, "reward.reward_kwargs.num_processes must be an int, got 1.0"),
    ],
)
def test_reward_settings_of_the_wrong_type_or_an_unmeetable_deadline_are_refused(values, message):
    with pytest.raises(RewardConfigError) as refused:
        MathRewardConfig.from_mapping(values)
    assert str(refused.value).startswith(message)
    assert MathRewardConfig.from_mapping({"timeout_s": 0.1}).timeout_s == 0.1  # the floor itself is accepted


def test_lists_are_read_as_lists():
    parsed = ReproConfig.from_mapping(OmegaConf.create({"boundary_patterns": ["\n\n", ".\n"], "corr": {"layers": [-1, 3]}}))
    assert parsed.boundary_patterns == ["\n\n", ".\n"] and parsed.corr.layers == [-1, 3]
    assert type(parsed.boundary_patterns) is list and type(parsed.corr.layers) is list
    assert ReproConfig.from_mapping({"boundary_patterns": ("\n\n",)}).boundary_patterns == ["\n\n"]


POOL = [None, "abc", "", 3, -1, 0, 2.5, 0.5, True, False, math.inf, math.nan, [1], ["x"], [], {"a": 1}]


def _right_type(kind: str, value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "float": number and math.isfinite(value) if number else False,
        "int": number and isinstance(value, int),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list[int]": isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]


def _fields():
    for cls, prefix, error, build in (
        (ReproConfig, "repro", ConfigError, lambda key, v: ReproConfig.from_mapping({key: v})),
        (CorrConfig, "repro.corr", ConfigError, lambda key, v: ReproConfig.from_mapping({"corr": {key: v}})),
        (MathRewardConfig, "reward.reward_kwargs", RewardConfigError, lambda key, v: MathRewardConfig.from_mapping({key: v})),
    ):
        for spec in dataclasses.fields(cls):
            if spec.name != "corr":
                yield pytest.param(spec.name, spec.type, prefix, error, build, id=f"{prefix}.{spec.name}")


@pytest.mark.parametrize("name, kind, prefix, error, build", list(_fields()))
def test_every_field_refuses_every_wrong_type_by_key(name, kind, prefix, error, build):
    for value in POOL:
        try:
            build(name, value)
        except error as refused:
            assert str(refused).startswith(f"{prefix}.{name} "), (value, str(refused))
        else:
            assert _right_type(kind, value), f"{prefix}.{name}={value!r} was accepted"
