"""Load any tokenizer we can read from a path: our JSON file, or a folder holding one of

- our `tokenizer.json` (a checkpoint or run directory, or an export folder's sibling),
- GPT-2 vocabulary files: vocab.json + merges.txt (HF) or encoder.json + vocab.bpe (OpenAI),
  loaded as kind 'gpt2' with GPT-2's split pattern, or with the pattern of an HF tokenizer.json
  found beside them (what `gpt tokenizer export --format hf` writes).
"""

import json
from pathlib import Path

from gptcli.errors import GptError
from gptcli.tokenizers.base import FORMAT, Tokenizer, read_tokenizer_file
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
    spec = read_tokenizer_file(path)
    trained_on = spec.trained_on
    if spec.kind == "char":
        return CharTokenizer(spec.chars, spec.special_tokens, trained_on)
    return BPETokenizer(
        spec.merges, spec.pattern, spec.special_tokens, spec.byte_order, spec.kind, trained_on
    )


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
