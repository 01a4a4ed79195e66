"""The names by which a run switches this package's veRL parts on, each written once.

* :data:`TRAINER_MODE` — ``trainer.v1.trainer_mode`` of the ``repro_sync`` trainer (set by ``+repro=default``);
* :data:`ENGINE_VENDOR` — the engine vendor of the fused token statistics and CorR-PO's gradient signal,
  selected by veRL's own environment variable :data:`ENGINE_VENDOR_ENV` in every worker. veRL does not
  forward the driver's environment to Ray, so a run passes :data:`ENGINE_VENDOR_OVERRIDE` to ``main_ppo``.

This module imports nothing heavy: the plugin, the start-up checks, the messages that name the
override and the demo read it.
"""

from __future__ import annotations

import os
from typing import Any

TRAINER_MODE = "repro_sync"
ENGINE_VENDOR = "repro"
ENGINE_VENDOR_ENV = "VERL_ENGINE_VENDOR"
ENGINE_VENDOR_KEY = f"ray_kwargs.ray_init.runtime_env.env_vars.{ENGINE_VENDOR_ENV}"
"""Where ``main_ppo``'s config hands the variable to every Ray worker."""
ENGINE_VENDOR_OVERRIDE = f"+{ENGINE_VENDOR_KEY}={ENGINE_VENDOR}"
"""The ``main_ppo`` override that runs every worker with the engine vendor."""


def engine_vendor_requested(config: Any) -> bool:
    """True when the workers will run the engine vendor (set in the config or in this environment)."""
    from verl_repro.config import setting

    return setting(config, ENGINE_VENDOR_KEY) == ENGINE_VENDOR or os.environ.get(ENGINE_VENDOR_ENV) == ENGINE_VENDOR
