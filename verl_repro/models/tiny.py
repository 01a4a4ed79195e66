"""A tiny offline checkpoint for tests, benchmarks and the CPU backend's smoke runs.

``build_tiny_checkpoint(path)`` writes a random-init 2-layer Qwen2 and a byte-level BPE tokenizer
trained on the spot with the ``tokenizers`` library, saved with ``save_pretrained`` so everything
downstream loads it through ``from_pretrained`` exactly like a real checkpoint. The tokenizer has
``<think>`` / ``</think>`` as single special tokens, a chat template that opens a ``<think>``
block, and step-ending tokens such as ``".\\n"`` and ``"\\n\\n"`` (punctuation is pre-tokenized
together with the newlines that follow it, as Qwen2's tokenizer does).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", THINK_START, THINK_END]

# Letters/digits runs, punctuation runs glued to following newlines, newline runs, other spaces.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)

TINY_MODEL_KWARGS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


def _synthetic_reasoning_corpus(num_texts: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    steps = [
        "First, we add {a} and {b} to get {s}.",
        "Then we multiply by {b}, which gives {p}.",
        "Wait, let me re-check the sum.",
        "So the total is {s}.",
        "Is {a} larger than {b}?",
        "We know that {a} + {b} = {s}.",
        "Alternatively, subtract {b} from {s}.",
        "Therefore the answer is {s}.",
        "Let me think about {a} and {b}",
        "Step {b}: compute {a} times {b}",
    ]
    texts = []
    for _ in range(num_texts):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        values = dict(a=a, b=b, s=a + b, p=a * b)
        chosen = [rng.choice(steps).format(**values) for _ in range(rng.randint(2, 6))]
        separators = [rng.choice(["\n", "\n\n"]) for _ in chosen]
        body = "".join(step + sep for step, sep in zip(chosen, separators))
        texts.append(
            f"<|im_start|>user\nWhat is {a} plus {b}? Please reason step by step.<|im_end|>\n"
            f"<|im_start|>assistant\n{THINK_START}\n{body}{THINK_END}\n\n"
            f"The answer is \\boxed{{{a + b}}}.<|im_end|>\n"
        )
    return texts


def build_tiny_tokenizer(vocab_size: int = 512):
    """A ``PreTrainedTokenizerFast`` trained offline; see the module docstring for its properties."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_synthetic_reasoning_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[THINK_START, THINK_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, **model_overrides) -> Path:
    """Write tokenizer + random-init 2-layer Qwen2 (fp32 safetensors) to ``path``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_MODEL_KWARGS, **model_overrides},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path)
    return path
