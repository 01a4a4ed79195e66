"""The Triton kernels compile for a real GPU (sm_90, Hopper), checked on a CPU.

The interpreter runs the kernels' Python, not Triton's compiler, so it lets through what only the
compiler rejects (a non-constexpr global, a type the code generator cannot unify). Triton compiles
to PTX and cubin with its bundled LLVM and ptxas without a GPU, so this test builds every kernel
for the shapes and dtypes the launchers use, in a fresh interpreter with TRITON_INTERPRET=0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

COMPILE_ALL = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from verl_repro.kernels import token_stats as ts

    assert not ts.is_interpreted()
    STATS = {name: "*fp32" for name in ("logprob_ptr", "entropy_ptr", "sum_p_squared_ptr", "grad_norm_ptr", "lse_ptr")}

    def logits_fwd(dtype):
        return ts._logits_stats_fwd_kernel, {
            "logits_ptr": f"*{dtype}", "logits_row_stride": "i64", "labels_ptr": "*i64",
            "inv_temperature_ptr": "*fp32", **STATS, "vocab_size": "i32", "ignore_index": "i32",
            "BLOCK_V": "constexpr",
        }, {"BLOCK_V": 4096}, 8

    def logits_bwd(dtype):
        return ts._logits_stats_bwd_kernel, {
            "logits_ptr": f"*{dtype}", "logits_row_stride": "i64", "grad_logits_ptr": f"*{dtype}",
            "grad_row_stride": "i64", "labels_ptr": "*i64", "inv_temperature_ptr": "*fp32",
            "lse_ptr": "*fp32", "entropy_ptr": "*fp32", "d_logprob_ptr": "*fp32", "d_entropy_ptr": "*fp32",
            "vocab_size": "i32", "ignore_index": "i32", "BLOCK_V": "constexpr",
        }, {"BLOCK_V": 4096}, 8

    PARTS = {name: "*fp32" for name in ("part_max_ptr", "part_rest_ptr", "part_t_ptr", "part_q_ptr", "part_z_label_ptr")}

    def hidden_fwd(dtype, precision):
        return ts._hidden_stats_fwd_kernel, {
            "hidden_ptr": f"*{dtype}", "hidden_row_stride": "i64", "weight_ptr": f"*{dtype}",
            "weight_row_stride": "i64", "labels_ptr": "*i64", "inv_temperature_ptr": "*fp32", **PARTS,
            "num_rows": "i32", "vocab_size": "i32", "hidden_size": "i32", "cols_per_split": "i32",
            "ignore_index": "i32", "BLOCK_N": "constexpr", "BLOCK_V": "constexpr", "BLOCK_K": "constexpr",
            "UPCAST_DOT": "constexpr", "DOT_PRECISION": "constexpr",
        }, {"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 64, "UPCAST_DOT": False, "DOT_PRECISION": precision}, 8

    def merge():
        return ts._merge_splits_kernel, {
            **PARTS, "labels_ptr": "*i64", **{k: v for k, v in STATS.items()}, "num_rows": "i32",
            "num_splits": "i32", "ignore_index": "i32", "BLOCK": "constexpr",
        }, {"BLOCK": 128}, 4

    cases = [logits_fwd("bf16"), logits_fwd("fp32"), logits_bwd("bf16"), logits_bwd("fp32"),
             hidden_fwd("bf16", "tf32"), hidden_fwd("fp32", "ieee"), merge()]
    for capability in (90,):
        for fn, signature, constexprs, num_warps in cases:
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": num_warps, "num_stages": 3},
            )
            assert compiled.asm.get("cubin"), (fn, capability)
    print("compiled", len(cases))
    """
)


def test_kernels_compile_for_sm90():
    environment = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-c", COMPILE_ALL], capture_output=True, text=True, timeout=600, env=environment
        )
    except FileNotFoundError as error:  # pragma: no cover - no python to spawn
        pytest.skip(str(error))
    if "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("Triton's bundled ptxas is missing on this platform")
    assert result.returncode == 0, result.stderr[-6000:]
    assert "compiled 7" in result.stdout
