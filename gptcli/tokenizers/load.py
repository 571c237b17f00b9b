"""Load any tokenizer we can read from a path: our JSON file, or a folder holding one of

- our `tokenizer.json` (a checkpoint or run directory, or an export folder's sibling),
- GPT-2 vocabulary files: vocab.json + merges.txt (HF) or encoder.json + vocab.bpe (OpenAI),
  loaded as kind 'gpt2' with GPT-2's split pattern, or with the pattern of an HF tokenizer.json
  found beside them (what `gpt tokenizer export --format hf` writes).

`with_special_tokens` adds special tokens (a chat template's markers) to any of them.
"""

import json
from pathlib import Path

from gptcli.errors import GptError
from gptcli.tokenizers.base import FORMAT, Tokenizer, TokenizerFile, read_tokenizer_file
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.char import CharTokenizer
from gptcli.tokenizers.export import hf_pattern
from gptcli.tokenizers.gpt2 import find_vocab_files, load_gpt2_tokenizer
from gptcli.tokenizers.patterns import GPT2_PATTERN, NAMED_PATTERNS

TOKENIZER_FILENAME = "tokenizer.json"


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        ours = path / TOKENIZER_FILENAME
        if ours.is_file() and _is_ours(ours):
            return _from_our_file(ours)
        if find_vocab_files(path):
            return load_gpt2_tokenizer(path, _hf_split_pattern(ours) or GPT2_PATTERN)
        raise GptError(
            f"{path}: no tokenizer here (expected {TOKENIZER_FILENAME}, or GPT-2's vocab.json + merges.txt)"
        )
    if not path.is_file():
        raise GptError(f"tokenizer not found: {path} (train one with `gpt tokenizer train`)")
    return _from_our_file(path)


def _from_our_file(path: Path) -> Tokenizer:
    return from_spec(read_tokenizer_file(path))


def from_spec(spec: TokenizerFile) -> Tokenizer:
    """The tokenizer a validated file schema describes."""
    trained_on = spec.trained_on
    if spec.kind == "char":
        return CharTokenizer(spec.chars, spec.special_tokens, trained_on)
    return BPETokenizer(
        spec.merges, spec.pattern, spec.special_tokens, spec.byte_order, spec.kind, trained_on
    )


def with_special_tokens(tokenizer: Tokenizer, names: list[str]) -> tuple[Tokenizer, list[str]]:
    """`tokenizer` with the special tokens it lacks among `names` added, and the names added.

    New ids come right after the existing ones, in the order of `names`; every existing id keeps its
    meaning, so a model's old rows stay valid (fine-tuning grows the embedding by len(added) rows).
    The result is a new tokenizer (the given one is unchanged) that saves and loads like any other:

        >>> tok, added = with_special_tokens(bpe, ["<|im_start|>", "<|im_end|>"])
        >>> added, tok.special_tokens["<|im_start|>"] == bpe.vocab_size
        (['<|im_start|>', '<|im_end|>'], True)
    """
    added = [n for n in dict.fromkeys(names) if n not in tokenizer.special_tokens]
    if not added:
        return tokenizer, []
    if any(not isinstance(n, str) or not n for n in added):
        raise GptError(f"special tokens must be non-empty strings, got {added!r}")
    spec = tokenizer.to_file()
    spec.special_tokens = {
        **spec.special_tokens,
        **{n: tokenizer.vocab_size + i for i, n in enumerate(added)},
    }
    return from_spec(TokenizerFile.model_validate(spec.model_dump())), added


def _is_ours(path: Path) -> bool:
    """Our tokenizer.json, as opposed to HF's file of the same name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let the reader report what is wrong with it
    return not isinstance(data, dict) or data.get("format") == FORMAT or "model" not in data


def _hf_split_pattern(path: Path) -> str | None:
    """The Split regex of an HF tokenizer.json's pre-tokenizer, if there is one."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pre = data.get("pre_tokenizer") or {}
        for step in pre.get("pretokenizers", [pre]):
            if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
                found = step["pattern"]["Regex"]
                # our export rewrites a named pattern for HF's regex engine: map it back to the original
                return next((p for p in NAMED_PATTERNS.values() if hf_pattern(p) == found), found)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return None
