"""GPT-2 import/export, checked against HF transformers' GPT2LMHeadModel built locally (no network)."""

import json

import pytest
import torch

from gptcli.config import SampleConfig, TokenizerTrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.generation import Engine
from gptcli.hf_gpt2 import export_hf_gpt2, import_gpt2, load_hf_gpt2
from gptcli.loading import load_checkpoint
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.tensorfile import read_safetensors, write_safetensors
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.export import export_tokenizer
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.generation.test_engine import assert_greedy

transformers = pytest.importorskip("transformers")

SHAPES = [
    dict(n_layer=3, n_head=5, n_embd=80, n_positions=97),  # the odd shape of the issue
    dict(n_layer=2, n_head=2, n_embd=64, n_positions=64),
]


@pytest.fixture(scope="module")
def bpe_1000():
    """A GPT-2-pattern BPE of exactly 1000 tokens (999 + <|endoftext|>), as HF's GPT-2 layout has."""
    return train_tokenizer(
        TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=1000, pattern="gpt2")
    ).tokenizer


def hf_folder(path, tokenizer, shape, safe=True, seed=0):
    """A random HF GPT2LMHeadModel saved with save_pretrained, plus vocab.json + merges.txt."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=1000, activation_function="gelu_new", **shape)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initializes biases to 0 and norms to 1: randomize so they are tested too
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(path, safe_serialization=safe)
    export_tokenizer(tokenizer, "hf", path)
    return model


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_imported_model_equals_hf(tmp_path, bpe_1000, shape, safe):
    hf = hf_folder(tmp_path / "hf", bpe_1000, shape, safe)
    out = import_gpt2(tmp_path / "hf", tmp_path / "ckpt")
    model, tok, config = load_checkpoint(out)
    assert (
        config["model"].block_size == shape["n_positions"] and tok.kind == "gpt2" and tok.vocab_size == 1000
    )
    ids = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(our_logits(model, ids), expected, atol=1e-5, rtol=0)
    # greedy generation: both give the 30 ids of greedy recomputation, but where two logits tie (two
    # implementations agree to ~1e-6, not bit for bit); the context is long enough for prompt + 30
    prompt = ids[0, :8].tolist()
    theirs = hf.generate(ids[:1, :8], attention_mask=torch.ones(1, 8, dtype=torch.long), max_new_tokens=30,
                         min_new_tokens=30, do_sample=False, pad_token_id=0)[0, 8:].tolist()  # fmt: skip
    ours = Engine(model, tok).generate(
        prompt, SampleConfig(max_new_tokens=30, temperature=0, ignore_eos=True)
    )
    assert_greedy(ours.samples[0].ids, model, prompt)
    assert_greedy(theirs, model, prompt)


def test_weights_of_a_bare_gpt2model_load_too(tmp_path, bpe_1000):
    """OpenAI's hub files name tensors without the 'transformer.' prefix."""
    hf = hf_folder(tmp_path / "hf", bpe_1000, SHAPES[1])
    path = tmp_path / "hf" / "model.safetensors"
    tensors = {k.removeprefix("transformer."): v for k, v in read_safetensors(path).items()}
    write_safetensors(path, tensors)
    model, _ = load_hf_gpt2(tmp_path / "hf")
    ids = torch.randint(0, 1000, (1, 16))
    torch.testing.assert_close(our_logits(model, ids), hf(ids).logits.detach(), atol=1e-5, rtol=0)


def test_export_hf_round_trip_gives_identical_logits_and_tokens(tmp_path, bpe_1000):
    hf_folder(tmp_path / "hf", bpe_1000, SHAPES[0])
    out = import_gpt2(tmp_path / "hf", tmp_path / "ckpt")
    model, tok, _ = load_checkpoint(out)
    export_hf_gpt2(out, tmp_path / "export")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    ids = torch.randint(0, 1000, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, our_logits(model, ids), atol=1e-5, rtol=0)
    # the exported vocabulary loads back as kind gpt2 and encodes like HF's GPT-2 tokenizer
    hf_tok = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "export")
    back = load_tokenizer(tmp_path / "export")
    text = "Shall I compare thee to a summer's day?\n  Thou art more lovely, 1609!"
    assert back.kind == "gpt2" and back.encode(text) == tok.encode(text) == hf_tok(text)["input_ids"]


