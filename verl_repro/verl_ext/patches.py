"""Where the veRL glue touches veRL private names: the index.

* One patch (:data:`VERL_EXT_PATCHES`): ``verl/utils/config.py:validate_config``, which ``main_ppo``
  calls in the driver right before ``run_ppo`` starts Ray, also runs the start-up checks of
  :mod:`verl_repro.verl_ext.preflight` (the patch sits there, beside the checks it runs).
* Estimators, scoring, the ``repro_sync`` trainer and the config group patch nothing: they go
  through veRL's registries (``register_adv_est``, ``register_trainer``) and Hydra's
  ``ConfigStore``. The engine vendor (``verl_ext/engine.py``, ``install_fused_forward``) replaces,
  with ``use_fused_kernels=True``, the fused forward veRL sets on the model class
  (``verl/models/transformers/dense_common.py``), inside its own engine's ``_build_module``.
* The ``repro_sync`` trainer overrides private methods of veRL's ``PPOTrainer`` in a subclass
  (``_compute_advantage``, ``_compute_old_log_prob``, ``_init_tokenizer``;
  ``verl/trainer/ppo/v1/trainer_base.py``) and reads a worker group's ``_dispatch_info`` as veRL's
  own ``_balance_batch`` does, so it checks the pinned veRL of :mod:`verl_repro.plugin.patching` when it
  starts.

A patch of this layer is a :class:`verl_repro.plugin.patching.Patch` listed in :data:`VERL_EXT_PATCHES`;
the CPU backend keeps its own list (:data:`verl_repro.cpu.patches.PATCHES`), and
:func:`verl_repro.info.all_patches` lists both.
"""

from __future__ import annotations

from verl_repro.plugin.patching import Patch
from verl_repro.verl_ext.preflight import VALIDATE_CONFIG_PATCH

VERL_EXT_PATCHES: tuple[Patch, ...] = (VALIDATE_CONFIG_PATCH,)
