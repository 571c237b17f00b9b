"""`gpt export-gguf`: the file's keys, tensors and tokenizer, read back with gguf's GGUFReader, and its
logits from an independent numpy forward pass (tests/gguf_reference.py) equal to ours. llama.cpp itself
loads the same exports in tests/test_gguf_llama_cpp.py (`make gguf-check`)."""

import numpy as np
import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.gguf_export import export_gguf
from gptcli.loading import load_checkpoint
from gptcli.models import build_model
from gptcli.models.lora import has_lora
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.char import CharTokenizer
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN
from tests.chat.conftest import CONVERSATIONS
from tests.chat.conftest import train as train_bpe
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.gguf_reference import (
    LLAMA_CPP_PRE,
    MODELS,
    SPECIAL_TEXT,
    TRAILING,
    GgufBpe,
    GgufModel,
    export_models,
    split_pieces,
    tiny_checkpoint,
)
from tests.gguf_reference import chat_tokenizer as reference_tokenizer

gguf = pytest.importorskip("gguf")

# text the tokenizer must split as llama.cpp does: the sonnets, conversations, code, odd whitespace
REAL_TEXT = (
    [SONNETS.read_text(encoding="utf-8")[:20000], SPECIAL_TEXT]
    + [m["content"] for c in CONVERSATIONS for m in c]
    + ["def f(x):\n    return x  \n\n\t\tend\r\n", "It's 12345 o'clock, WE'LL see'S 3.14\u00a0ok", "  \n \n"]
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
PRE = {"gpt2": "gpt-2", "gpt4": "llama-bpe"}


@pytest.fixture(scope="module")
def chat_tokenizer():
    return reference_tokenizer("gpt2")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, chat_tokenizer):
    """(name, dtype) -> (checkpoint dir, GGUF path), for every model of MODELS and every dtype."""
    return export_models(tmp_path_factory.mktemp("gguf"), ("f32", "f16", "q8_0"))


