"""The reflect-retry agent loop (Bensal et al., 2025), registered in verl as ``reflect_retry``.

One dataset row becomes one trajectory:

    prompt | attempt | user: reflect | REFLECTION | user: retry | retry [| user: reflect | REFLECTION | ...]

Only the reflection tokens are trained: ``response_mask`` is 1 on them and 0 on attempts, retries,
inserted user turns and chat-template boundary tokens. ``reward_score`` is 1.0 iff the last attempt
is correct, as judged by the task's verifier in ``reward_fns`` (``verdict``: verl's reward-function contract,
off the event loop, within a timeout; a verifier that fails costs that verdict, counted in ``verifier_errors``
and ``verifier_timeouts``). A row solved on the first try stops there with an all-zero mask; the
``reflect_grpo`` estimator gives it zero advantage.

Tokens are built with verl's continuous-token helpers, so the response is exactly the token stream
the model saw (generated ids kept as generated, user turns rendered by the chat template), and the
mask/logprobs stay aligned through every boundary edit the builder makes. Where verl has no builder
for the model family (``llama``, ``phi3``, ``mistral``, ...), the user turns come from the chat template
itself (``turn_boundary``), and a template that cannot be followed token for token stops the loop at start.

With ``attempt: replay`` the first attempt is not generated: the row's stored failed attempt (the
``failed_attempts`` column ``verl-reflect build-failures`` writes) takes its place, token for token, and
the trajectory goes on from the reflection request. Every row of a GRPO group then reflects on the same
mistake, and no tokens are spent on an attempt that is never trained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional
from uuid import uuid4

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, MergeResult
from verl.workers.rollout.replica import TokenOutput

from reward_fns import TASK_PACKAGES_KEY, get_compute_score
from verl_reflect.turn_boundary import TemplateTurnBoundary, template_end_of_turn_id, turn_boundary_for
from verl_reflect.verdict import ERROR, TIMEOUT, verdict

ATTEMPT_MODES = ("generate", "replay")


@dataclasses.dataclass
class Turn:
    """One generated assistant turn. ``start`` is its offset in the response, ``num_tokens`` its length there;
    ``correct`` is the verifier's verdict on an attempt or retry, None on a reflection. ``extra_fields["turns"]``
    carries these as plain dicts (``dataclasses.asdict``): the v1 trainer stores extra fields in TransferQueue."""

    kind: str  # "attempt", "reflection" or "retry"
    text: str
    correct: Optional[bool]
    start: int
    num_tokens: int


@dataclasses.dataclass
class _Trajectory:
    """Runtime state of one trajectory; ``mask`` and ``logprobs`` cover the response part of ``token_ids``."""

    token_ids: list[int]
    messages: list[dict[str, Any]]
    mask: list[int] = dataclasses.field(default_factory=list)
    logprobs: Optional[list[float]] = None
    turns: list[Turn] = dataclasses.field(default_factory=list)
    # What the server reports beside the tokens (weight versions, spec-decode counters), merged across
    # turns exactly as tool_agent_loop merges them: the trainer reads it back per trajectory.
    server_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    routed_experts: Any = None


@register("reflect_retry")
class ReflectRetryAgentLoop(AgentLoopBase):
    """Attempt; on failure reflect and retry, up to ``max_reflections`` rounds. Reflection tokens are the trained span.

    Args (constructor kwargs, set per recipe in the ``agent_loop_config_path`` YAML):
        reflection_prompt: user turn asking for a self-reflection after a failed attempt. Required, like
            ``retry_prompt``: the YAML is their one source, so an entry without them fails at start.
        retry_prompt: user turn asking for a new attempt with the reflection in context.
        max_reflections: reflect-retry rounds after a failed first attempt (the paper uses 1).
        max_attempt_tokens: cap on each attempt and retry; None = whatever is left of ``response_length``.
        max_reflection_tokens: cap on each reflection; None = whatever is left of ``response_length``.
        attempt: ``generate`` samples the first attempt; ``replay`` puts the row's first stored failed attempt
            (``failed_attempts[0]``, from ``build-failures``) in its place, with mask 0, and never generates one:
            a row with no stored attempt, one longer than the attempt cap, one this tokenizer does not decode to
            its stored text, or one the verifier now scores correct is an error. Under replay
            ``first_try_correct`` is False by construction; ``replayed_attempt`` marks such rows.
        trained_turns: the generated turn kinds ``response_mask`` covers: ``["reflection"]`` (the method), or
            ``["reflection", "retry"]`` for verl's plain ``grpo`` on every generated token (a comparison run). A
            replayed attempt is never generated, so never trained.
        solved_threshold: an attempt counts as solved iff its verifier's score is >= this (``verdict``). 1.0: a
            binary verifier's 1.0, a partial-credit verifier's full credit. The reward stays 1.0 or 0.0: the last
            attempt solved or not.
        verdict_timeout: seconds a verdict may take (verl's ``limited`` reward manager defaults to 300); a verifier
            still running then counts as not solved (``verifier_timeouts``).
        verdict_threads: threads plain (not ``async def``) verifiers run in, shared by the worker's trajectories:
            as many verdicts run at once. Verifiers that wait (a sandbox, an API) want more; pure-Python ones gain
            little past the core count.
    """

    def __init__(
        self,
        *args,
        reflection_prompt: str,
        retry_prompt: str,
        max_reflections: int = 1,
        max_attempt_tokens: Optional[int] = None,
        max_reflection_tokens: Optional[int] = None,
        attempt: str = "generate",
        trained_turns: Sequence[str] = ("reflection",),
        solved_threshold: float = 1.0,
        verdict_timeout: float = 300.0,
        verdict_threads: int = 32,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if max_reflections < 0:
            raise ValueError(f"max_reflections must be >= 0, got {max_reflections}")
        if attempt not in ATTEMPT_MODES:
            raise ValueError(f"attempt must be one of {ATTEMPT_MODES}, got {attempt!r}")
        if not set(trained_turns) <= {"reflection", "retry"}:
            raise ValueError(f"trained_turns must be among reflection, retry; got {list(trained_turns)}")
        if not math.isfinite(solved_threshold):
            raise ValueError(f"solved_threshold must be a finite number, got {solved_threshold}")
        if not verdict_timeout > 0 or verdict_threads < 1:
            raise ValueError(
                f"verdict_timeout must be > 0 and verdict_threads >= 1, got {verdict_timeout} and {verdict_threads}"
            )
        self.solved_threshold = float(solved_threshold)
        self.verdict_timeout = float(verdict_timeout)
        self.verdict_threads = int(verdict_threads)
        self.attempt = attempt
        self.trained_turns = tuple(trained_turns)
        self.reflection_prompt = reflection_prompt
        self.retry_prompt = retry_prompt
        self.max_reflections = max_reflections
        self.max_attempt_tokens = max_attempt_tokens
        self.max_reflection_tokens = max_reflection_tokens
        self.response_length = self.rollout_config.response_length
        self.task_packages = task_packages(self.config)
        # verl's default builder (every model_type without a builder of its own) renders user turns out of
        # context: it drops the template's separator after the end-of-turn token, and fails on templates that
        # end renders with eos_token or demand alternating roles. There the template's own rendering is used.
        self.turn_boundary: Optional[TemplateTurnBoundary] = None
        if type(self.continuous_token_builder) is ContinuousTokenBuilder:
            self.turn_boundary = turn_boundary_for(
                self.tokenizer,
                model_type=kwargs.get("hf_model_type"),
                chat_template_kwargs=self.apply_chat_template_kwargs,
            )

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        messages = list(kwargs["raw_prompt"])
        data_source = kwargs["data_source"]
        ground_truth = kwargs["reward_model"]["ground_truth"]
        extra_info = kwargs.get("extra_info")
        compute_score = get_compute_score(data_source, self.task_packages)
        full_determinism = getattr(self.rollout_config, "full_determinism", False)
        # One request id for the whole trajectory: the server keeps it on one replica, so every
        # turn reuses the KV prefix of the turns before it.
        request_id = f"det-{int(kwargs.get('priority', 0))}" if full_determinism else uuid4().hex

        stored_attempt = self._stored_attempt(kwargs) if self.attempt == "replay" else None
        if stored_attempt is not None:
            # The stored ids answer the first generate call in place of the server, so the replayed attempt
            # takes the generated attempt's exact path: cap, merge, mask 0, turn record and verdict. (verl builds
            # one loop instance per trajectory, so the swap lasts exactly this trajectory.)
            self.server_manager = _StoredAttemptServer(self.server_manager, stored_attempt["token_ids"])

        traj = _Trajectory(token_ids=await self.ct_build_initial_tokens(messages), messages=messages)
        prompt_length = len(traj.token_ids)
        metrics: dict[str, float] = {}
        failures = {ERROR: 0, TIMEOUT: 0}
        # The last verdict's other keys (a dict-returning verifier's): reported with the reward it decided.
        verdict_extra_info: dict[str, Any] = {}

        async def attempt(kind: str) -> bool:
            nonlocal verdict_extra_info
            turn = await self._generate(traj, kind, request_id, sampling_params, self.max_attempt_tokens, metrics)
            if turn is None:
                return False
            judged = await verdict(
                compute_score,
                data_source=data_source,
                solution_str=turn.text,
                ground_truth=ground_truth,
                extra_info=extra_info,
                solved_threshold=self.solved_threshold,
                timeout=self.verdict_timeout,
                threads=self.verdict_threads,
                where=_which_row(kwargs),
            )
            if judged.failure is not None:
                failures[judged.failure] += 1
            verdict_extra_info = judged.extra_info
            turn.correct = judged.solved
            return turn.correct

        correct = await attempt("attempt")
        if stored_attempt is not None:
            self._check_replayed(traj.turns[0], stored_attempt, kwargs)
        first_try_correct = correct
        num_reflections = 0
        while not correct and num_reflections < self.max_reflections:
            if not await self._add_user_turn(traj, self.reflection_prompt):
                break
            if (
                await self._generate(
                    traj, "reflection", request_id, sampling_params, self.max_reflection_tokens, metrics
                )
                is None
            ):
                break
            num_reflections += 1
            # A retry that does not fit in the budget counts as a failed retry: reward 0.
            if not await self._add_user_turn(traj, self.retry_prompt):
                break
            correct = await attempt("retry")

        assert len(traj.mask) <= self.response_length, "budget accounting broke: response overflows"
        response_ids = traj.token_ids[prompt_length:]
        stats = {
            "first_try_correct": first_try_correct,
            "final_correct": correct,
            "num_reflections": num_reflections,
            "reflection_tokens": sum(turn.num_tokens for turn in traj.turns if turn.kind == "reflection"),
            "replayed_attempt": stored_attempt is not None,
            "verifier_errors": failures[ERROR],
            "verifier_timeouts": failures[TIMEOUT],
        }
        return AgentLoopOutput(
            prompt_ids=traj.token_ids[:prompt_length],
            response_ids=response_ids,
            response_mask=traj.mask,
            response_logprobs=traj.logprobs,
            # MoE router replay: the last turn's experts cover the whole sequence, as in tool_agent_loop.
            routed_experts=(
                traj.routed_experts[: prompt_length + self.response_length] if traj.routed_experts is not None else None
            ),
            reward_score=float(correct),
            num_turns=len(traj.messages) - len(kwargs["raw_prompt"]) + 1,
            metrics=metrics,
            extra_fields={
                # The server's fields first: the v1 trainer reads min/max_global_steps back after the update.
                **traj.server_fields,
                **stats,
                # reward_extra_info is what verl reports per data source in validation metrics: the verifier's own
                # keys, then the loop's stats (which win a name clash: the trainer reads them).
                "reward_extra_info": {**verdict_extra_info, **{key: float(value) for key, value in stats.items()}},
                "turns": [dataclasses.asdict(turn) for turn in traj.turns],
                "turn_scores": [float(turn.correct) for turn in traj.turns if turn.kind != "reflection"],
                "tool_rewards": [],
            },
        )

    def _stored_attempt(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's first stored failed attempt (every row of a group is the same row, so all replay it)."""
        stored = row.get("failed_attempts")
        where = _which_row(row)
        if stored is None or len(stored) == 0:
            raise ValueError(
                f"attempt=replay: {where} has no stored failed attempt (the failed_attempts column that "
                "`verl-reflect build-failures` writes); replay never generates one"
            )
        first = stored[0]
        token_ids = [int(token) for token in first["token_ids"]]
        cap = min(self.max_attempt_tokens or self.response_length, self.response_length)
        if len(token_ids) > cap:
            raise ValueError(
                f"attempt=replay: {where}'s stored attempt has {len(token_ids)} tokens, over this loop's attempt "
                f"cap of {cap}: build the failure set with this recipe (build-failures --recipe)"
            )
        return {**first, "token_ids": token_ids}

    @staticmethod
    def _check_replayed(turn: Turn, stored: dict[str, Any], row: dict[str, Any]) -> None:
        """A replayed attempt must read as stored and still fail: anything else means the failure set does not
        belong to this tokenizer or verifier, and training on it would be silently wrong."""
        where = _which_row(row)
        if turn.text != stored["text"]:
            raise ValueError(
                f"attempt=replay: {where}'s stored attempt does not decode to its stored text with this tokenizer: "
                f"the failure set was built with another tokenizer (model {stored.get('model')!r})"
            )
        if turn.correct:
            raise ValueError(
                f"attempt=replay: {where}'s stored failed attempt is correct by the current verifier: "
                "the failure set is stale, rebuild it"
            )

    async def _generate(
        self,
        traj: _Trajectory,
        kind: str,
        request_id: str,
        sampling_params: dict[str, Any],
        turn_cap: Optional[int],
        metrics: dict[str, float],
    ) -> Optional[Turn]:
        """Generate one assistant turn into ``traj`` and record it in ``traj.turns``; None when the budget is spent."""
        budget = self.response_length - len(traj.mask)
        max_tokens = budget if turn_cap is None else min(turn_cap, budget)
        if max_tokens <= 0:
            return None
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=traj.token_ids,
                sampling_params={**sampling_params, "max_tokens": max_tokens},
            )
        self._merge_server_fields(traj, output, metrics)
        # Servers may ignore max_tokens by a token or two (stop strings); never let the budget overflow.
        token_ids = list(output.token_ids[:max_tokens])
        assistant_logprobs = list(output.log_probs[:max_tokens]) if output.log_probs else None
        if not traj.mask and assistant_logprobs is not None:
            traj.logprobs = []  # track rollout logprobs iff the server returns them
        merge, traj.mask, traj.logprobs = await self.ct_merge_assistant_token(
            traj.token_ids,
            token_ids,
            traj.mask,
            traj.logprobs,
            assistant_logprobs=assistant_logprobs if traj.logprobs is not None else None,
        )
        traj.token_ids = merge.token_ids
        num_tokens = merge.appended_token_count
        if kind not in self.trained_turns and num_tokens:
            # The builder marks every generated token as trainable; only reflections are (trained_turns).
            traj.mask[-num_tokens:] = [0] * num_tokens
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        traj.messages.append({"role": "assistant", "content": text})
        turn = Turn(kind=kind, text=text, correct=None, start=len(traj.mask) - num_tokens, num_tokens=num_tokens)
        traj.turns.append(turn)
        return turn

    @staticmethod
    def _merge_server_fields(traj: _Trajectory, output: TokenOutput, metrics: dict[str, Any]) -> None:
        """Carry what the server sent beside the tokens, merged across turns as tool_agent_loop does.

        The first turn's fields are kept whole (``min_global_steps``: the weights the trajectory started
        on); later turns move ``max_global_steps`` forward and add up the spec-decode counters.
        ``num_preempted`` is -1 when the server does not report it, like verl's own loops.
        """
        preempted = output.num_preempted
        if "num_preempted" not in metrics:
            metrics["num_preempted"] = preempted if preempted is not None else -1
        else:
            metrics["num_preempted"] += preempted or 0
        if not traj.server_fields:
            traj.server_fields.update(output.extra_fields)
        else:
            if output.extra_fields.get("max_global_steps"):
                traj.server_fields["max_global_steps"] = output.extra_fields["max_global_steps"]
            for key in SPEC_DECODE_EXTRA_KEYS:
                if key in output.extra_fields and key in traj.server_fields:
                    traj.server_fields[key] = int(traj.server_fields[key]) + int(output.extra_fields[key])
        if output.routed_experts is not None:
            traj.routed_experts = output.routed_experts

    async def _add_user_turn(self, traj: _Trajectory, content: str) -> bool:
        """Append a user turn (mask 0) if, after it, at least one response token still fits."""
        previous = list(traj.messages)
        messages = previous + [{"role": "user", "content": content}]
        if self.turn_boundary is None:
            token_ids, mask, logprobs = traj.token_ids, traj.mask, traj.logprobs
            end_of_turn = template_end_of_turn_id(
                self.tokenizer, tuple(sorted(self.apply_chat_template_kwargs.items()))
            )
            if end_of_turn is not None and token_ids[-1] != end_of_turn:
                # A turn cut short by its token cap: the template closes it (mask 0, logprob 0); verl's builder
                # would append the user turn straight after the last generated token.
                token_ids, mask = token_ids + [end_of_turn], mask + [0]
                logprobs = None if logprobs is None else logprobs + [0.0]
            merge, mask, logprobs = await self.ct_merge_context_msg(previous, messages, token_ids, mask, logprobs)
        else:
            merge = await self.loop.run_in_executor(None, self._merge_user_turn_from_template, traj.token_ids, content)
            mask, logprobs = self.continuous_token_builder.align_response_metadata(merge, traj.mask, traj.logprobs)
        if len(mask) >= self.response_length:
            return False
        traj.token_ids, traj.mask, traj.logprobs, traj.messages = merge.token_ids, mask, logprobs, messages
        return True

    def _merge_user_turn_from_template(self, token_ids: list[int], content: str) -> MergeResult:
        """Append a user turn as the chat template renders it after the assistant turn that ``token_ids`` ends with.

        A turn the model closed keeps its end-of-turn token as generated; one cut short by its token cap is
        closed with the template's end-of-turn token (inserted: mask 0, logprob 0), as the template renders it.
        """
        boundary = self.turn_boundary
        closing = [] if token_ids and token_ids[-1] == boundary.end_of_turn_id else [boundary.end_of_turn_id]
        user_turn_ids = boundary.user_turn_ids(content)
        return MergeResult(
            token_ids=list(token_ids) + closing + user_turn_ids,
            appended_token_count=len(user_turn_ids),
            kind="context",
            inserted_token_ids=closing,
        )


