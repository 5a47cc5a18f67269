"""The embedded tiny model and the batched transformers backend, with real generation on CPU."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_reflect import data
from verl_reflect.commands.backends import make_backend
from verl_reflect.commands.errors import UserError
from verl_reflect.cpu import tiny
from verl_reflect.cpu.generation import HFBackend, Sampling

PROMPTS = [
    "Using the numbers [3, 7, 25, 50], create an equation that equals 81.",
    "hi",
    "The quick brown fox jumps over the lazy dog and again and again",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
]
GREEDY = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


# ----------------------------------------------------------------------------- tokenizer and model


def test_newline_is_one_token(tiny_tokenizer):
    # verl's QwenContinuousTokenBuilder refuses tokenizers where "\n" is not a single token.
    assert len(tiny_tokenizer.encode("\n", add_special_tokens=False)) == 1


def test_chat_template_renders_chatml_exactly(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": "<answer> 5 </answer>"},
        {"role": "user", "content": "Again."},
    ]
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<answer> 5 </answer><|im_end|>\n"
        "<|im_start|>user\nAgain.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tiny_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=False)
    assert without == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 + 3?<|im_end|>\n"


def test_special_tokens_and_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    for special in tiny.SPECIAL_TOKENS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = 'Using [3, 7]:\n<answer> (3 + 7) * 25 </answer>\n\n  {"a": [1, -2.5e3]}\tx ~`!@#$%^&|\\?'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert 500 <= len(tok) <= 2048


def test_tokenizer_build_is_deterministic(tiny_tokenizer):
    assert tiny.build_tokenizer().get_vocab() == tiny_tokenizer.get_vocab()


def test_saved_model_loads_as_qwen2(tiny_model_dir, tiny_tokenizer):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tok) == len(tiny_tokenizer)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = "<|im_start|>user\nUsing the numbers [1, 2]<|im_end|>\n"
    assert tok.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(text, add_special_tokens=False)
    rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert rendered == "<|im_start|>user\nx<|im_end|>\n"


def test_default_model_dir_is_cached(tmp_path):
    first = tiny.default_model_dir(tmp_path)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert tiny.default_model_dir(tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dir left behind
    assert first.name.startswith("tiny-qwen2-")


# ----------------------------------------------------------------------------- HFBackend


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFBackend(tiny_model_dir, device="cpu")


@pytest.fixture
def batch_sizes(hf, monkeypatch) -> list[int]:
    """The size of every batch ``hf`` decodes while the test runs."""
    sizes, decode = [], hf.decode

    def recording_decode(prompts, samplings):
        sizes.append(len(prompts))
        return decode(prompts, samplings)

    monkeypatch.setattr(hf, "decode", recording_decode)
    return sizes


def _chat_ids(tok, content: str) -> list[int]:
    encoded = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return list(encoded["input_ids"])


def _reference_greedy(hf: HFBackend, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Unbatched, unpadded ``model.generate``: what batched left-padded decoding must reproduce."""
    ids = torch.tensor([prompt])
    out = hf.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(hf.eos_ids),
        pad_token_id=hf.pad_id,
    )
    return out[0, len(prompt) :].tolist()


def _gather(hf: HFBackend, prompts: list[list[int]], params: list[dict]) -> list:
    async def main():
        return await asyncio.gather(
            *[hf.generate(f"r{i}", prompt_ids=p, sampling_params=s) for i, (p, s) in enumerate(zip(prompts, params))]
        )

    return asyncio.run(main())


