"""The generation engine: KV cache == recomputation, seeds, top-k/top-p sets, stops, streaming."""

import pytest
import torch

from gptcli.config import ModelConfig, SampleConfig
from gptcli.errors import GptError
from gptcli.generation import Engine, generate
from gptcli.generation.sampling import filter_logits, pick_next
from gptcli.models import GPT
from gptcli.tokenizers import BPETokenizer, CharTokenizer
from gptcli.tokenizers.patterns import GPT4_PATTERN

POSITIONS = ["learned", "rope", "sinusoidal", "none"]
ATTENTION = [(None, None), (2, None), (1, None), (None, 5), (2, 5)]  # (n_kv_head, window)


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    config.update(overrides)
    return GPT(ModelConfig(**config)).eval()


def char_tokenizer(n=39) -> CharTokenizer:
    chars = [chr(ord("a") + i) if i < 26 else chr(ord("0") + i - 26) for i in range(n)]
    return CharTokenizer(chars, {"<|endoftext|>": n})


GREEDY = dict(temperature=0.0, ignore_eos=True)


# Two ways of computing the same logits (a KV cache or not, another BLAS, another CPU) agree to ~1e-6,
# not bit for bit: where a token's top two logits are closer than TIE, greedy may pick either.
TIE = 1e-4


@torch.no_grad()
def recompute(model, prompt, n_new, choose) -> list[int]:
    """The reference decoding: at every step the whole visible context through the model, no cache,
    with the engine's rule for a full context (keep its last 3/4); choose(step, (V,) logits) gives
    the token fed next. -> the n_new tokens fed."""
    block = model.config.block_size
    keep = max(1, block - block // 4)
    visible, out = list(prompt[-block:]), []
    for step in range(n_new):
        logits, _ = model(torch.tensor([visible]))
        token = choose(step, logits[0, -1])
        out.append(token)
        visible = (visible + [token])[-keep:] if len(visible) == block else visible + [token]
    return out


def greedy_by_recomputation(model, prompt, n_new) -> list[int]:
    return recompute(model, prompt, n_new, lambda step, logits: int(logits.argmax()))


def logits_by_recomputation(model, prompt, ids) -> list[torch.Tensor]:
    """Teacher-forced: the (V,) logits before each of `ids`, each one fed after its step."""
    out = []
    recompute(model, prompt, len(ids), lambda step, logits: out.append(logits) or ids[step])
    return out


def assert_greedy(ids, model, prompt):
    """`ids` are greedy decoding's from `prompt` by recomputation, computed here, or part from them
    only where the reference's top two logits tie within TIE (nothing after that is compared: from
    there the two contexts differ)."""
    want = greedy_by_recomputation(model, prompt, len(ids))
    if ids == want:
        return
    i = next(i for i, (a, b) in enumerate(zip(ids, want)) if a != b)
    logits = logits_by_recomputation(model, prompt, want[: i + 1])[i]
    assert logits.max() - logits[ids[i]] < TIE, (
        f"step {i}: {ids[i]} where greedy gives {want[i]} ({ids} vs {want})"
    )


@pytest.mark.parametrize("n_kv_head,window", ATTENTION)
@pytest.mark.parametrize("pos_emb", POSITIONS)
def test_kv_cache_generation_equals_recomputation_past_the_context(pos_emb, n_kv_head, window):
    model = tiny_model(pos_emb=pos_emb, n_kv_head=n_kv_head, window=window)
    engine = Engine(model, char_tokenizer())
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    n_new = 40  # the context (16) fills and is cropped several times
    result = engine.generate(prompt, SampleConfig(max_new_tokens=n_new, num_samples=2, **GREEDY))
    assert result.samples[0].ids == result.samples[1].ids  # rows of one batch: bit for bit
    assert_greedy(result.samples[0].ids, model, prompt)
    assert all(s.finish_reason == "length" for s in result.samples)


def test_same_seed_same_text_other_seed_other_text():
    engine = Engine(tiny_model(), char_tokenizer())

    def sample(seed):
        return engine.generate(
            "abc", SampleConfig(max_new_tokens=30, temperature=1.0, top_k=None, seed=seed, num_samples=3)
        )

    a, b, c = sample(7), sample(7), sample(8)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]
    assert [s.ids for s in a.samples] != [s.ids for s in c.samples]
    assert len({tuple(s.ids) for s in a.samples}) > 1  # rows of a batch differ


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0, -1.0]])
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=2, top_p=None))
    assert kept.sum() == 2 and not kept[0, 3:].any()


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=None, top_p=0.8))
    assert kept.tolist() == [[False, True, False, True]]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=None, top_p=0.81))
    assert kept.tolist() == [[False, True, True, True]]
    assert torch.isfinite(filter_logits(logits, 1.0, None, top_p=1e-6)).sum() == 1  # always one left


def test_draws_never_leave_the_top_k_and_top_p_sets():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 100, generator=generator) * 3  # (B, V)
    for top_k, top_p in [(5, None), (None, 0.5), (20, 0.3), (1, None)]:
        allowed = torch.isfinite(filter_logits(logits, 0.7, top_k, top_p))
        config = SampleConfig(temperature=0.7, top_k=top_k, top_p=top_p)
        seen = torch.zeros_like(allowed)
        for _ in range(500):
            ids = pick_next(logits, config, generator)
            seen[torch.arange(8), ids] = True
        assert not (seen & ~allowed).any()
        assert (seen.sum(-1) > 1).any() or top_k == 1  # the draws do spread over the set