def task_packages(config) -> tuple[str, ...]:
    """The packages outside ``reward_fns`` whose task modules the recipe allows a dotted ``data_source`` to name
    (``reward.custom_reward_function.reward_kwargs.task_packages``, which verl's reward manager passes on too)."""
    return tuple(OmegaConf.select(config, TASK_PACKAGES_KEY, default=None) or ())


def _which_row(row: dict[str, Any]) -> str:
    """``row 12 (countdown)``: the dataset row, for error messages (verl passes ``extra_info.index`` as ``index``)."""
    index = row.get("index", (row.get("extra_info") or {}).get("index", "?"))
    return f"row {index} ({row.get('data_source')})"


class _StoredAttemptServer:
    """verl's server-manager interface for one trajectory: answers the first ``generate`` call with a stored
    attempt's ids (nothing is generated, so no weight version or preemption to report; logprobs are 0.0, as on
    any other mask-0 token), then passes every later call to ``server``."""

    def __init__(self, server: Any, token_ids: list[int]):
        self.server = server
        self.token_ids: Optional[list[int]] = token_ids

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        if self.token_ids is None:
            return await self.server.generate(
                request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs
            )
        token_ids, self.token_ids = self.token_ids, None
        return TokenOutput(
            token_ids=token_ids,
            log_probs=[0.0] * len(token_ids) if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            num_preempted=0,
        )
