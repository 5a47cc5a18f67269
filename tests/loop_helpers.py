"""What the agent-loop tests share: a scripted stand-in for verl's server manager, and the kwargs verl's
AgentLoopWorker passes a loop."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

LOGPROB = -0.5
# The user turns the tests' loops ask with (the recipes' come from their agent-loop YAML).
REFLECTION_PROMPT = (
    "Your answer was wrong. Reflect on what went wrong: in a few sentences, explain the mistake "
    "and how to avoid it. Do not give the answer yet."
)
RETRY_PROMPT = "Now try again, using your reflection. Give the final answer in the same format as before."


class ScriptedServer:
    """verl's server-manager interface; answers each call with the next scripted reply, honouring max_tokens.

    A reply is either text (encoded, then ``end_of_turn`` appended when ``stop``) or the exact ids the model
    generates. Returns every field verl's ``LLMServerClient.generate`` returns (``workers/rollout/llm_server.py``):
    the weight version in ``extra_fields`` (``global_steps``, and ``min_global_steps`` / ``max_global_steps`` set
    from it) and ``num_preempted``. ``weight_versions`` scripts the version per call (a sync mid-trajectory).
    """

    def __init__(
        self,
        tokenizer,
        replies: list,
        stop: bool = True,
        weight_versions=None,
        preempted=None,
        end_of_turn: str = "<|im_end|>",
    ):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.stop = stop
        self.end_of_turn = end_of_turn
        self.weight_versions = list(weight_versions or [7] * len(replies))
        self.preempted = list(preempted or [0] * len(replies))
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), **sampling_params})
        reply = self.replies.pop(0)
        if isinstance(reply, str):
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            if self.stop:
                ids.append(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        else:
            ids = list(reply)
        ids = ids[: sampling_params["max_tokens"]]
        version = self.weight_versions.pop(0)
        return TokenOutput(
            token_ids=ids,
            log_probs=[LOGPROB] * len(ids),
            stop_reason="completed",
            num_preempted=self.preempted.pop(0),
            extra_fields={"global_steps": version, "min_global_steps": version, "max_global_steps": version},
        )


def standalone_kwargs(
    tokenizer, *, prompt_length: int, response_length: int, hf_model_type: Optional[str] = None
) -> dict[str, Any]:
    """The constructor kwargs verl's AgentLoopWorker passes an agent loop, for running one outside the trainer.

    ``trainer_config`` holds only the slice of verl's config the loops read. Use as
    ``ReflectRetryAgentLoop(server_manager=..., **standalone_kwargs(tok, ...), max_reflections=...)``,
    inside a running event loop (``AgentLoopBase`` captures it).
    """
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"rollout": {"prompt_length": prompt_length, "response_length": response_length}},
            "data": {"apply_chat_template_kwargs": {}},
        }
    )
    return {
        "reflection_prompt": REFLECTION_PROMPT,
        "retry_prompt": RETRY_PROMPT,
        "trainer_config": DictConfigWrap(config),
        "tokenizer": tokenizer,
        "processor": None,
        "dataset_cls": RLHFDataset,
        "data_config": DictConfigWrap(config.data),
        "hf_model_type": hf_model_type,
    }
