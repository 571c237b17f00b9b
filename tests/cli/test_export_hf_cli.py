"""`gpt export-hf` as a user runs it: what it writes, and what it says when a tokenizer has no HF form."""

import json

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer, CharTokenizer
from tests.conftest import assert_one_line_error, run_cli

transformers = pytest.importorskip("transformers")


def save(directory, tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    return ckpt.save_checkpoint(directory, GPT(config), config, tokenizer, {"step": 1})


def test_a_char_model_exports_without_a_tokenizer_and_says_how_to_use_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = save(
        tmp_path / "char", CharTokenizer(list("\n abcdefghijklmnopqrstuvwxyz"), {"<|endoftext|>": 28})
    )
    result = run_cli("export-hf", "char", "--out", "hf", "--quiet")  # said even under --quiet
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: no tokenizer written"), result.stderr
    own = "char/tokenizer.json"
    for fragment in ("char-level", "byte-level BPE only", f"gpt tokenizer encode -t {own}", "input_ids"):
        assert fragment in warnings[0], warnings[0]
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    # what the note says works: our ids in, the same logits out as our model gives
    ids = json.loads(run_cli("tokenizer", "encode", "-t", own, "a bad cab").stdout)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours, _, _ = load_checkpoint(model_dir)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits
        mine = ours(torch.tensor([ids]))[0][..., : ours.config.vocab_size]
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)


def test_a_bpe_model_exports_its_tokenizer_and_says_nothing_about_it(tmp_path):
    save(tmp_path / "bpe", BPETokenizer([], special_tokens={"<|endoftext|>": 256}))
    result = run_cli("export-hf", str(tmp_path / "bpe"), "--out", str(tmp_path / "hf"), "--quiet")
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}


def test_what_gpt2_cannot_hold_is_a_one_line_error(tmp_path):
    tok = CharTokenizer(list("abc"))
    config = ModelConfig(vocab_size=3, block_size=8, n_layer=1, n_head=2, n_embd=16, pos_emb="rope")
    ckpt.save_checkpoint(tmp_path / "rope", GPT(config), config, tok)
    assert_one_line_error(
        run_cli("export-hf", str(tmp_path / "rope"), "--out", str(tmp_path / "hf")), "pos_emb"
    )
