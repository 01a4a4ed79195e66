"""Checkpoints the package ships or builds: the embedded SmolLM2-135M-Instruct
(:mod:`~verl_repro.models.smollm2`) and a tiny offline Qwen2 (:mod:`~verl_repro.models.tiny`)."""
