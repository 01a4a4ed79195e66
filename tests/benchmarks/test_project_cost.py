"""benchmarks/project_cost.py: its shapes and FLOP formulas against independent counts, and its
self-check against the committed measurements (which must be able to fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import project_cost as pc  # noqa: E402


def norm_params(model: pc.ModelShape, qk_norm: bool) -> int:
    """RMSNorm weights, which ModelShape.params leaves out (no FLOPs worth counting)."""
    per_layer = 2 * model.hidden_size + (2 * model.head_dim if qk_norm else 0)
    return model.num_layers * per_layer + model.hidden_size


@pytest.mark.parametrize("model, qk_norm, published", [
    pytest.param(pc.R1_DISTILL_QWEN_1_5B, False, 1_777_088_000, id="R1-Distill-Qwen-1.5B"),
    pytest.param(pc.QWEN3_8B, True, 8_190_735_360, id="Qwen3-8B"),
])
def test_shapes_give_the_checkpoints_parameter_counts(model, qk_norm, published):
    # the safetensors parameter counts of the published checkpoints
    assert model.params + norm_params(model, qk_norm) == published


@pytest.mark.parametrize("length", [7, 64])
def test_forward_flops_match_torchs_flop_counter(length):
    """An independent count: torch's FlopCounterMode on a real forward (eager attention computes every
    (query, key) pair, causal or not, so visible pairs = length²)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=8, tie_word_embeddings=False, attention_bias=False)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    shape = pc.ModelShape("tiny-llama", 97, 48, 80, 3, 6, 2, 8, tie_word_embeddings=False, qkv_bias=False)
    assert shape.params + norm_params(shape, qk_norm=False) == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 97, (1, length)))
    rotary_table = shape.head_dim * length  # RoPE's frequency outer product, not a model FLOP we count
    assert counter.get_total_flops() == shape.forward_flops(length, length * length, length) + rotary_table


def test_token_counts_by_hand():
    # prompt 10, answer 3, cuts 4 and 20 (the end): naive (10+0+3) + (10+4+3) + (10+20+3); shared 10 + 20 + 3 slots × 4
    assert pc.naive_tokens(10, [4, 20], 3) == 13 + 17 + 33
    assert pc.prefix_shared_tokens(10, [4, 20], 3) == 10 + 20 + 3 * 4
    assert pc.reference_tokens(10, 20, 3, k=1) == 3 * 33
    assert pc.causal_pairs(4) == 10


def run(*args):
    return subprocess.run([sys.executable, str(BENCHMARKS / "project_cost.py"), *args], capture_output=True, text=True, timeout=300)


def test_the_script_prints_both_models_and_passes_its_self_check():
    """`python benchmarks/project_cost.py > benchmarks/results/project_cost.md` writes the committed file."""
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ["DeepSeek-R1-Distill-Qwen-1.5B", "Qwen3-8B", "RePro J, ours `prefix_shared`", "GPU-hours for 500 steps",
                 "kernel (b), from hidden states", "Self-check against the measurements"]:
        assert text in result.stdout
    assert "FAILED" not in result.stdout


@pytest.mark.parametrize("file, old, new, check", [
    pytest.param("bench_scoring_cpu.txt", " 16926 ", " 16927 ", "FAILED: token formulas", id="token-count"),
    pytest.param("bench_gradients_cpu.md", "+13.5 %", "+40.0 %", "FAILED: CorR-PO signal", id="corrpo-share"),
    pytest.param("nvidia-h200.md", "| ours (b) [triton] | 59.571 | 1025 |", "| ours (b) [triton] | 59.571 | 2025 |", "FAILED: kernel (b)", id="kernel-b-memory"),
])
def test_the_self_check_fails_when_a_measurement_disagrees(tmp_path, file, old, new, check):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    text = (results / file).read_text()
    assert old in text
    (results / file).write_text(text.replace(old, new, 1))
    result = run("--results", str(results))
    assert result.returncode == 1 and check in result.stdout, result.stdout


def test_defaults_reproduce_the_committed_results():
    result = run()
    assert result.stdout == (BENCHMARKS / "results" / "project_cost.md").read_text()
