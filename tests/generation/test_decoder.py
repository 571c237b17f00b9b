"""The decoder: fixed-shape decode steps == the growing KV cache; rows at their own positions;
compiled == eager; weights cast once for bf16."""

import time

import pytest
import torch
from test_engine import GREEDY, assert_greedy, char_tokenizer, tiny_model

from gptcli.config import ModelConfig, SampleConfig
from gptcli.errors import GptError
from gptcli.generation import Engine
from gptcli.generation.decoder import Decoder
from gptcli.models import build_model

VARIANTS = [
    dict(),
    dict(pos_emb="rope", n_kv_head=2, window=5),
    dict(pos_emb="sinusoidal", flash=False, window=4),
    dict(pos_emb="none", n_kv_head=1, norm="rmsnorm"),
]


@torch.no_grad()
def eager_logits(model, ids):
    """Logits of every next token, the whole sequence at once, no cache: (T, V)."""
    logits, _ = model(torch.tensor([ids]))
    return logits[0]


@pytest.mark.parametrize(
    "overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "gpt2"
)
def test_decode_steps_give_the_logits_of_the_whole_sequence(overrides):
    model = tiny_model(**overrides)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    decoder = Decoder(model, batch_size=1, max_len=16)
    got = [decoder.prefill([ids[:4]])[0]]
    for token in ids[4:]:
        got.append(decoder.step(torch.tensor([token]))[0])
    expected = eager_logits(model, ids)[3:]  # the prefill's last position, then one per step
    torch.testing.assert_close(torch.stack(got), expected, atol=1e-5, rtol=1e-4)


def test_rows_at_different_positions_each_get_what_they_get_alone():
    """The continuous-batching primitive: each row of one step attends to its own history only."""
    model = tiny_model(pos_emb="rope", n_kv_head=2)
    short, long = [7, 3, 2], [1, 2, 3, 4, 5, 6, 7]
    batch = Decoder(model, batch_size=2, max_len=16)
    for row, prompt in enumerate([short, long]):  # prefill each alone, copy it into its row
        alone = Decoder(model, batch_size=1, max_len=16)
        alone.prefill([prompt])
        for layer in range(model.config.n_layer):
            batch.cache.k[layer][row] = alone.cache.k[layer][0]
            batch.cache.v[layer][row] = alone.cache.v[layer][0]
        batch.positions[row] = len(prompt)
    nxt = torch.tensor([11, 12])
    logits = batch.step(nxt)
    torch.testing.assert_close(logits[0], eager_logits(model, short + [11])[-1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], eager_logits(model, long + [12])[-1], atol=1e-5, rtol=1e-4)
    assert batch.positions.tolist() == [4, 8]


def test_an_eager_cpu_step_reads_the_cache_only_up_to_the_furthest_row(monkeypatch):
    """Keys past every row's position are nobody's yet: the step's mask (and the keys it reads)
    end at the furthest row; what the cache holds beyond changes nothing."""
    import gptcli.models.gpt as gpt

    lengths = []
    real_mask = gpt.decode_mask
    monkeypatch.setattr(gpt, "decode_mask", lambda p, n, w: lengths.append(n) or real_mask(p, n, w))
    model = tiny_model(pos_emb="rope", n_kv_head=2)
    decoder = Decoder(model, batch_size=2, max_len=16)
    first = decoder.prefill([[1, 2, 3], [4, 5, 6]])
    decoder.positions[1] = 5  # row 1 two positions further on (its keys 3, 4: whatever is there)
    for layer in range(model.config.n_layer):
        decoder.cache.k[layer][:, :, 6:] = float("nan")  # beyond every row: must never be read
        decoder.cache.v[layer][:, :, 6:] = float("nan")
    logits = decoder.step(first.argmax(-1))
    assert lengths == [6] and torch.isfinite(logits).all()


def test_compiled_decoding_equals_eager_decoding():
    """torch.compile of the whole step (fullgraph, static shapes): the same logits at every step and the
    same greedy text, through the context being full and prefilled again."""
    model = tiny_model(pos_emb="rope", n_kv_head=2, window=5)
    prompt = [3, 1, 4, 1, 5]
    eager, compiled = Decoder(model, 2, 16), Decoder(model, 2, 16, compile=True)
    assert eager.warm and not compiled.warm  # the compiled step compiles on its first call
    a, b = eager.prefill([prompt] * 2), compiled.prefill([prompt] * 2)
    for _ in range(8):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        nxt = a.argmax(-1)
        a, b = eager.step(nxt), compiled.step(nxt)
    engine = Engine(model, char_tokenizer(), compile=True)
    engine.decoders[(2, 16)] = compiled  # the engine's own for 2 rows (compiling each costs ~10 s here)
    result = engine.generate(prompt, SampleConfig(max_new_tokens=30, num_samples=2, **GREEDY))
    assert result.samples[0].ids == result.samples[1].ids
    assert_greedy(result.samples[0].ids, model, prompt)
    seeded = SampleConfig(max_new_tokens=20, num_samples=2, temperature=1.0, top_k=10, seed=3)
    again = Engine(model, char_tokenizer()).generate(prompt, seeded)
    assert [s.ids for s in engine.generate(prompt, seeded).samples] == [s.ids for s in again.samples]
    assert list(engine.decoders) == [(2, 16)]
    assert compiled.warm and result.compile_seconds == 0  # compiled above, before the engine's calls