def expected_tensors(config: ModelConfig, arch: str) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's graph loads, with its numpy shape (the module docstring of gguf_export)."""
    V, C, kv = config.vocab_size, config.n_embd, config.n_kv_head * config.head_dim
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,), "output_norm.bias": (C,)}
    if arch == "gpt2":
        shapes["position_embd.weight"] = (config.block_size, C)
    if not config.tie_weights:
        shapes["output.weight"] = (V, C)
    for i in range(config.n_layer):
        attn = {"attn_qkv": C + 2 * kv} if arch == "gpt2" else {"attn_q": C, "attn_k": kv, "attn_v": kv}
        layers = {**attn, "attn_output": C, "ffn_up": 4 * C}
        for layer, rows in layers.items():
            shapes[f"blk.{i}.{layer}.weight"], shapes[f"blk.{i}.{layer}.bias"] = (rows, C), (rows,)
        shapes[f"blk.{i}.ffn_down.weight"], shapes[f"blk.{i}.ffn_down.bias"] = (C, 4 * C), (C,)
        for norm in ("attn_norm", "ffn_norm"):
            shapes[f"blk.{i}.{norm}.weight"] = shapes[f"blk.{i}.{norm}.bias"] = (C,)
    return shapes


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("name", MODELS)
def test_keys_tensor_names_shapes_and_dtypes(exports, name, dtype):
    directory, path = exports[name, dtype]
    config = ckpt.read_config(directory)["model"]
    model = GgufModel(path)
    arch = "gpt2" if config.pos_emb == "learned" else "starcoder2"
    assert model.arch == arch
    assert {k: model.key(k) for k in ("context_length", "embedding_length", "block_count")} == {
        "context_length": config.block_size, "embedding_length": config.n_embd, "block_count": config.n_layer,
    }  # fmt: skip
    assert model.key("feed_forward_length") == 4 * config.n_embd
    assert (model.key("attention.head_count"), model.key("attention.head_count_kv")) == (
        config.n_head, config.n_kv_head,
    )  # fmt: skip
    assert model.key("attention.layer_norm_epsilon") == pytest.approx(config.norm_eps)
    if arch == "starcoder2":
        assert model.key("rope.freq_base") == config.rope_base
        assert model.key("rope.dimension_count") == config.head_dim
    assert model.shapes == expected_tensors(config, arch)
    for tensor, kind in model.types.items():
        matrix = len(model.shapes[tensor]) == 2 and tensor != "position_embd.weight"
        assert kind == ({"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype] if matrix else "F32"), tensor
    assert model.keys["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]


def test_missing_biases_are_zeros(exports):
    model = GgufModel(exports["gpt2-gqa-untied-nobias", "f32"][1])
    biases = [t for name, t in model.tensors.items() if name.endswith(".bias")]
    assert len(biases) == 2 * 6 + 1 and all(not b.any() for b in biases)


@pytest.mark.parametrize("name", MODELS)
def test_numpy_forward_over_the_file_gives_our_logits(exports, name):
    directory, _ = exports[name, "f32"]
    ours, tokenizer, _ = load_checkpoint(directory)
    ids = tokenizer.encode(SPECIAL_TEXT, allow_special=True)[:60]
    with torch.no_grad():
        want = ours(torch.tensor([ids]))[0][0, :, : tokenizer.vocab_size].double().numpy()
    scale = np.abs(want).max()
    for dtype, rel in (("f32", 1e-4), ("f16", 2e-2), ("q8_0", 5e-2)):
        got = GgufModel(exports[name, dtype][1]).forward(ids)
        assert got.shape == want.shape
        err = np.abs(got - want).max() / scale
        assert err < rel, f"{dtype}: largest difference {err:.2e} of the largest logit"
        if dtype != "f32":  # rounding the weights, not the layout: the greedy token mostly agrees
            assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_q8_0_blocks_decode_to_the_weights_within_their_precision(exports):
    """Our Q8_0 reader agrees with gguf's, and every weight is within half its block's step d = max / 127,
    plus the scale's own rounding to fp16 (up to 127 d 2^-11)."""
    directory, path = exports["gpt2", "q8_0"]
    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    ours = GgufModel(path).tensors["blk.0.ffn_up.weight"]
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType.Q8_0))
    w = load_checkpoint(directory)[0].state_dict()["transformer.h.0.mlp.c_fc.weight"].numpy()
    blocks, deq = w.reshape(-1, 32), ours.reshape(-1, 32)
    step = np.abs(blocks).max(1, keepdims=True) / 127
    assert (np.abs(deq - blocks) <= step * (0.5 + 127 / 2048)).all()


@pytest.mark.parametrize("name,pattern", [("gpt2", "gpt2"), ("rope-gqa-gpt4", "gpt4")])
def test_tokenizer_round_trips_through_tokens_and_merges(exports, name, pattern):
    """The file's tokens and merges, split by the named pre-tokenizer's regex (llama.cpp's), encode real
    text to our ids; for gpt2 also a text that ends in whitespace after a newline."""
    directory, path = exports[name, "f32"]
    tokenizer = load_tokenizer(directory)
    model = GgufModel(path)
    assert model.keys["tokenizer.ggml.model"] == "gpt2" and model.keys["tokenizer.ggml.pre"] == PRE[pattern]
    bpe = GgufBpe(model)
    for text in REAL_TEXT + (TRAILING if pattern == "gpt2" else []):
        assert bpe.encode(text) == tokenizer.encode(text, allow_special=True), text[:60]
    tokens = model.keys["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.vocab_size == model.shapes["token_embd.weight"][0]
    assert len(model.keys["tokenizer.ggml.merges"]) == len(tokenizer.merges)


def test_special_tokens_ids_and_chat_template(exports, chat_tokenizer):
    keys = GgufModel(exports["gpt2", "f32"][1]).keys
    special = chat_tokenizer.special_tokens
    types = keys["tokenizer.ggml.token_type"]
    assert [i for i, t in enumerate(types) if t == 3] == sorted(special.values())  # CONTROL
    assert all(keys["tokenizer.ggml.tokens"][i] == s for s, i in special.items())
    assert keys["tokenizer.ggml.bos_token_id"] == special["<|endoftext|>"]
    assert keys["tokenizer.ggml.eos_token_id"] == keys["tokenizer.ggml.eot_token_id"] == special["<|im_end|>"]
    assert keys["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in keys["tokenizer.chat_template"]
    base = GgufModel(
        exports["rope-untied-nobias", "f32"][1]
    ).keys  # not fine-tuned: no template, eos <|endoftext|>
    assert "tokenizer.chat_template" not in base
    assert base["tokenizer.ggml.eos_token_id"] == special["<|endoftext|>"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_our_patterns_split_real_text_as_their_llama_cpp_pre_tokenizers(pattern):
    ours, theirs = PATTERNS[pattern], LLAMA_CPP_PRE[PRE[pattern]]
    for text in REAL_TEXT:
        assert split_pieces(ours, text) == split_pieces(theirs, text), text[:60]
    # whitespace that ends a text after a newline: gpt2 still agrees, gpt4 differs as documented
    for text in TRAILING:
        assert (split_pieces(ours, text) == split_pieces(theirs, text)) == (pattern == "gpt2"), text
    if pattern == "gpt4":
        assert (split_pieces(ours, "x \n  "), split_pieces(theirs, "x \n  ")) == (
            ["x", " \n  "],
            ["x", " \n", "  "],
        )


REFUSED = {
    "sinusoidal": (dict(pos_emb="sinusoidal"), "sinusoidal positions"),
    "none": (dict(pos_emb="none"), "none positions"),
    "rmsnorm": (dict(norm="rmsnorm"), "RMSNorm with a GELU MLP"),
    "window": (dict(window=8), "sliding-window attention (window 8"),
    "exact-gelu": (dict(gelu="exact"), "exact GELU"),
    "lstm": (dict(arch="lstm"), "no LSTM architecture"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_llama_cpp_cannot_run_is_a_one_line_error(tmp_path, chat_tokenizer, name):
    shape, message = REFUSED[name]
    heads = {} if shape.get("arch") == "lstm" else dict(n_head=2)
    model = build_model(
        ModelConfig(vocab_size=chat_tokenizer.vocab_size, n_layer=1, n_embd=32, **heads, **shape)
    )
    directory = ckpt.save_checkpoint(tmp_path / "ck", model, model.config, chat_tokenizer, {"step": 1})
    result = run_cli("export-gguf", str(directory), "--out", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, message)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_char_and_custom_pattern_tokenizers_are_refused(tmp_path):
    char = CharTokenizer(list("abc"))
    directory = tiny_checkpoint(tmp_path / "char", char)
    assert_one_line_error(
        run_cli("export-gguf", str(directory), "-o", str(tmp_path / "m.gguf")), "char tokenizer"
    )
    custom = train_bpe(pattern=r"\p{L}+|\s+|.")
    directory = tiny_checkpoint(tmp_path / "custom", custom)
    result = run_cli("export-gguf", str(directory), "-o", str(tmp_path / "m.gguf"))
    assert_one_line_error(result, "split pattern (custom) has no llama.cpp pre-tokenizer")


def test_cli_writes_the_file_and_checks_its_options(tmp_path, exports):
    directory, _ = exports["rope-gqa-gpt4", "f32"]
    out = tmp_path / "sub" / "m.gguf"
    result = run_cli("export-gguf", str(directory), "--out", str(out), "--dtype", "q8_0")
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stderr and GgufModel(out).types["token_embd.weight"] == "Q8_0"
    assert run_cli("export-gguf", str(directory), "--dtype", "q4").exit_code == 2
    assert_one_line_error(run_cli("export-gguf", str(tmp_path / "nowhere")), "not found")
    assert load_tokenizer(directory).vocab_size == GgufModel(out).shapes["token_embd.weight"][0]
    assert GgufModel(out).keys["general.name"] == directory.name


def test_a_lora_run_exports_merged(tmp_path, monkeypatch, chat_tokenizer):
    """An adapter run's GGUF holds its base with the adapters (and new rows) added in: its logits are the run's."""
    from tests.training.test_finetune import FAST, reverse_task, task_words, write_jsonl

    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    base = tiny_checkpoint(tmp_path / "base", chat_tokenizer, pos_emb="rope", n_kv_head=2)
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:16]))
    args = [
        "-c",
        str(base),
        "--data",
        str(data),
        "--lora",
        "--lora-r",
        "4",
        "--lr",
        "1e-2",
        "--batch-size",
        "2",
    ]
    result = run_cli(
        "finetune", *args, "--max-iters", "2", "--eval-interval", "2", *FAST, "--out", str(tmp_path / "run")
    )
    assert result.exit_code == 0, result.stderr
    ours, tokenizer, _ = load_checkpoint(ckpt.resolve_checkpoint(tmp_path / "run"))
    assert has_lora(ours)
    ids = tokenizer.encode(SPECIAL_TEXT, allow_special=True)[:40]
    with torch.no_grad():
        want = ours(torch.tensor([ids]))[0][0, :, : tokenizer.vocab_size].double().numpy()
    model = GgufModel(export_gguf(tmp_path / "run", tmp_path / "lora.gguf"))
    assert np.abs(model.forward(ids) - want).max() < 1e-4 * np.abs(want).max()
    assert "tokenizer.chat_template" in model.keys
