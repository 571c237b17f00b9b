"""GPT-2's own vocabulary files (OpenAI's and HF's layouts) load as kind 'gpt2'."""

import json

import pytest

from gptcli.errors import GptError
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.gpt2 import BYTE_TO_CHAR, bytes_to_unicode
from gptcli.tokenizers.patterns import GPT2_PATTERN


def gpt2_style_files(folder, names=("vocab.json", "merges.txt")):
    """A miniature GPT-2 vocabulary in GPT-2's id layout: bytes in its character order, merges, <|endoftext|>."""
    chars = list(bytes_to_unicode().values())
    order = sorted(range(256), key=lambda b: ord(BYTE_TO_CHAR[b]))  # GPT-2 numbers bytes by their character
    vocab = {BYTE_TO_CHAR[b]: i for i, b in enumerate(order)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_text(json.dumps(vocab))
    (folder / names[1]).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    assert len(chars) == 256
    return vocab


@pytest.mark.parametrize("names", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
def test_gpt2_folder_loads_with_gpt2_layout(tmp_path, names):
    vocab = gpt2_style_files(tmp_path, names)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "gpt2" and tok.pattern == GPT2_PATTERN
    assert tok.eot_id == vocab["<|endoftext|>"] == 260
    ids = tok.encode(" the thin<|endoftext|>", allow_special=True)
    assert ids == [vocab["Ġthe"], vocab["Ġt"], vocab["h"], vocab["in"], 260]
    assert tok.decode(ids) == " the thin<|endoftext|>"


def test_gpt2_layout_is_checked(tmp_path):
    vocab = gpt2_style_files(tmp_path)
    vocab["Ġt"], vocab["he"] = vocab["he"], vocab["Ġt"]  # ids no longer follow merge order
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(GptError, match="ids must follow merge order"):
        load_tokenizer(tmp_path)


def test_folder_without_a_tokenizer(tmp_path):
    with pytest.raises(GptError, match="no tokenizer here"):
        load_tokenizer(tmp_path)
