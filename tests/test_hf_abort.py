"""The ``hf`` rollout server under verl's partial rollout, in-process (no Ray, no trainer): what the async trainers
call (abort, resume, weight load) and verl's own ``FullyAsyncLLMServerClient`` resuming an aborted turn.

Greedy decoding on the tiny model: a turn aborted midway and resumed on the same weights must be, token for token and
log-prob for log-prob, the turn generated in one go.
"""

from __future__ import annotations

import asyncio

import torch
from omegaconf import OmegaConf
from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient

from verl_reflect.cpu.hf_rollout import HFServer

GREEDY = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True, "max_tokens": 24}
CANDIDATE_PROMPTS = [list(range(start, start + 8)) for start in range(1, 400, 7)]


class _Handle:
    """What the client calls on a Ray actor handle (``server.generate.remote``), on an in-process server; records
    every piece the server returns."""

    def __init__(self, server: HFServer):
        self.server, self.pieces = server, []
        self.generate = self

    async def remote(self, **kwargs):
        output = await self.server.generate(**kwargs)
        self.pieces.append((kwargs["prompt_ids"], output))
        return output


class _Client(FullyAsyncLLMServerClient):
    """verl's partial-rollout client with its load balancer replaced by one in-process server."""

    def __init__(self, handle: _Handle):
        config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "hf", "response_length": 64}}})
        super().__init__(config=config, load_balancer_handle=None)
        self.handle = handle

    async def _acquire_server(self, request_id, **extra):
        return "hf_server_0", self.handle

    def _release_server(self, server_id, request_id=None):
        pass


def _server(tiny_model_dir, delay: float) -> HFServer:
    server = HFServer(str(tiny_model_dir), max_batch_size=4, decode_step_delay_s=delay)
    server.set_global_steps(0)
    return server


async def _full_length_reference(tiny_model_dir) -> tuple[list[int], object]:
    """A prompt whose greedy turn runs to ``max_tokens`` (no EOS before it, so an abort lands mid-turn), and that
    turn generated in one go."""
    server = _server(tiny_model_dir, 0.0)
    for prompt in CANDIDATE_PROMPTS:
        reference = await server.generate(prompt, dict(GREEDY), "ref")
        if len(reference.token_ids) == GREEDY["max_tokens"]:
            return prompt, reference
    raise AssertionError("every candidate prompt stops early on this model")


async def _abort_midway(server: HFServer, task: asyncio.Task, after_tokens: int = 5) -> dict:
    while not server.backend._decoding:
        await asyncio.sleep(0.005)
    await asyncio.sleep(after_tokens * server.backend.decode_step_delay_s)
    result = await server.abort_all_requests()
    assert not task.done()  # the client holds the aborted turn until generation resumes
    return result


def test_an_aborted_turn_resumes_token_exact_through_verls_partial_rollout_client(tiny_model_dir):
    async def main():
        prompt, reference = await _full_length_reference(tiny_model_dir)
        server = _server(tiny_model_dir, 0.05)
        handle = _Handle(server)
        task = asyncio.create_task(_Client(handle).generate("r", prompt_ids=prompt, sampling_params=dict(GREEDY)))
        aborted = await _abort_midway(server, task)
        assert aborted["aborted_count"] == 1
        await asyncio.sleep(1.5)  # the client retries every second: parked behind the closed gate meanwhile
        assert not task.done() and len(handle.pieces) == 1
        await server.resume_generation()
        output = await task
        return prompt, reference, handle.pieces, output

    prompt, reference, pieces, output = asyncio.run(main())
    (first_prompt, first), (second_prompt, second) = pieces
    assert first.stop_reason == "aborted" and 0 < len(first.token_ids) < GREEDY["max_tokens"]
    assert second.stop_reason == "completed"
    # Resumed from exactly the tokens it had.
    assert first_prompt == prompt and second_prompt == prompt + first.token_ids
    assert output.token_ids == first.token_ids + second.token_ids == reference.token_ids
    assert torch.allclose(torch.tensor(output.log_probs), torch.tensor(reference.log_probs), atol=1e-5)
    assert output.extra_fields["min_global_steps"] == output.extra_fields["max_global_steps"] == 0


def test_a_weight_load_between_abort_and_resume_labels_the_resumed_piece(tiny_model_dir):
    async def main():
        prompt, _ = await _full_length_reference(tiny_model_dir)
        server = _server(tiny_model_dir, 0.05)
        handle = _Handle(server)
        task = asyncio.create_task(_Client(handle).generate("r", prompt_ids=prompt, sampling_params=dict(GREEDY)))
        await _abort_midway(server, task)
        state = {name: tensor + 0.5 for name, tensor in server.backend.model.state_dict().items()}
        await server.update_weights(state, global_steps=1)
        await server.resume_generation()
        return handle.pieces, await task

    pieces, output = asyncio.run(main())
    assert [piece.extra_fields["global_steps"] for _, piece in pieces] == [0, 1]
    assert output.extra_fields["min_global_steps"] == 0 and output.extra_fields["max_global_steps"] == 1


def test_a_weight_load_waits_for_the_batch_being_decoded(tiny_model_dir):
    async def main():
        prompt, reference = await _full_length_reference(tiny_model_dir)
        server = _server(tiny_model_dir, 0.02)
        task = asyncio.create_task(server.generate(prompt, dict(GREEDY), "r"))
        while not server.backend._decoding:
            await asyncio.sleep(0.005)
        state = {name: tensor + 0.5 for name, tensor in server.backend.model.state_dict().items()}
        await server.update_weights(state, global_steps=1)
        # The load returned only after the batch did: the call's result is set, and its task ends within a few turns
        # of the event loop (the load's own wake-up can come first). Mid-batch, decoding would take far longer.
        for _ in range(20):
            if task.done():
                break
            await asyncio.sleep(0)
        assert task.done()
        return reference, task.result(), await server.generate(prompt, dict(GREEDY), "after")

    reference, during, after = asyncio.run(main())
    # Every token of the call in flight came from the old weights, and says so.
    assert during.token_ids == reference.token_ids and during.extra_fields["global_steps"] == 0
    assert after.extra_fields["global_steps"] == 1 and after.token_ids != reference.token_ids


def test_a_rejecting_gate_turns_new_calls_away_aborted(tiny_model_dir):
    async def main():
        prompt, _ = await _full_length_reference(tiny_model_dir)
        server = _server(tiny_model_dir, 0.0)
        assert await server.abort_all_requests(reject_request=True) == {"aborted_count": 0, "request_ids": []}
        turned_away = await server.generate(prompt, dict(GREEDY), "r")
        await server.resume_generation()
        return turned_away, await server.generate(prompt, dict(GREEDY), "r2")

    turned_away, served = asyncio.run(main())
    assert turned_away.stop_reason == "aborted" and turned_away.token_ids == []
    assert served.stop_reason == "completed" and len(served.token_ids) == GREEDY["max_tokens"]
