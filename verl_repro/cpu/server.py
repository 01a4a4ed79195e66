"""The ``hf`` rollout server: a Ray actor that samples with HF transformers, and its replica.

veRL's agent loop talks to rollout servers through ``generate(request_id, prompt_ids,
sampling_params, ...) -> TokenOutput``; the trainer drives their memory with sleep / wake-up /
cache calls. On a CPU there is no device memory to give back, so those are no-ops here, and the
weights arrive through :meth:`HFRolloutServer.update_weights`, called by the worker-side
adapter (``verl_repro.cpu.rollout.HFRolloutAdapter``) at every weight sync.

Requests that arrive together (the agent loop sends a whole batch at once) are sampled
together: a single task drains the queue, groups requests by sampling settings and runs one
left-padded batch per group in a thread, so the actor keeps accepting calls meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from verl_repro.cpu.sampling import SampledSequence, SamplingSettings, sample_batch

SERVER_NAME_PREFIX = "hf_server_"

# Log lines the end-to-end tests read; keep their format stable.
WEIGHT_SYNC_LOG = (
    "[hf-rollout] weights synced: replica={replica} step={step} tensors={tensors} changed={changed} "
    "max_abs_delta={delta:.6g}"
)


def server_actor_name(replica_rank: int) -> str:
    """Name of the Ray actor serving ``replica_rank`` (one server per replica: no tensor parallelism)."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}"


# How long the server waits for more requests of a burst before it starts a batch (seconds).
BURST_QUIET_S = 0.05
BURST_MAX_WAIT_S = 0.5


@dataclass
class _PendingRequest:
    prompt_ids: list[int]
    settings: SamplingSettings
    want_log_probs: bool
    generator: torch.Generator = field(repr=False)
    future: asyncio.Future = field(repr=False)


def _torch_dtype(name: str) -> torch.dtype:
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"actor_rollout_ref.rollout.dtype={name!r} is not a torch dtype")
    return dtype