def test_batched_greedy_matches_unbatched_generate(hf, batch_sizes):
    prompts = [_chat_ids(hf.tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: real left padding
    outs = _gather(hf, prompts, [{**GREEDY, "max_tokens": 12}] * len(prompts))
    assert batch_sizes == [len(prompts)]
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == _reference_greedy(hf, prompt, 12)
        assert out.stop_reason == "completed"
    # Greedy is deterministic across calls and batch compositions.
    again = _gather(hf, prompts[::-1], [{**GREEDY, "max_tokens": 12}] * len(prompts))
    assert [o.token_ids for o in again[::-1]] == [o.token_ids for o in outs]
    # A random model still produces varied text: the comparison above is not trivially "same token forever".
    assert len({t for o in outs for t in o.token_ids}) > 5


def test_max_tokens_and_logprobs(hf):
    prompts = [_chat_ids(hf.tokenizer, p) for p in PROMPTS[1:3]]
    sampled_params = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "max_tokens": 7, "logprobs": True}
    params = [{**GREEDY, "max_tokens": 3}, sampled_params]
    short, sampled = _gather(hf, prompts, params)
    eos = hf.tokenizer.eos_token_id
    assert len(short.token_ids) == 3 or (short.token_ids[-1] == eos and len(short.token_ids) < 3)
    assert 1 <= len(sampled.token_ids) <= 7
    for out in (short, sampled):
        assert len(out.log_probs) == len(out.token_ids)
        assert all(math.isfinite(lp) and lp <= 0 for lp in out.log_probs)
    # Greedy logprob is log_softmax of the model's own logits at the chosen token.
    logits = hf.model(torch.tensor([prompts[0]])).logits[0, -1]
    assert short.log_probs[0] == pytest.approx(logits.log_softmax(-1)[short.token_ids[0]].item(), abs=1e-4)
    no_lp = _gather(hf, prompts[:1], [{**GREEDY, "logprobs": False, "max_new_tokens": 2}])[0]
    assert no_lp.log_probs is None and len(no_lp.token_ids) <= 2


def test_seeded_sampling_is_reproducible_and_batch_independent(hf):
    prompt = _chat_ids(hf.tokenizer, PROMPTS[0])
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 10, "seed": 7}
    alone = _gather(hf, [prompt], [params])[0]
    with_others = _gather(hf, [prompt, prompt], [params, {**params, "seed": 8}])
    assert with_others[0].token_ids == alone.token_ids
    assert with_others[1].token_ids != alone.token_ids


def test_repetition_penalty_changes_greedy_output(hf):
    prompt = _chat_ids(hf.tokenizer, PROMPTS[2])
    plain = _gather(hf, [prompt], [{**GREEDY, "max_tokens": 20}])[0]
    penalised = _gather(hf, [prompt], [{**GREEDY, "max_tokens": 20, "repetition_penalty": 5.0}])[0]
    assert penalised.token_ids != plain.token_ids
    # A heavy penalty forbids (nearly) every repeat.
    assert len(set(penalised.token_ids)) >= len(penalised.token_ids) - 1


def test_concurrent_requests_share_forward_passes(hf):
    calls = []

    def count(module, args, kwargs, out):
        calls.append(kwargs["input_ids"].shape[0])

    handle = hf.model.register_forward_hook(count, with_kwargs=True)
    try:
        prompts = [_chat_ids(hf.tokenizer, f"{p} {i}") for i, p in enumerate(PROMPTS * 2)]
        outs = _gather(hf, prompts, [{**GREEDY, "max_tokens": 5}] * len(prompts))
    finally:
        handle.remove()
    # 8 trajectories x 5 tokens: one batched forward per step, not one per trajectory.
    assert len(calls) <= 5 and calls[0] == 8
    assert all(len(o.token_ids) <= 5 for o in outs)


def test_different_sampling_params_are_batched_separately(hf, batch_sizes):
    prompt = _chat_ids(hf.tokenizer, "hi")
    _gather(hf, [prompt] * 4, [{**GREEDY, "max_tokens": 2}] * 2 + [{"temperature": 0.7, "max_tokens": 2}] * 2)
    assert sorted(batch_sizes) == [2, 2]