def test_a_trained_model_exports_to_hf(tmp_path):
    from gptcli.config import TrainConfig
    from gptcli.training.trainer import train

    summary = train(
        TrainConfig(
            data=[str(SONNETS)],
            tokenizer="char",
            data_cache=tmp_path / "cache",
            max_iters=2,
            eval_interval=2,
            eval_iters=1,
            sample_tokens=0,
            device="cpu",
            model=dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=False),
        ),  # fmt: skip
        tmp_path / "run",
    )
    written = export_hf_gpt2(tmp_path / "run", tmp_path / "export")
    assert {p.name for p in written} == {
        "model.safetensors",
        "config.json",
    }  # a char tokenizer has no HF form
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    model, _, _ = load_checkpoint(summary.last_checkpoint)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, our_logits(model, ids), atol=1e-5, rtol=0)


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    from gptcli.config import ModelConfig
    from gptcli.models import GPT
    from gptcli.tokenizers import CharTokenizer

    tok = CharTokenizer(list("abc"))
    config = ModelConfig(
        vocab_size=3, block_size=8, n_layer=1, n_head=2, n_embd=16, pos_emb="rope", n_kv_head=1
    )
    ckpt.save_checkpoint(tmp_path / "c", GPT(config), config, tok)
    with pytest.raises(GptError, match="pos_emb, n_kv_head"):
        export_hf_gpt2(tmp_path / "c", tmp_path / "out")


class NotATensor:
    pass


def _break(folder, how):
    if how == "no weights":
        (folder / "model.safetensors").unlink()
    elif how == "no config":
        (folder / "config.json").unlink()
    elif how == "not gpt2":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    elif how in ("missing tensor", "wrong shape"):
        path = folder / "model.safetensors"
        tensors = read_safetensors(path)
        if how == "missing tensor":
            del tensors["transformer.h.1.mlp.c_fc.weight"]
        else:
            tensors["transformer.h.0.attn.c_proj.weight"] = torch.zeros(3, 3)
        write_safetensors(path, tensors)
    elif how == "pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"transformer.wte.weight": NotATensor()}, folder / "pytorch_model.bin")
    elif how == "no tokenizer":
        (folder / "vocab.json").unlink()


@pytest.mark.parametrize(
    "how, fragments",
    [
        ("no weights", ["no weights", "model.safetensors or pytorch_model.bin"]),
        ("no config", ["no config.json"]),
        ("not gpt2", ["not a GPT-2 config", "llama"]),
        ("missing tensor", ["lack transformer.h.1.mlp.c_fc.weight"]),
        ("wrong shape", ["transformer.h.0.attn.c_proj.weight has shape (3, 3)"]),
        ("pickle", ["refused to load", "weights_only"]),
        ("no tokenizer", ["no tokenizer here"]),
    ],
)
def test_bad_folders_give_one_line_errors(tmp_path, bpe_1000, how, fragments):
    hf_folder(tmp_path / "hf", bpe_1000, SHAPES[1])
    _break(tmp_path / "hf", how)
    result = run_cli("load-gpt2", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "ckpt").exists()


def test_hub_names_fail_fast_and_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    result = run_cli("load-gpt2", "gpt2", "--out", str(tmp_path / "ckpt"))
    assert_one_line_error(result, "could not download gpt2", "gpt load-gpt2 PATH/TO/FOLDER")
    assert_one_line_error(run_cli("load-gpt2", "gpt5"), "no such folder", "gpt2-xl")


def test_cli_import_then_generate_and_fine_tune(tmp_path, bpe_1000, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hf_folder(tmp_path / "hf", bpe_1000, SHAPES[1])
    assert run_cli("load-gpt2", "hf", "--out", "ckpt").exit_code == 0
    data = json.loads(run_cli("generate", "-c", "ckpt", "-p", "Hello, my name is", "--max-new-tokens", "5",
                              "--seed", "0", "--json", "--ignore-eos").stdout)  # fmt: skip
    assert data["samples"][0]["tokens"] == 5
    ft = run_cli("train", "--init-from", "ckpt", "--data", str(SONNETS), "--data-cache", "cache", "--out", "ft",
                 "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "2",
                 "--sample-tokens", "0", "-q")  # fmt: skip
    assert ft.exit_code == 0, ft.stderr
    assert run_cli("export-hf", "ft", "--out", "ft_hf").exit_code == 0
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ft_hf").config.n_positions == 64
    best = run_cli("export-hf", "ft", "--best", "--out", "ft_best", "-v")  # the run's one eval is its best
    assert best.exit_code == 0 and (tmp_path / "ft_best" / "model.safetensors").is_file()
