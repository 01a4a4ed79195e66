"""The hf rollout server and worker adapter, driven directly (no Ray): batching, budgets, weight sync."""

from __future__ import annotations

import asyncio

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_sampling.py
    yield
    torch.set_num_threads(threads)


def _server(tiny_model_dir, **rollout_overrides):
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_repro.cpu.server import HFRolloutServer

    rollout = dict(name="hf", tensor_model_parallel_size=1, prompt_length=48, response_length=12, max_num_seqs=64)
    rollout.update(rollout_overrides)
    return HFRolloutServer(RolloutConfig(**rollout), HFModelConfig(path=str(tiny_model_dir)), replica_rank=0)


def _prompt(tokenizer, text):
    return tokenizer.encode(
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    )


def test_concurrent_requests_are_batched_and_answered_within_budget(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from verl_repro.cpu import server as server_module

    batch_sizes, original = [], server_module.sample_batch

    def counting_sample_batch(model, prompts, settings, *args):
        batch_sizes.append(len(prompts))
        return original(model, prompts, settings, *args)

    monkeypatch.setattr(server_module, "sample_batch", counting_sample_batch)
    server = _server(tiny_model_dir)

    async def scenario():
        await server.launch_server()
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
        prompts = [_prompt(tiny_tokenizer, f"What is {i} plus {i}?") for i in range(6)]
        outputs = await asyncio.gather(
            *[
                server.generate(prompt_ids=p, sampling_params=dict(params), request_id=str(i))
                for i, p in enumerate(prompts)
            ],
            server.generate(
                prompt_ids=prompts[0], sampling_params={"temperature": 0, "max_tokens": 5}, request_id="greedy"
            ),
        )
        return prompts, outputs

    prompts, outputs = asyncio.run(scenario())
    assert sorted(batch_sizes) == [1, 6]  # one batch per sampling setting, not one call per request
    for output in outputs[:-1]:
        assert 1 <= len(output.token_ids) <= 12  # rollout.response_length
        assert output.log_probs is not None and len(output.log_probs) == len(output.token_ids)
        assert all(lp <= 0.0 for lp in output.log_probs)
        assert output.stop_reason == "completed" and output.extra_fields["global_steps"] is None
    greedy = outputs[-1]
    assert len(greedy.token_ids) <= 5 and greedy.log_probs is None  # max_tokens honoured, log-probs only if asked


def test_weight_sync_changes_samples_and_reports_changed_tensors(tiny_model_dir, tiny_tokenizer):
    from verl_repro.cpu.rollout import to_wire

    server = _server(tiny_model_dir)
    prompt = _prompt(tiny_tokenizer, "Hi")
    greedy = {"temperature": 0, "logprobs": True}

    async def scenario():
        await server.launch_server()
        before = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="a")
        state = {name: tensor.clone() for name, tensor in server._model.state_dict().items()}
        unchanged = await server.update_weights(state, global_steps=0)
        torch.manual_seed(0)
        perturbed = {name: tensor + 0.05 * torch.randn_like(tensor) for name, tensor in state.items()}
        # as the actor's adapter sends them: numpy arrays (bfloat16 stays a tensor)
        changed = await server.update_weights({name: to_wire(tensor) for name, tensor in perturbed.items()}, global_steps=1)
        after = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="b")
        return before, unchanged, changed, after, perturbed

    before, unchanged, changed, after, perturbed = asyncio.run(scenario())
    for name, tensor in server._model.state_dict().items():
        torch.testing.assert_close(tensor, perturbed[name], rtol=0, atol=0)
    assert isinstance(to_wire(torch.ones(2, dtype=torch.bfloat16)), torch.Tensor)
    assert unchanged["changed"] == 0 and unchanged["delta"] == 0.0
    assert changed["changed"] == changed["tensors"] == len(server._model.state_dict())
    assert after.extra_fields["global_steps"] == 1
    assert after.log_probs != before.log_probs


def test_weight_sync_rejects_unknown_or_missing_tensors(tiny_model_dir):
    server = _server(tiny_model_dir)
    asyncio.run(server.launch_server())
    state = dict(server._model.state_dict())
    with pytest.raises(KeyError, match="does not have"):
        server._load_weights({**state, "model.extra.weight": torch.zeros(1)})
    missing = dict(state)
    missing.pop("model.norm.weight")
    with pytest.raises(KeyError, match="did not send"):
        server._load_weights(missing)
    with pytest.raises(ValueError, match="shape"):
        server._load_weights({**state, "model.norm.weight": torch.zeros(3)})