class ScriptedModel(torch.nn.Module):
    """A stand-in GPT that emits a fixed token script, whatever the context: for text handling tests."""

    def __init__(self, script, vocab_size, block_size=64):
        super().__init__()
        self.script = script
        self.config = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.step = 0

    def new_cache(self, batch_size, max_len=None, device=None):
        return type("Cache", (), {"pos": 0, "max_len": max_len, "reset": lambda self: None})()

    def forward(self, idx, cache=None, last_only=False):
        B, T = idx.shape
        cache.pos += T
        logits = torch.full((B, 1, self.config.vocab_size), -1e9)
        logits[:, :, self.script[min(self.step, len(self.script) - 1)]] = 0.0
        self.step += 1
        return logits, None


def byte_engine(text_or_ids, block_size=64):
    """An engine whose model spells the given text one byte per token (ids = bytes, 256 = eot)."""
    tok = BPETokenizer([], GPT4_PATTERN, {"<|endoftext|>": 256})
    script = list(text_or_ids.encode()) if isinstance(text_or_ids, str) else text_or_ids
    return Engine(ScriptedModel(script, 257, block_size), tok)


def stream(engine, config):
    run = engine.start("x", config)
    events = list(run)
    return events, run.result


def test_streamed_text_equals_the_result_with_multibyte_characters_whole():
    text = "héllo wörld 🙂 ünïcödé ✓"
    events, result = stream(byte_engine(text), SampleConfig(max_new_tokens=len(text.encode()), **GREEDY))
    assert result.samples[0].text == text
    assert "".join(e.text for e in events) == text
    assert all("\ufffd" not in e.text for e in events)  # never half a character
    assert sum(1 for e in events if e.text == "") >= 5  # bytes of a character wait for the rest


def test_stop_strings_cut_exactly_and_partial_matches_are_released():
    text = "a STaR is not a STOP sign"
    config = SampleConfig(max_new_tokens=100, stop=["STOP", "never"], **GREEDY)
    events, result = stream(byte_engine(text), config)
    sample = result.samples[0]
    assert sample.text == "a STaR is not a " and sample.finish_reason == "stop"
    assert "".join(e.text for e in events) == sample.text
    assert len(sample.ids) == len("a STaR is not a STOP")  # generation stopped on the token that completed it


def test_end_of_text_ends_a_sample_unless_ignored():
    ids = list(b"done") + [256] + list(b"more")
    result = byte_engine(ids).generate("x", SampleConfig(max_new_tokens=9, temperature=0.0))
    assert (result.samples[0].text, result.samples[0].finish_reason) == ("done", "eos")
    assert result.samples[0].ids == list(b"done")
    result = byte_engine(ids).generate("x", SampleConfig(max_new_tokens=9, **GREEDY))
    assert result.samples[0].text == "done<|endoftext|>more" and result.samples[0].finish_reason == "length"


def test_prompts_empty_unknown_or_longer_than_the_context():
    model = tiny_model()
    engine = Engine(model, char_tokenizer())
    result = engine.generate("", SampleConfig(max_new_tokens=3, **GREEDY))  # starts from <|endoftext|>
    assert result.prompt_ids == [39]
    no_eot = Engine(model, CharTokenizer(char_tokenizer().chars + ["!"]))
    with pytest.raises(GptError, match="no <\\|endoftext\\|>"):
        no_eot.generate("", SampleConfig())
    with pytest.raises(GptError, match="'A', 'Z'"):
        engine.generate("aZbA", SampleConfig())
    long = engine.generate("abcdefghij" * 5, SampleConfig(max_new_tokens=5, **GREEDY))
    assert len(long.prompt_ids) == 50 and len(long.samples[0].ids) == 5


def test_generate_from_a_checkpoint_directory(tmp_path):
    from gptcli.storage import checkpoint as ckpt

    model, tok = tiny_model(), char_tokenizer()
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001", model, model.config, tok)
    result = generate(tmp_path / "run", "abc", max_new_tokens=8, seed=0)
    assert result.new_tokens == 8 and result.tokens_per_second > 0
    assert result.to_json()["samples"][0]["tokens"] == 8
    same = generate(model, "abc", tokenizer=tok, max_new_tokens=8, seed=0)  # a model in memory
    assert same.samples[0].ids == result.samples[0].ids
    with pytest.raises(GptError, match="needs the model's tokenizer"):
        generate(model, "abc")


def test_assert_greedy_forgives_a_tie_and_nothing_else():
    model, prompt = tiny_model(), [3, 1, 4]
    want = greedy_by_recomputation(model, prompt, 6)
    assert_greedy(want, model, prompt)
    logits = logits_by_recomputation(model, prompt, want)[2]
    wrong = [*want[:2], int(logits.argmin()), *want[3:]]  # far from the top: a real difference
    with pytest.raises(AssertionError, match="step 2"):
        assert_greedy(wrong, model, prompt)
