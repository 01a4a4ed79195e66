"""Fixtures for the veRL glue: veRL's real engine forward on CPU, a DP worker group, an in-memory TransferQueue.

* ``cpu_engine`` (an instance of ``cpu_engine_class``) — veRL's ``FSDPEngineWithLMHead`` code (``infer_batch`` → ``prepare_micro_batches``
  → ``forward_step`` → ``prepare_model_inputs`` / ``prepare_model_outputs`` → ``postprocess_batch_func``)
  driving the tiny Qwen2 on CPU. Only the FSDP wrapping and the device lookup are left out: the
  module is the plain HF model and veRL's ``get_device_id`` / ``get_device_name`` answer ``cpu``.
* ``make_worker_group(dp_size)`` — stands in for a ``RayWorkerGroup``: a jagged ``TensorDict`` is
  split over ``dp_size`` ranks with veRL's own ``BatchData.chunk`` (what the dispatch decorator
  calls; it asserts divisibility), each rank fills in the worker defaults and runs the engine as
  ``TrainingWorker.infer_batch`` does, and the outputs are joined with ``BatchData.concat``.
* ``FakeTransferQueue`` — per-sample key/value store with ``kv_batch_get`` / ``kv_batch_put``
  returning jagged ``TensorDict`` s built by veRL's ``list_of_dict_to_tensordict`` (as the agent
  loop writes them), nested for every tensor field.
"""

from __future__ import annotations

import tempfile

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def cpu_engine_class():
    """``CpuEngine(module)``: veRL's FSDP engine code around an unwrapped module on CPU (no FSDP, no
    device mesh); counts its ``infer_batch`` calls (``calls``) and forwards (``forwards``)."""
    import torch.distributed as dist

    import verl.utils.torch_functional as verl_F
    import verl.workers.engine.fsdp.transformer_impl as impl
    from verl.workers.config import FSDPEngineConfig

    patcher = pytest.MonkeyPatch()
    patcher.setattr(impl, "get_device_id", lambda: "cpu")
    patcher.setattr(impl, "get_device_name", lambda: "cpu")
    # The engine all-reduces its token count over the DP group: a one-rank gloo group, torn down after.
    created_group = not dist.is_initialized()
    if created_group:
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)

    class CpuEngine(impl.FSDPEngineWithLMHead):
        def __init__(self, module):  # noqa: D401 - deliberately skips FSDPEngine.__init__ (device meshes)
            self.module = module
            self.engine_config = FSDPEngineConfig(forward_only=True, use_torch_compile=False)
            self.pad_to_length = False
            self.use_ulysses_sp = False
            self.ulysses_sequence_parallel_size = 1
            self.ulysses_device_mesh = None
            self._autocast_dtype = torch.float32
            self.scaler = None
            self.compute_entropy_from_logits = verl_F.entropy_from_logits
            self.calls = []
            self.forwards = 0

        def infer_batch(self, data, loss_function=None):
            self.calls.append(len(data))
            return super().infer_batch(data, loss_function=loss_function)

        def forward_step(self, micro_batch, loss_function, forward_only):
            self.forwards += 1
            return super().forward_step(micro_batch, loss_function, forward_only)

    yield CpuEngine
    patcher.undo()
    if created_group:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cpu_engine(cpu_engine_class, tiny_model):
    return cpu_engine_class(tiny_model)


class FakeWorkerGroup:
    """Minimal ``RayWorkerGroup`` with a ``dp_size``-rank mesh for ``ref`` and ``actor``."""

    def __init__(self, engine, dp_size: int, use_remove_padding: bool = True, micro_batch_size_per_gpu: int = 4):
        self.engine = engine
        self.dp_size = dp_size
        self.use_remove_padding = use_remove_padding
        self.micro_batch_size_per_gpu = micro_batch_size_per_gpu
        self._dispatch_info = {}
        self.received = []  # (method, TensorDict) per call
        self.rank_sizes = []

    def _query_dispatch_info(self, mesh):
        return list(range(self.dp_size))

    def _rank_infer(self, data):
        import pickle

        from verl.utils import tensordict_utils as tu

        data = pickle.loads(pickle.dumps(data))  # what Ray's transport does to the chunk
        if data.is_locked:
            data.unlock_()
        tu.pop(data, key="no_lora_adapter", default=False)
        defaults = dict(
            use_remove_padding=self.use_remove_padding,
            use_dynamic_bsz=False,
            micro_batch_size_per_gpu=self.micro_batch_size_per_gpu,
            use_fused_kernels=False,
        )
        for key, value in defaults.items():
            if key not in data.keys():
                tu.assign_non_tensor(data, **{key: value})
        output = self.engine.infer_batch(data, loss_function=None)
        return tu.get_tensordict(tensor_dict=output["model_output"], non_tensor_dict={"metrics": {}}).cpu()

    def _dispatch(self, method, data):
        from verl.protocol import BatchData

        self.received.append((method, data))
        chunks = BatchData(data).chunk(chunks=self.dp_size)
        self.rank_sizes.append([len(chunk) for chunk in chunks])
        return BatchData([self._rank_infer(chunk) for chunk in chunks]).concat()

    def compute_ref_log_prob(self, data):
        return self._dispatch("compute_ref_log_prob", data)

    def compute_log_prob(self, data):
        return self._dispatch("compute_log_prob", data)