def test_multimodal_requests_are_refused(tiny_model_dir):
    server = _server(tiny_model_dir)

    async def scenario():
        await server.launch_server()
        await server.generate(prompt_ids=[1, 2], sampling_params={}, request_id="x", image_data=["img"])

    with pytest.raises(NotImplementedError, match="text-only"):
        asyncio.run(scenario())


def test_adapter_sends_copies_to_its_replica_server(monkeypatch):
    from verl.workers.config import RolloutConfig

    from verl_repro.cpu.rollout import HFRolloutAdapter

    received = {}

    class _RemoteMethod:
        async def _call(self, named_tensors, global_steps):
            received.update(named_tensors=named_tensors, global_steps=global_steps)

        def remote(self, *args):
            return self._call(*args)

    class _Server:
        update_weights = _RemoteMethod()

    monkeypatch.setenv("RANK", "0")
    config = RolloutConfig(name="hf", tensor_model_parallel_size=1)
    adapter = HFRolloutAdapter(config, model_config=None, device_mesh=None)
    adapter._server = _Server()
    weight = torch.ones(2, 2)
    asyncio.run(adapter.update_weights(iter([("w", weight)]), global_steps=3))
    weight.add_(1.0)  # the actor keeps training: what the server got must not move
    assert received["global_steps"] == 3
    torch.testing.assert_close(torch.from_numpy(received["named_tensors"]["w"]), torch.ones(2, 2))
    with pytest.raises(NotImplementedError, match="lora"):
        asyncio.run(adapter.update_weights(iter([]), peft_config={"r": 8}))


def test_responses_do_not_depend_on_batching_or_arrival_order(tiny_model_dir, tiny_tokenizer):
    prompts = [_prompt(tiny_tokenizer, f"What is {i} plus {i}?") for i in (1, 2)]
    assert len(prompts[0]) == len(prompts[1])  # no padding difference between the batches below
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}

    async def one_burst(server, order):
        await server.launch_server()
        return await asyncio.gather(*[server.generate(prompt_ids=prompts[i], sampling_params=dict(params), request_id=str(n))
                                      for n, i in enumerate(order)])

    async def one_at_a_time(server, order):
        await server.launch_server()
        return [await server.generate(prompt_ids=prompts[i], sampling_params=dict(params), request_id=str(n))
                for n, i in enumerate(order)]

    def responses(order, outputs):
        return sorted((i, tuple(output.token_ids)) for i, output in zip(order, outputs))

    burst = responses([0, 0, 1, 1], asyncio.run(one_burst(_server(tiny_model_dir), [0, 0, 1, 1])))
    sequential = responses([1, 0, 1, 0], asyncio.run(one_at_a_time(_server(tiny_model_dir), [1, 0, 1, 0])))
    assert burst == sequential
    assert burst[0] != burst[1] or burst[2] != burst[3]  # the samples of one prompt are draws, not copies
    # another seed samples other responses
    reseeded = responses([0, 0, 1, 1], asyncio.run(one_burst(_server(tiny_model_dir, seed=7), [0, 0, 1, 1])))
    assert reseeded != burst


def test_a_burst_spread_over_milliseconds_is_one_batch(tiny_model_dir, tiny_tokenizer, monkeypatch):
    from verl_repro.cpu import server as server_module

    batch_sizes, original = [], server_module.sample_batch

    def counting_sample_batch(model, prompts, settings, *args):
        batch_sizes.append(len(prompts))
        return original(model, prompts, settings, *args)

    monkeypatch.setattr(server_module, "sample_batch", counting_sample_batch)
    server = _server(tiny_model_dir, response_length=4)
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}

    async def scenario():
        await server.launch_server()

        async def late(index):
            # a quarter of the quiet period apart: each arrives before the server stops waiting
            await asyncio.sleep(index * server_module.BURST_QUIET_S / 4)
            return await server.generate(prompt_ids=_prompt(tiny_tokenizer, f"{index}?"), sampling_params=dict(params),
                                         request_id=str(index))

        first = await asyncio.gather(*(late(i) for i in range(6)))
        # after the burst, a lone request is served on its own once the quiet period has passed
        await server.generate(prompt_ids=_prompt(tiny_tokenizer, "x?"), sampling_params=dict(params), request_id="x")
        return first

    assert len(asyncio.run(scenario())) == 6
    assert batch_sizes == [6, 1]
