"""The package foundation: plugin registration through `import verl`, the tiny fixture, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_import_verl_alone_registers_our_names():
    # A fresh interpreter: only `import verl`, which must load our entry point by itself.
    out = _run_python(
        "import json, verl\n"
        "from verl_repro.plugin.entry import registration_report\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
        "report = registration_report()\n"
        "print(json.dumps({'report': report, 'estimators': sorted(ADV_ESTIMATOR_REGISTRY)}))\n"
    )
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["report"]["failures"] == {}, payload["report"]["failures"]
    registered = payload["report"]["registered"]
    estimators = [name.split(":", 1)[1] for name in registered if name.startswith("adv_estimator:")]
    for name in estimators:
        assert name in payload["estimators"]
    assert registered, "nothing was registered"


def test_estimators_register_when_veRL_imports_core_algos_before_any_lookup():
    # A fresh interpreter: `import verl` must not import core_algos (a second of start-up in every
    # Ray process); the first import of it, as veRL's trainer does, must bring our estimators along.
    out = _run_python(
        "import json, sys, verl\n"
        "from verl_repro.plugin.entry import registration_report\n"
        "light = 'verl.trainer.ppo.core_algos' not in sys.modules\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, get_adv_estimator_fn\n"
        "from verl_repro.verl_ext.estimator_registry import own_specs\n"
        "found = {s.name: get_adv_estimator_fn(s.name) is s.function for s in own_specs()}\n"
        "print(json.dumps({'light': light, 'found': found, 'failures': registration_report()['failures']}))\n"
    )
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["light"], "import verl imported verl.trainer.ppo.core_algos"
    assert payload["failures"] == {}
    assert payload["found"] and all(payload["found"].values()), payload["found"]


def test_register_all_is_idempotent():
    import verl  # noqa: F401
    from verl_repro.plugin.entry import register_all, registration_report

    before = registration_report()
    register_all()
    register_all()
    assert registration_report() == before


def test_registration_failure_is_logged_not_raised(monkeypatch, caplog):
    import types

    from verl_repro.plugin import entry as plugin
    from verl_repro.plugin import registrations

    broken = types.ModuleType("verl_repro_broken_registration")

    def register():
        raise RuntimeError("boom")

    broken.register = register
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setattr(plugin, "REGISTRATION_MODULES", (broken.__name__,))
    monkeypatch.setattr(registrations, "_failures", {})
    with caplog.at_level("WARNING", logger="verl_repro"):
        plugin.register_all()
    assert "boom" in plugin.registration_report()["failures"][broken.__name__]
    assert any("boom" in record.getMessage() for record in caplog.records)


def test_tiny_checkpoint_round_trips(tiny_model_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    think_end = tiny_tokenizer.encode("</think>", add_special_tokens=False)
    assert len(think_end) == 1
    assert len(tiny_tokenizer.encode("<think>", add_special_tokens=False)) == 1
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    pieces = [tiny_tokenizer.decode([i]) for i in tiny_tokenizer.encode("So it is 5.\nThen 6.\n\nDone\n\n")]
    assert ".\n" in pieces and ".\n\n" in pieces and "\n\n" in pieces

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer.encode(prompt)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tiny_tokenizer))
    assert torch.isfinite(logits).all()


def test_cli_info_lists_registrations():
    result = subprocess.run(
        [sys.executable, "-m", "verl_repro.cli", "info", "--json"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(result.stdout)
    assert info["verl"] == "0.9.1"
    assert info["failures"] == {}
    assert isinstance(info["registered"], list)


@pytest.mark.parametrize("key,value,needle", [("num_segments", 0, "repro.num_segments"), ("alpha", -1.0, "repro.alpha"), ("scorer", "critic", "repro.scorer")])
def test_config_errors_name_the_key(key, value, needle):
    from verl_repro.config import ConfigError, ReproConfig

    with pytest.raises(ConfigError, match=needle):
        ReproConfig.from_mapping({key: value})
