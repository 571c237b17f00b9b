"""Export a BPE tokenizer so other tools can read it.

- format "hf": vocab.json + merges.txt (GPT-2 layout, read by transformers' GPT2Tokenizer) and a
  tokenizer.json for HF `tokenizers` that carries our split pattern, so GPT-4-pattern tokenizers
  load exactly too. With a chat template (`gpt export-hf` of a fine-tuned model), also a
  tokenizer_config.json: the template's Jinja as `chat_template`, every special token in
  `added_tokens_decoder`, and `eos_token` = the template's end token, so that
  `AutoTokenizer.from_pretrained(DIR).apply_chat_template(messages)` gives the ids we render.
- format "tiktoken": `tokenizer.tiktoken` (base64 token, space, rank per line, tiktoken's own rank
  file format) + `tiktoken.json` with the split pattern and special tokens to build an Encoding:

      ranks = tiktoken.load.load_tiktoken_bpe("tokenizer.tiktoken")
      meta = json.load(open("tiktoken.json"))
      enc = tiktoken.Encoding("ours", pat_str=meta["pat_str"], mergeable_ranks=ranks,
                              special_tokens=meta["special_tokens"])
"""

import base64
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gptcli.config import ENDOFTEXT, EXPORT_FORMATS
from gptcli.errors import GptError
from gptcli.storage.files import atomic_write_json, atomic_write_text
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.gpt2 import gpt2_vocab
from gptcli.tokenizers.patterns import GPT2_PATTERN

if TYPE_CHECKING:
    from gptcli.chat.template import ChatTemplate


def export_tokenizer(tokenizer: Tokenizer, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write the export files into out_dir; returns their paths."""
    if not isinstance(tokenizer, BPETokenizer):
        raise GptError(f"only BPE tokenizers can be exported (this one is kind {tokenizer.kind!r})")
    out_dir = Path(out_dir)
    if fmt == "hf":
        return export_hf(tokenizer, out_dir)
    if fmt == "tiktoken":
        return export_tiktoken(tokenizer, out_dir)
    raise GptError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def export_hf(
    tokenizer: BPETokenizer,
    out_dir: Path,
    chat_template: "ChatTemplate | None" = None,
    model_max_length: int | None = None,
) -> list[Path]:
    vocab, merges = gpt2_vocab(tokenizer)
    paths = [out_dir / "vocab.json", out_dir / "merges.txt", out_dir / "tokenizer.json"]
    atomic_write_json(paths[0], vocab, indent=None)
    atomic_write_text(paths[1], "#version: 0.2\n" + "".join(m + "\n" for m in merges))
    atomic_write_json(paths[2], hf_tokenizer_json(tokenizer, vocab, merges), indent=None)
    if chat_template is not None:
        paths.append(out_dir / "tokenizer_config.json")
        atomic_write_json(paths[3], hf_tokenizer_config(tokenizer, chat_template, model_max_length))
    return paths


def hf_tokenizer_config(
    tokenizer: BPETokenizer, chat_template: "ChatTemplate", model_max_length: int | None = None
) -> dict:
    """transformers' tokenizer_config.json for a chat model (the layout transformers 4.x writes, which
    5.x reads too). A Jinja template sees the tokenizer's `bos_token` and `eos_token`; ours renders
    them as "" and <|endoftext|> (gptcli.chat.template), so a template that writes one gets that:
    otherwise `eos_token` is the template's end token, where a reply ends."""
    missing = [s for s in chat_template.special_tokens if s not in tokenizer.special_tokens]
    if missing:
        raise GptError(f"the tokenizer lacks the chat template's special token(s) {', '.join(missing)}")
    jinja = chat_template.jinja()
    eot = ENDOFTEXT if ENDOFTEXT in tokenizer.special_tokens else None
    eos = ENDOFTEXT if "eos_token" in jinja and eot else chat_template.end_token
    config = {
        # GPT2Tokenizer reads tokenizer.json (fast) or vocab.json + merges.txt (slow): the same for
        # GPT-2's pattern only; with another pattern only tokenizer.json is exact
        "tokenizer_class": "GPT2Tokenizer"
        if tokenizer.pattern == GPT2_PATTERN
        else "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None if "bos_token" in jinja else eot,
        "eos_token": eos,
        "unk_token": eot,
        "pad_token": None,
        "additional_special_tokens": list(chat_template.special_tokens),
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
        },
        "chat_template": jinja,
        "clean_up_tokenization_spaces": False,  # decode gives back the text, spaces before punctuation too
        "errors": "replace",
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config


def hf_tokenizer_json(tokenizer: BPETokenizer, vocab: dict[str, int], merges: list[str]) -> dict:
    """The `tokenizers` library's serialization: split by our regex, then GPT-2's byte-level mapping."""
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": hf_pattern(tokenizer.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {s: i for s, i in vocab.items() if i < tokenizer.n_ordinary},
            "merges": [m.split(" ") for m in merges],
        },
    }


def hf_pattern(pattern: str) -> str:
    """The split regex as HF `tokenizers` (Oniguruma, Ruby syntax) reads it the same way.

    Ruby syntax reads `X{1,3}+` as "X{1,3}, repeated", not as a possessive `{1,3}`, so GPT-4's
    `\\p{N}{1,3}+` would let digit chunks grow past three. Dropping that `+` gives the same chunks
    wherever the counted repetition ends its alternative, as in GPT-4's pattern.
    """
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def export_tiktoken(tokenizer: BPETokenizer, out_dir: Path) -> list[Path]:
    paths = [out_dir / "tokenizer.tiktoken", out_dir / "tiktoken.json"]
    lines = (
        f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokenizer.vocab)
    )
    atomic_write_text(paths[0], "".join(lines))
    meta = {
        "pat_str": tokenizer.pattern,
        "special_tokens": tokenizer.special_tokens,
        "explicit_n_vocab": tokenizer.vocab_size,
    }
    atomic_write_text(paths[1], json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return paths
