"""The ``repro`` Hydra config group, so ``+repro=default repro.alpha=0.2`` works on veRL's ``main_ppo``.

veRL composes its config in Hydra struct mode: ``repro.alpha=0.2`` alone fails (no such key) and
``+repro.alpha=0.2`` adds one loose key without defaults or types. Registering a config group in
Hydra's ``ConfigStore`` when the plugin loads (as soon as the process imports Hydra; ``import verl``
runs before ``hydra.main`` composes) lets ``+repro=default`` add the whole group with the defaults
of :class:`verl_repro.config.ReproConfig`; struct mode then rejects an unknown key, naming it.

The group is stored untyped on purpose: OmegaConf's own typing would turn
``repro.think_end_token=123`` into the string ``"123"`` silently and refuse
``repro.boundary_patterns=abc`` with a message that does not name the key, whereas
``ReproConfig.from_mapping`` (the driver's start-up check and the recipes' dry run) refuses both,
naming the key. Types and value ranges (``alpha >= 0`` ...) are checked there.

The option also selects the ``repro_sync`` trainer, which the RePro and CorR-PO estimators need
(``docs/dev/estimator_contract.md``); an explicit ``trainer.v1.trainer_mode=...`` on the command
line still wins.
"""

from __future__ import annotations

from verl_repro.config import ReproConfig
from verl_repro.verl_ext.switches import TRAINER_MODE

GROUP = "repro"
OPTION = "default"


def default_node():
    """The ``+repro=default`` node, merged at the config root (Hydra package ``_global_``)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            GROUP: OmegaConf.to_container(OmegaConf.structured(ReproConfig)),
            "trainer": {"v1": {"trainer_mode": TRAINER_MODE}},
        }
    )


def store(config_store_module=None) -> None:
    """Put the ``repro/default`` option into Hydra's ``ConfigStore`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    # _global_: the option sets keys outside its own group (trainer.v1.trainer_mode) as well.
    ConfigStore.instance().store(group=GROUP, name=OPTION, node=default_node(), package="_global_")


def register() -> list[str]:
    from verl_repro.plugin.registrations import register_when_imported

    # Only processes that compose configs import Hydra (main_ppo imports it before veRL); the
    # Ray workers that also run this plugin never pay for it.
    register_when_imported(__name__, "hydra.core.config_store", store)
    return [f"config_group:{GROUP}"]
