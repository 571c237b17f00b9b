"""Generation with an encoder-decoder: the prompt encoded once, the decoder started from <|endoftext|>,
cached decoding == recomputation, seeds, stops, the end of its context, and `gpt generate` / `gpt chat`."""

import json
from pathlib import Path

import pytest
import torch

from gptcli.config import ModelConfig, SampleConfig
from gptcli.generation import Engine
from gptcli.generation.decoder import Decoder
from gptcli.models import build_model
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer
from tests.conftest import assert_one_line_error, run_cli

EOT = 256  # byte-level: ids 0..255 are bytes, so any prompt encodes
GREEDY = dict(temperature=0.0, ignore_eos=True)


def tiny_encdec(seed=0, block_size=32, pos_emb="learned", **shape):
    """A random encoder-decoder over bytes (+ <|endoftext|>); its head untied and scaled up, so that
    a greedy decoder says varied things (a random tied one repeats a token)."""
    torch.manual_seed(seed)
    tokenizer = BPETokenizer([], special_tokens={"<|endoftext|>": EOT})
    config = dict(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_enc_layer=2, n_head=2)
    config.update(n_embd=32, dropout=0.0, tie_weights=False, pos_emb=pos_emb, **shape)
    model = build_model(ModelConfig(arch="encdec", **config)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.lm_head.weight[EOT] = 0  # never a greedy pick: samples run their length
    return model, tokenizer


def save_tiny_encdec_checkpoint(directory: Path, **shape) -> Path:
    model, tokenizer = tiny_encdec(**shape)
    return ckpt.save_checkpoint(directory, model, model.config, tokenizer, {"step": 1})


@torch.no_grad()
def greedy_by_recomputation(model, prompt: list[int], n_new: int) -> list[int]:
    """The reference: at every step the whole prompt and target so far through the model, no cache."""
    src, target = torch.tensor([prompt[-model.config.block_size :]]), [EOT]
    for _ in range(min(n_new, model.config.block_size)):
        logits, _ = model(torch.tensor([target]), src=src)
        target.append(int(logits[0, -1].argmax()))
    return target[1:]


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "sinusoidal"])
def test_greedy_generation_equals_recomputation(pos_emb):
    model, tokenizer = tiny_encdec(pos_emb=pos_emb)
    engine = Engine(model, tokenizer)
    result = engine.generate("Translate me", SampleConfig(max_new_tokens=20, **GREEDY))
    prompt = tokenizer.encode("Translate me")
    assert result.samples[0].ids == greedy_by_recomputation(model, prompt, 20)
    assert result.samples[0].finish_reason == "length"
    assert engine.start("Translate me", SampleConfig(max_new_tokens=20)).context_note is None


def test_a_full_decoder_context_ends_the_sample_and_a_long_prompt_keeps_its_end():
    model, tokenizer = tiny_encdec(block_size=16)
    engine = Engine(model, tokenizer)
    prompt = list(range(40, 80))  # 40 tokens: more than the context of 16
    run = engine.start(prompt, SampleConfig(max_new_tokens=50, **GREEDY))
    assert "last 16" in run.context_note and "at most 16 tokens" in run.context_note
    result = engine.generate(prompt, SampleConfig(max_new_tokens=50, **GREEDY))
    assert result.samples[0].ids == greedy_by_recomputation(model, prompt, 16)
    assert len(result.samples[0].ids) == 16 and result.samples[0].finish_reason == "length"


def test_seeded_samples_are_a_reproducible_batch():
    model, tokenizer = tiny_encdec()
    engine = Engine(model, tokenizer)
    config = SampleConfig(
        num_samples=3, max_new_tokens=12, temperature=1.0, top_k=50, seed=7, ignore_eos=True
    )
    first, again = engine.generate("abc", config), engine.generate("abc", config)
    assert [s.ids for s in first.samples] == [s.ids for s in again.samples]
    assert len({tuple(s.ids) for s in first.samples}) > 1  # one prompt, rows sampled apart
    other = engine.generate("abc", config.model_copy(update={"seed": 8}))
    assert [s.ids for s in other.samples] != [s.ids for s in first.samples]


def test_end_of_text_ends_a_sample_and_stop_strings_cut_it():
    model, tokenizer = tiny_encdec()
    engine = Engine(model, tokenizer)
    text = engine.generate("hello", SampleConfig(max_new_tokens=10, **GREEDY)).samples[0].text
    stop = text[3:5]
    cut = engine.generate("hello", SampleConfig(max_new_tokens=10, stop=[stop], **GREEDY)).samples[0]
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]
    with torch.no_grad():
        model.lm_head.weight[EOT] = 100 * model.lm_head.weight[ord("x")]  # end-of-text wins now
    ended = engine.generate("hello", SampleConfig(max_new_tokens=10, temperature=0.0)).samples[0]
    assert ended.finish_reason == "eos" and ended.ids == []


def test_decoder_encode_pads_prompts_of_different_lengths():
    model, _ = tiny_encdec(pos_emb="rope")
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    together = Decoder(model, 3, 32).encode(prompts, EOT)
    for b, prompt in enumerate(prompts):
        alone = Decoder(model, 1, 32).encode([prompt], EOT)
        torch.testing.assert_close(together[b], alone[0], atol=1e-5, rtol=1e-5)


def test_compiled_step_equals_eager():
    """torch.compile of the fixed-shape step reads the whole cross-attention buffer under the mask."""
    model, _ = tiny_encdec(pos_emb="rope", block_size=16)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    eager, compiled = Decoder(model, 2, 16), Decoder(model, 2, 16, compile=True)
    a, b = eager.encode(prompts, EOT), compiled.encode(prompts, EOT)
    for _ in range(4):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        nxt = a.argmax(-1)
        a, b = eager.step(nxt), compiled.step(nxt)


# ---------------------------------------------------------------------------------------------
# the commands


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_encdec_checkpoint(tmp_path_factory.mktemp("encdec") / "tiny")


def test_gpt_generate_json_and_stop(checkpoint):
    args = ("generate", "-c", str(checkpoint), "-p", "Hello there", "--temperature", "0", "--max-new-tokens")
    result = run_cli(*args, "12", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    model, tokenizer = tiny_encdec()
    expected = greedy_by_recomputation(model, tokenizer.encode("Hello there"), 12)
    assert out["samples"][0]["ids"] == expected and out["prompt_tokens"] == len("Hello there")
    text = out["samples"][0]["text"]
    stopped = json.loads(run_cli(*args, "12", "--json", "--stop", text[4:6]).stdout)
    assert stopped["samples"][0] == {**stopped["samples"][0], "text": text[:4], "finish_reason": "stop"}
    streamed = run_cli(*args, "12")
    assert streamed.exit_code == 0 and streamed.stdout == "Hello there" + text + "\n"


def test_gpt_generate_past_the_decoder_context_notes_it(checkpoint):
    result = run_cli("generate", "-c", str(checkpoint), "-p", "hi", "--max-new-tokens", "40", "--json")
    out = json.loads(result.stdout)
    assert "at most 32 tokens" in out["context_note"]
    assert len(out["samples"][0]["ids"]) <= 32


def test_gpt_chat_says_an_encoder_decoder_has_no_chat_template(checkpoint):
    result = run_cli("chat", "-c", str(checkpoint), input="Hello\n")
    assert_one_line_error(result, "encoder-decoder", "gpt generate", "/v1/completions")