@pytest.fixture
def make_worker_group(cpu_engine):
    def make(dp_size: int = 2, **kwargs) -> FakeWorkerGroup:
        return FakeWorkerGroup(cpu_engine, dp_size, **kwargs)

    return make


class FakeTransferQueue:
    """In-memory stand-in for ``transfer_queue``'s key/value API (``kv_batch_get`` / ``kv_batch_put``)."""

    def __init__(self):
        self.store: dict[tuple[str, str], dict] = {}
        self.puts: list[list[str]] = []
        # The real TransferQueue returns a plain [B, L] tensor when every sample has one shape.
        self.dense_when_equal = False

    @staticmethod
    def _rows(fields, count):
        rows = [dict() for _ in range(count)]
        for name in fields.keys():
            value = fields.get(name)
            if isinstance(value, torch.Tensor):
                items = value.unbind(0)
            else:
                items = value.tolist() if hasattr(value, "tolist") else list(value)
            for row, item in zip(rows, items):
                row[name] = item
        return rows

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        from transfer_queue import KVBatchMeta

        if fields is not None:
            self.puts.append(sorted(fields.keys()))
            for key, row in zip(keys, self._rows(fields, len(keys))):
                self.store.setdefault((partition_id, key), {}).update(row)
        return KVBatchMeta(keys=list(keys), tags=list(tags) if tags else [{} for _ in keys], partition_id=partition_id)

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        from tensordict import NonTensorStack, TensorDict

        rows = [self.store[(partition_id, key)] for key in keys]
        names = select_fields if select_fields is not None else list(rows[0])
        names = [name for name in names if all(name in row for row in rows)]  # missing fields are dropped
        data = {}
        for name in names:
            values = [row[name] for row in rows]
            if all(isinstance(value, torch.Tensor) for value in values):
                if self.dense_when_equal and len({tuple(value.shape) for value in values}) == 1:
                    data[name] = torch.stack(values)
                else:
                    data[name] = torch.nested.as_nested_tensor(list(values), layout=torch.jagged)
            else:
                data[name] = NonTensorStack(*values)
        return TensorDict(data, batch_size=[len(keys)])


@pytest.fixture
def fake_tq(monkeypatch):
    import transfer_queue

    fake = FakeTransferQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", fake.kv_batch_put)
    return fake


QUESTION = "What is {a} plus {b}? Please reason step by step."
THOUGHTS = [
    "First, we add 3 and 4 to get 7.\nSo the total is 7.\n\nWait, let me re-check the sum.\nWe know that 3 + 4 = 7.\n",
    "Let me think about 3 and 4\n\nStep 4: compute 3 times 4\nTherefore the answer is 7.\n",
    "Is 3 larger than 4?\nAlternatively, subtract 4 from 7.\n\n",
]


def make_rollout_batch(tokenizer, seed: int = 0):
    """Responses as veRL's agent loop stores them: nested ``input_ids`` (prompt + response), padded
    ``responses`` / ``response_mask`` / ``entropy``, ``reward_model`` dicts, and a padding row."""
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    think_end = "</think>\n\nThe answer is \\boxed{7}."
    rows = [  # (question, response text, ground truth)
        ((3, 4), THOUGHTS[0] + think_end, "7"),
        ((3, 4), THOUGHTS[1] + think_end, "7"),
        ((3, 4), THOUGHTS[2], "7"),  # truncated: no </think>
        ((5, 7), THOUGHTS[0] + think_end, ""),  # unusable ground truth
        ((5, 7), "So the total is 12.\n\n</think>\n\n\\boxed{12}", 12),
    ]
    prompts, responses, reward_models = [], [], []
    for (a, b), text, truth in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION.format(a=a, b=b)}], add_generation_prompt=True, tokenize=True
        )
        prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        prompts.append(torch.tensor(list(prompt), dtype=torch.long))
        responses.append(torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"] + [eos], dtype=torch.long))
        reward_models.append({"ground_truth": truth, "style": "rule"})
    # veRL's batch-balancing padding row: 127 EOS prompt tokens, one masked EOS response token,
    # reward_model copied from the first sample.
    prompts.append(torch.full((127,), eos, dtype=torch.long))
    responses.append(torch.tensor([eos], dtype=torch.long))
    reward_models.append(dict(reward_models[0]))
    padding = torch.tensor([False] * len(rows) + [True])

    width = max(r.numel() for r in responses)
    response_ids = torch.full((len(responses), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(len(responses), width, dtype=torch.long)
    for i, r in enumerate(responses):
        response_ids[i, : r.numel()] = r
        response_mask[i, : r.numel()] = 0 if padding[i] else 1
    entropy = torch.rand(len(responses), width, generator=generator) * 3 * response_mask
    input_ids = torch.nested.as_nested_tensor([torch.cat([p, r]) for p, r in zip(prompts, responses)], layout=torch.jagged)
    return dict(
        input_ids=input_ids,
        prompt_lengths=torch.tensor([p.numel() for p in prompts]),
        responses=response_ids,
        response_mask=response_mask,
        entropy=entropy,
        reward_models=reward_models,
        padding=padding,
        prompt_list=prompts,
        response_list=responses,
    )


@pytest.fixture
def rollout_batch():
    return make_rollout_batch
