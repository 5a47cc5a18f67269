"""What a chat template renders between a generated assistant turn and the next generation, read off the template.

verl picks its continuous-token builder from ``config.json`` ``model_type``. Families without a builder of
their own (``llama``, ``phi3``, ``mistral``, ...) get the default one, which renders an appended user turn in
isolation: it drops the separator the template puts after the end-of-turn token (ChatML on a llama model:
``<|im_end|><|im_start|>user`` where the template renders ``<|im_end|>\\n<|im_start|>user``), and fails outright
on templates that end every render with ``eos_token`` (Phi-3.5) or insist on alternating roles (Mistral).

:class:`TemplateTurnBoundary` instead renders probe conversations shaped like the task prompts (a system
message, then a user turn) and takes from them, with no table of model names:

* the end-of-turn token: the first special token the template renders after an assistant's words;
* for each user turn, the tokens that follow an assistant's end-of-turn up to the next generation:
  separator, the user turn, the generation prompt.

At construction it checks that a two-round probe conversation renders as exactly the stream the loop builds
(prompt, then assistant turn as written + user turn, twice), with and without a system message. A template that
rewrites earlier turns (moves the system message to the last user turn, strips reasoning from past assistant
turns, ...) fails that check, and the loop refuses to start rather than train on a context the model never sees.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from verl.utils.tokenizer.chat_template import apply_chat_template
from verl.utils.tokenizer.tokenizer import normalize_token_ids

# Probe conversation. The assistant's words carry a reasoning block so that a template which strips reasoning
# from earlier turns shows itself.
_PROBE_SYSTEM = {"role": "system", "content": "Probe system message."}
_PROBE_USER = {"role": "user", "content": "Probe question?"}
_PROBE_ASSISTANT = {"role": "assistant", "content": "<think>\nProbe reasoning.\n</think>\n\nProbe answer."}
_PROBE_FOLLOW_UP = "Probe follow-up."


class InexactChatTemplateError(ValueError):
    """The chat template cannot be rendered as one append-only token stream of generated and template tokens."""


class TemplateTurnBoundary:
    """Token ids a chat template renders around a user turn appended after a generated assistant turn.

    Derived once per tokenizer (see :func:`turn_boundary_for`); :meth:`user_turn_ids` is cached per content.
    """

    def __init__(self, tokenizer: Any, *, model_type: str | None, chat_template_kwargs: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._user_turn_cache: dict[str, list[int]] = {}
        self._special_ids = _special_ids(tokenizer)

        # Both prompt shapes are checked; the system-message one (every task's) is the one used at run time.
        self.end_of_turn_id, self._prompt_ids, self._assistant_ids, user_turn_ids = self._probe_shape(
            [_PROBE_SYSTEM, _PROBE_USER]
        )
        end_of_turn_id, _, _, user_turn_ids_without_system = self._probe_shape([_PROBE_USER])
        if end_of_turn_id != self.end_of_turn_id or user_turn_ids != user_turn_ids_without_system:
            self._fail("it closes turns or renders user turns differently with and without a system message")

    def user_turn_ids(self, content: str) -> list[int]:
        """What the template renders after an assistant's end-of-turn token for a user turn ``content``.

        The separator after the end-of-turn, the user turn, and the generation prompt: all template tokens.
        """
        if content not in self._user_turn_cache:
            head = [_PROBE_SYSTEM, _PROBE_USER]
            rendered = self._render(head + [_PROBE_ASSISTANT, {"role": "user", "content": content}], True)
            closed = self._prompt_ids + self._assistant_ids
            if rendered[: len(closed)] != closed:
                self._fail("appending a user turn changes how earlier turns render")
            self._user_turn_cache[content] = rendered[len(closed) :]
        return list(self._user_turn_cache[content])

    def _probe_shape(self, head: list[dict[str, Any]]) -> tuple[int, list[int], list[int], list[int]]:
        """(end-of-turn id, prompt ids, assistant turn ids, user turn ids) for prompts shaped like ``head``."""
        prompt_ids = self._render(head, True)
        assistant_turn = self._render(head + [_PROBE_ASSISTANT], False)
        if assistant_turn[: len(prompt_ids)] != prompt_ids:
            self._fail("adding an assistant turn changes how the turns before it render")
        after_prompt = assistant_turn[len(prompt_ids) :]
        end = next((i for i, token_id in enumerate(after_prompt) if token_id in self._special_ids), None)
        if end is None:
            self._fail("no special token closes an assistant turn")
        assistant_ids = after_prompt[: end + 1]
        written = self.tokenizer.decode(assistant_ids[:-1], skip_special_tokens=False)
        if written.split() != _PROBE_ASSISTANT["content"].split():
            self._fail(f"it renders an assistant turn other than as written ({written!r})")

        follow_up = {"role": "user", "content": _PROBE_FOLLOW_UP}
        one_round = self._render(head + [_PROBE_ASSISTANT, follow_up], True)
        if one_round[: len(prompt_ids) + len(assistant_ids)] != prompt_ids + assistant_ids:
            self._fail("appending a user turn changes how earlier turns render")
        user_turn_ids = one_round[len(prompt_ids) + len(assistant_ids) :]
        two_rounds = self._render(head + [_PROBE_ASSISTANT, follow_up, _PROBE_ASSISTANT, follow_up], True)
        if two_rounds != prompt_ids + (assistant_ids + user_turn_ids) * 2:
            self._fail("a second round renders earlier turns differently")
        return after_prompt[end], prompt_ids, assistant_ids, user_turn_ids

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        try:
            rendered = apply_chat_template(
                self.tokenizer,
                messages,
                tokenize=True,
                add_generation_prompt=add_generation_prompt,
                **self.chat_template_kwargs,
            )
        except Exception as exc:  # a template that rejects the probe cannot be checked, so cannot be trusted
            self._fail(f"it fails to render a system/user/assistant/user conversation ({exc})")
        return normalize_token_ids(rendered)

    def _fail(self, reason: str):
        raise InexactChatTemplateError(
            f"reflect_retry: the chat template of model_type={self.model_type!r} cannot be followed token for token: "
            f"{reason}. Reflections would be trained on a context the model never sees; use a chat template that "
            "renders each turn once and appends the next."
        )


def _special_ids(tokenizer: Any) -> set[int]:
    special_ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    special_ids |= {int(i) for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    return special_ids


@functools.lru_cache(maxsize=None)
def template_end_of_turn_id(tokenizer: Any, chat_template_kwargs: tuple = ()) -> int | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>`` for Qwen), or None.

    For the families verl has a builder of its own: those builders close a turn only when the model did, so a
    turn cut short by its token cap is followed directly by the next user turn, which the template never renders.
    ``chat_template_kwargs`` is ``tuple(sorted(kwargs.items()))`` (cached per tokenizer and kwargs).
    """
    kwargs = dict(chat_template_kwargs)
    try:
        prompt = normalize_token_ids(
            apply_chat_template(tokenizer, [_PROBE_USER], tokenize=True, add_generation_prompt=True, **kwargs)
        )
        turn = normalize_token_ids(
            apply_chat_template(
                tokenizer, [_PROBE_USER, _PROBE_ASSISTANT], tokenize=True, add_generation_prompt=False, **kwargs
            )
        )
    except Exception:  # noqa: BLE001 - a template that rejects the probe: leave verl's builder as it is
        return None
    special_ids = _special_ids(tokenizer)
    return next((token_id for token_id in turn[len(prompt) :] if token_id in special_ids), None)


