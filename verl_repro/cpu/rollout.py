"""Worker-side half of the ``hf`` rollout: veRL's ``BaseRollout`` inside the actor/rollout worker.

In veRL's hybrid (colocated) mode the worker that owns the training engine also holds a rollout
adapter; at every weight sync it hands the adapter the actor's full per-tensor weights
(``update_weights``) between ``resume(["weights"])`` and ``resume(["kv_cache"])``. This adapter
forwards the weights to its replica's :class:`verl_repro.cpu.server.HFRolloutServer` through
Ray's object store; sampling itself happens in that server.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout

from verl_repro.cpu.server import server_actor_name


class HFRolloutAdapter(BaseRollout):
    """``rollout.name=hf``: ships weights to the replica's HF sampling server; nothing to page in or out."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        # Only the replica's first rank talks to its server (the others hold the same full weights).
        self._is_replica_leader = rank % rollout_world_size == 0
        self._server: Optional[ray.actor.ActorHandle] = None

    def _server_handle(self) -> ray.actor.ActorHandle:
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        """Weights and cache stay in host memory: nothing to restore."""
        return None

    async def release(self) -> None:
        """Nothing to free on a CPU."""
        return None

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Optional[dict] = None,
        **kwargs: Any,
    ) -> None:
        """Send the actor's full HF-named weights to the server (copies: the actor keeps training)."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout takes full named tensors, got wire_format={wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError(
                "the hf rollout loads full weights only: set actor_rollout_ref.model.lora.merge=True for LoRA"
            )
        named_arrays = {name: to_wire(tensor) for name, tensor in weights}
        if self._is_replica_leader:
            await self._server_handle().update_weights.remote(named_arrays, global_steps)


def to_wire(tensor: torch.Tensor):
    """A copy of ``tensor`` as Ray ships it fastest: a numpy array travels as a raw buffer, while a
    torch tensor goes through ``torch.save`` inside cloudpickle (6 s of every demo step's 7 s weight
    sync on the 2-core machine). Dtypes numpy lacks (bfloat16) stay tensors."""
    copy = tensor.detach().to("cpu", copy=True)
    try:
        return copy.numpy()
    except TypeError:
        return copy
