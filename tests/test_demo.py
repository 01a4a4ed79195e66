"""`verl-repro demo` end to end on the tiny checkpoint (the README's demo runs it on SmolLM2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch


def _direct_answer_loglik(model, context_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    start = len(context_ids)
    return sum(float(log_probs[start - 1 + i, tok]) for i, tok in enumerate(answer_ids)) / len(answer_ids)


def test_demo_on_tiny_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "verl_repro.cli", "demo", "--walkthrough", "--model", str(tiny_model_dir), "--num-problems", "2",
         "--samples-per-prompt", "2", "--max-new-tokens", "24", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ρ(H,g)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["responses"]
    assert len(rows) == 4
    counts = summary["fallbacks"]
    assert counts["repro/rows"] == 4
    for row in rows:
        assert len(row["j_curve"]) == row["cuts"] + 1
        assert all(math.isfinite(v) for v in row["j_curve"])
        assert -1.0 <= row["rho_entropy_grad"] <= 1.0
        # no </think>: the last reasoning token acts as e (use_end); the end-of-turn token is excluded
        assert row["cut_positions"][-1] == row["reasoning_tokens"] <= row["tokens"]
    assert summary["scoring"]["scored_tokens"] <= summary["scoring"]["naive_tokens"]

    # J_b of the first response recomputed with a plain forward of the saved checkpoint
    from transformers import AutoModelForCausalLM

    from verl_repro.analysis.frontend import SYSTEM_PROMPT, USER_SUFFIX, bundled_problems

    problem = bundled_problems(1)[0]
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem.prompt + USER_SUFFIX}],
        add_generation_prompt=True, tokenize=False,
    )
    context = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = tiny_tokenizer("\\boxed{" + problem.ground_truth + "}", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert abs(rows[0]["j_base"] - _direct_answer_loglik(model, context, answer)) < 1e-4
    for name in ("j_curves.png", "entropy_vs_grad_norm.png"):
        from PIL import Image

        with Image.open(out / name) as image:
            assert image.size[0] > 100
