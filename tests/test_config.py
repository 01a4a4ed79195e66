"""``verl_repro.config.setting``: one reader of veRL settings for OmegaConf nodes, mappings and objects."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from verl_repro.config import setting

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