def test_eos_is_included_and_no_padding_leaks(hf):
    """Force EOS on batch row 0 at its third token: that row stops there, the other runs on unchanged."""
    eos = hf.tokenizer.eos_token_id
    calls = []

    def force_eos(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            output = output.clone()
            output[0, -1, eos] = 1e4
        return output

    prompts = [_chat_ids(hf.tokenizer, PROMPTS[0]), _chat_ids(hf.tokenizer, PROMPTS[3])]
    references = [_reference_greedy(hf, p, 9) for p in prompts]
    handle = hf.model.lm_head.register_forward_hook(force_eos)
    try:
        # Requests join the queue in call order, so prompts[0] is batch row 0.
        stopped, other = _gather(hf, prompts, [{**GREEDY, "max_tokens": 9}] * 2)
    finally:
        handle.remove()
    assert stopped.token_ids == references[0][:2] + [eos]
    assert len(stopped.log_probs) == 3 and stopped.log_probs[-1] == pytest.approx(0.0, abs=1e-3)
    assert other.token_ids == references[1]


def test_natural_eos_from_the_tiny_model(hf):
    """Without tricks some greedy continuation ends on <|im_end|>; it is kept, as vLLM keeps it."""
    eos = hf.tokenizer.eos_token_id
    prompts = [
        list(hf.tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)["input_ids"])
        for row in data.countdown_rows(16, seed=0, split="test")
    ]
    outs = _gather(hf, prompts, [{**GREEDY, "max_tokens": 32}] * len(prompts))
    ended = [o.token_ids for o in outs if o.token_ids and o.token_ids[-1] == eos]
    assert ended, "expected at least one greedy continuation to stop on <|im_end|>"
    assert all(ids.count(eos) == 1 and len(ids) < 32 for ids in ended)
    assert all(len(o.token_ids) == 32 for o in outs if eos not in o.token_ids)
    for prompt, out in zip(prompts, outs):
        if out.token_ids[-1] == eos:
            assert out.token_ids == _reference_greedy(hf, prompt, 32)  # generate() stops there too


def test_top_k_top_p_and_their_logprobs():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    top2 = Sampling(max_tokens=1, temperature=1.0, top_k=2)
    tokens, logp = HFBackend._sample(logits, top2, None, gens)
    assert set(tokens.tolist()) == {2, 3}  # only the two best, both drawn
    kept = torch.tensor([2.0, 3.0]).log_softmax(-1)  # renormalised over what top-k kept
    assert torch.allclose(logp, kept[tokens - 2])
    # p(3) = 0.64 already covers top_p = 0.5: nothing else may be drawn, and its logprob is 0.
    nucleus = Sampling(max_tokens=1, temperature=1.0, top_p=0.5)
    tokens, logp = HFBackend._sample(logits, nucleus, None, gens)
    assert set(tokens.tolist()) == {3} and torch.allclose(logp, torch.zeros(200))
    # Greedy ignores the generators and reports the plain log-softmax.
    greedy = Sampling(max_tokens=1, temperature=0.0)
    tokens, logp = HFBackend._sample(logits[:1], greedy, None, gens[:1])
    assert tokens.tolist() == [3] and logp.item() == pytest.approx(logits[0].log_softmax(-1)[3].item())


def test_missing_max_tokens_is_an_error(hf):
    with pytest.raises(ValueError, match="max_tokens"):
        _gather(hf, [[1, 2, 3]], [{"temperature": 0}])


# ----------------------------------------------------------------------------- make_backend


def test_make_backend_gives_transformers_or_the_recipes_servers(tiny_model_dir):
    assert isinstance(make_backend(tiny_model_dir), HFBackend)
    assert isinstance(make_backend(tiny_model_dir, "hf"), HFBackend)
    with pytest.raises(ValueError, match="pass the composed recipe"):  # verl's servers are the recipe's rollout
        make_backend(tiny_model_dir, "verl")


def test_make_backend_errors(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="does not exist") as err:
        make_backend(tmp_path / "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no config.json"):
        make_backend(tmp_path)
    with pytest.raises(UserError, match="unknown backend"):
        make_backend(tiny_model_dir, "tensorrt")
