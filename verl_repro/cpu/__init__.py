"""CPU platform and HF-``generate`` rollout so veRL's real ``main_ppo`` runs without a GPU.
Loaded only when asked (``VERL_PLATFORM=cpu`` / ``verl-repro cpu-run``)."""