class HFRolloutServer:
    """Token-in / token-out sampling server for the ``hf`` rollout (one per replica)."""

    def __init__(self, config, model_config, replica_rank: int) -> None:
        self.config: RolloutConfig = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        self.global_steps: Optional[int] = None
        self._model = None
        self._eos_token_ids: set[int] = set()
        self._pad_token_id = 0
        self._pending: list[_PendingRequest] = []
        self._work_available: Optional[asyncio.Event] = None
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock: Optional[asyncio.Lock] = None
        # (step, prompt) -> how many samples of that prompt this step has asked for so far
        self._samples_asked: dict[tuple[Optional[int], tuple[int, ...]], int] = {}

    # lifecycle --------------------------------------------------------------------------------
    async def launch_server(self) -> None:
        """Load the checkpoint (its weights are replaced at the first sync) and start batching."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            dtype=_torch_dtype(self.config.dtype),
            attn_implementation="sdpa",
            trust_remote_code=self.model_config.trust_remote_code,
        )
        self._model = model.eval()
        tokenizer = self.model_config.tokenizer
        eos = set()
        for source in (getattr(self.model_config.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(token) for token in source)
        if not eos:
            raise ValueError(f"no end-of-sequence token for {self.model_config.path}: set eos_token_id in its config")
        self._eos_token_ids = eos
        self._pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        self._work_available = asyncio.Event()
        self._model_lock = asyncio.Lock()
        self._batcher = asyncio.get_running_loop().create_task(self._serve_batches())

    async def update_weights(self, named_tensors: dict[str, Any], global_steps: Optional[int] = None) -> dict:
        """Copy the actor's full (HF-named) weights, tensors or numpy arrays, into the sampling model;
        returns a summary."""
        async with self._model_lock:
            summary = await asyncio.to_thread(self._load_weights, named_tensors)
            self.global_steps = global_steps
        print(WEIGHT_SYNC_LOG.format(replica=self.replica_rank, step=global_steps, **summary), flush=True)
        return summary

    def _load_weights(self, named_tensors: dict[str, torch.Tensor]) -> dict:
        state = self._model.state_dict()
        unknown = sorted(set(named_tensors) - set(state))
        if unknown:
            raise KeyError(f"hf rollout: the actor sent weights the rollout model does not have: {unknown[:5]}")
        changed, max_abs_delta = 0, 0.0
        with torch.no_grad():
            for name, incoming in named_tensors.items():
                target = state[name]
                if isinstance(incoming, np.ndarray):
                    with warnings.catch_warnings():  # Ray hands out read-only buffers; they are only read here
                        warnings.simplefilter("ignore", UserWarning)
                        incoming = torch.from_numpy(incoming)
                if target.shape != incoming.shape:
                    raise ValueError(
                        f"hf rollout: {name} has shape {tuple(incoming.shape)}, expected {tuple(target.shape)}"
                    )
                incoming = incoming.to(dtype=target.dtype)
                delta = (incoming.float() - target.float()).abs().max().item() if target.numel() else 0.0
                if delta > 0:
                    changed += 1
                    max_abs_delta = max(max_abs_delta, delta)
                target.copy_(incoming)
        missing = set(state) - set(named_tensors)
        # Tied embeddings may be sent once; anything else missing would leave stale weights behind.
        tied = {name for name in missing if name.endswith("lm_head.weight") and self._model.config.tie_word_embeddings}
        if missing - tied:
            raise KeyError(f"hf rollout: the actor did not send {sorted(missing - tied)[:5]}")
        return {"tensors": len(named_tensors), "changed": changed, "delta": max_abs_delta}

    # generation -------------------------------------------------------------------------------
    def _request_generator(self, prompt_ids: list[int]) -> torch.Generator:
        """The random stream of one request, seeded by the rollout seed, the training step, the
        prompt and which of that prompt's samples it is: a response then does not depend on the
        requests it was batched with or on their arrival order, and runs that differ only in their
        advantage estimator sample the same responses until their weights differ."""
        key = (self.global_steps, tuple(prompt_ids))
        if any(step != self.global_steps for step, _ in self._samples_asked):
            self._samples_asked.clear()  # a new step: the earlier counts are done with
        index = self._samples_asked.get(key, 0)
        self._samples_asked[key] = index + 1
        identity = repr((self.config.seed, self.replica_rank, self.global_steps, index, key[1])).encode()
        seed = int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "little") >> 1
        return torch.Generator().manual_seed(seed)

    def _settings(self, prompt_len: int, sampling_params: dict[str, Any]) -> SamplingSettings:
        budget = min(self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len)
        requested = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
        max_new_tokens = budget if requested is None else min(int(requested), self.config.response_length)
        temperature = float(sampling_params.get("temperature", self.config.temperature))
        top_k = sampling_params.get("top_k", self.config.top_k)
        return SamplingSettings(
            temperature=temperature if self.config.do_sample else 0.0,
            top_p=float(sampling_params.get("top_p", self.config.top_p)),
            top_k=-1 if top_k is None else int(top_k),
            max_new_tokens=max(1, max_new_tokens),
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ):
        """Sample one response; returns veRL's ``TokenOutput`` (token ids, log-probs if asked)."""
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf rollout is text-only (no image/video/audio inputs)")
        prompt_ids = [int(token) for token in prompt_ids]
        if not prompt_ids:
            raise ValueError(f"request {request_id}: empty prompt")
        request = _PendingRequest(
            prompt_ids=prompt_ids,
            settings=self._settings(len(prompt_ids), sampling_params),
            want_log_probs=bool(sampling_params.get("logprobs", False)),
            generator=self._request_generator(prompt_ids),
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(request)
        self._work_available.set()
        sequence: SampledSequence = await request.future
        return TokenOutput(
            token_ids=sequence.token_ids,
            log_probs=sequence.log_probs if request.want_log_probs else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps},
        )

    async def _gather_burst(self, max_batch: int) -> None:
        """Wait while a burst of requests is still arriving: until none came for
        ``BURST_QUIET_S``, the batch is full, or ``BURST_MAX_WAIT_S`` passed. A step's requests are
        sent together but reach the server spread over milliseconds (more on a loaded machine), and
        on a CPU one decode step of a batch of 8 costs about what one of a single sequence does
        (each step reads every weight once): batching the burst is most of the rollout's speed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BURST_MAX_WAIT_S
        while len(self._pending) < max_batch and loop.time() < deadline:
            arrived = len(self._pending)
            await asyncio.sleep(BURST_QUIET_S)
            if len(self._pending) == arrived:
                break

    async def _serve_batches(self) -> None:
        max_batch = max(1, self.config.max_num_seqs)
        while True:
            await self._work_available.wait()
            await self._gather_burst(max_batch)
            taken, self._pending = self._pending[:max_batch], self._pending[max_batch:]
            if not self._pending:
                self._work_available.clear()
            groups: dict[SamplingSettings, list[_PendingRequest]] = {}
            for request in taken:
                groups.setdefault(request.settings, []).append(request)
            for settings, requests in groups.items():
                try:
                    async with self._model_lock:
                        sequences = await asyncio.to_thread(
                            sample_batch,
                            self._model,
                            [request.prompt_ids for request in requests],
                            settings,
                            self._eos_token_ids,
                            self._pad_token_id,
                            [request.generator for request in requests],
                        )
                except Exception as exc:  # hand the failure to every caller instead of killing the loop
                    for request in requests:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                for request, sequence in zip(requests, sequences, strict=True):
                    if not request.future.done():
                        request.future.set_result(sequence)

    # memory and control calls: nothing to free or pause on a CPU ----------------------------
    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0.05)

    async def abort_all_requests(self, reject_request: bool = False, **kwargs: Any) -> dict[str, Any]:
        # Batches run to completion (sync training never aborts); report nothing aborted.
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, **kwargs: Any) -> dict[str, Any]:
        return {"aborted": False, "request_id": request_id, "error": "the hf rollout does not abort requests"}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``hf`` server per replica, on the node of the replica's (single) worker."""

    async def launch_servers(self) -> None:
        if self.world_size != 1:
            raise ValueError(
                "the hf rollout has no tensor/data/pipeline parallelism: set "
                "actor_rollout_ref.rollout.tensor_model_parallel_size=1 (and data/pipeline sizes 1), "
                f"got a rollout world size of {self.world_size}"
            )
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
        else:
            node_id = ray.get_runtime_context().get_node_id()
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank),
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
                num_cpus=0,
                max_concurrency=self.max_concurrency,
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.launch_server.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout-replica-{self.replica_rank}"