def test_a_compiled_cpu_step_reads_a_power_of_two_of_the_cache_compiled_once_each():
    """Compiled, a step reads a fixed number of cache positions: on a CPU the first 64 (or 128, ...: a
    power of two past every row, at most the cache) rather than the whole buffer, each length compiled
    once, with the eager step's logits."""
    model = tiny_model(block_size=128)
    prompt = list(range(1, 40)) * 2  # 78 tokens: steps read 64 positions, then the whole cache of 100
    eager, compiled = Decoder(model, 1, 100), Decoder(model, 1, 100, compile=True)
    a, b = eager.prefill([prompt[:60]]), compiled.prefill([prompt[:60]])
    assert not compiled.warm  # the next step compiles
    for i, token in enumerate(prompt[60:]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
        a, b = eager.step(torch.tensor([token])), compiled.step(torch.tensor([token]))
        assert compiled.compiled_lengths == ({64} if i < 4 else {64, 100})
        assert compiled.warm == (i != 3)  # after the step at 63 (the last of 64 positions), 100 compiles
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_the_first_call_of_a_compiled_step_is_timed_apart_from_the_decoding(monkeypatch):
    """tok/s is the decoding's: the step's first call, where torch.compile compiles it (seconds),
    is reported as compile_seconds; a slow first step stands in for compiling here."""
    engine = Engine(tiny_model(), char_tokenizer())
    config = SampleConfig(max_new_tokens=10, **GREEDY)
    decoder = engine.decoder(1, 2 + 10)  # the one generate([1, 2], config) takes
    decoder.compiled = True  # as a compiled decoder before its first step (its step stays eager)
    step = decoder.step

    def compiling_step(ids):
        if not decoder.warm:
            time.sleep(0.3)
        return step(ids)

    monkeypatch.setattr(decoder, "step", compiling_step)
    first = engine.generate([1, 2], config)
    assert first.compile_seconds >= 0.3 and first.seconds > first.compile_seconds
    assert first.tokens_per_second == pytest.approx(10 / (first.seconds - first.compile_seconds))
    assert first.to_json()["compile_seconds"] == round(first.compile_seconds, 4)
    again = engine.generate([1, 2], config)
    assert again.compile_seconds == 0 and again.samples[0].ids == first.samples[0].ids


def test_the_engine_reuses_its_decoder_and_cache_across_calls():
    engine = Engine(tiny_model(), char_tokenizer())
    config = SampleConfig(max_new_tokens=5, **GREEDY)
    first = engine.generate([1, 2], config)
    decoder = engine.decoder(1, 7)
    assert engine.generate([1, 2], config).samples[0].ids == first.samples[0].ids
    assert engine.decoder(1, 7) is decoder and len(engine.decoders) == 1


def test_bf16_casts_the_weights_once_and_generates():
    model = tiny_model()
    engine = Engine(model, char_tokenizer(), precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert engine.decoder(1, 10).cache.k[0].dtype == torch.bfloat16
    result = engine.generate([1, 2, 3], SampleConfig(max_new_tokens=8, **GREEDY))
    assert len(result.samples[0].ids) == 8


def test_compile_needs_a_fixed_shape_decode_step():
    lstm = build_model(ModelConfig(arch="lstm", vocab_size=40, block_size=16, n_layer=1, n_embd=16))
    with pytest.raises(GptError, match="fixed-shape decode step"):
        Decoder(lstm, 1, 16, compile=True)
    decoder = Decoder(lstm, 1, 16)  # eager: through the recurrent state
    decoder.prefill([[1, 2, 3]])
    assert decoder.step(torch.tensor([4])).shape == (1, 40)


def test_a_decode_step_takes_one_token_per_row_and_a_cache():
    model = tiny_model()
    with pytest.raises(GptError, match="one token per row"):
        model(torch.tensor([[1, 2]]), cache=model.new_cache(1), positions=torch.tensor([0]))