_BOUNDARIES: dict[tuple, TemplateTurnBoundary] = {}
_BOUNDARIES_LOCK = threading.Lock()


def turn_boundary_for(
    tokenizer: Any, *, model_type: str | None, chat_template_kwargs: dict[str, Any] | None = None
) -> TemplateTurnBoundary:
    """The tokenizer's :class:`TemplateTurnBoundary`, derived on first use and kept for the process.

    A fresh agent loop is built per trajectory; the template probes run once per tokenizer, not per trajectory.
    Raises :class:`InexactChatTemplateError` (every time, so every trajectory fails) for a template that cannot
    be followed exactly.
    """
    kwargs = dict(chat_template_kwargs or {})
    key = (id(tokenizer), getattr(tokenizer, "chat_template", None), repr(sorted(kwargs.items())), model_type)
    with _BOUNDARIES_LOCK:
        boundary = _BOUNDARIES.get(key)
        if boundary is None or boundary.tokenizer is not tokenizer:
            boundary = TemplateTurnBoundary(tokenizer, model_type=model_type, chat_template_kwargs=kwargs)
            _BOUNDARIES[key] = boundary
    return boundary


# verl logs this from ``infer_continuous_token_model_family`` (``utils/tokenizer/continuous_token_wiring.py``) each time
# a builder is made for a model_type without one of its own: once per trajectory, since verl builds an agent loop per
# trajectory (32 identical lines for 32 rows). The loop handles those families itself (``TemplateTurnBoundary``), so
# once per process and model_type says all there is to say.
DEFAULT_BUILDER_WARNING = "No model-specific Continuous Token builder is registered"
_WIRING_LOGGER = "verl.utils.tokenizer.continuous_token_wiring"


class _DefaultBuilderWarningOnce(logging.Filter):
    """Drops repeats of verl's default-builder warning (same model_type and fallback); every other record passes."""

    def __init__(self):
        super().__init__()
        self._seen: set = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(DEFAULT_BUILDER_WARNING)):
            return True
        key = tuple(map(str, record.args)) if isinstance(record.args, tuple) else str(record.args)
        with self._lock:
            first = key not in self._seen
            self._seen.add(key)
        return first


def warn_default_builder_once() -> None:
    """Install the filter on verl's logger, once per process (idempotent: a filter on the logger itself, so it holds
    whatever level or handlers verl sets later)."""
    logger = logging.getLogger(_WIRING_LOGGER)
    if not any(type(f).__name__ == _DefaultBuilderWarningOnce.__name__ for f in logger.filters):
        logger.addFilter(_DefaultBuilderWarningOnce())


warn_default_builder_once()  # every process that runs the loop imports this module (the loop, the commands)
