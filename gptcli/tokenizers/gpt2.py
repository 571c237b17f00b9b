"""GPT-2's vocabulary files, read and written: OpenAI's encoder.json + vocab.bpe, HF's vocab.json + merges.txt.

Both store tokens as printable strings: GPT-2 maps each byte to a visible unicode character
(`bytes_to_unicode`, e.g. space -> 'Ġ'), so a token is the string of its bytes' characters. Ids
0..255 are the single bytes (in that mapping's order, not byte order), merge i creates id 256 + i,
and anything after the merges (GPT-2: <|endoftext|> = 50256) is a special token.
"""

import json
from pathlib import Path

from gptcli.errors import GptError
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.patterns import GPT2_PATTERN

# (vocab file, merges file) pairs we recognise, HF's first
VOCAB_FILE_PAIRS = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the
    other 68 bytes to chr(256), chr(257), ... in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in token)


def find_vocab_files(directory: Path) -> tuple[Path, Path] | None:
    for vocab_name, merges_name in VOCAB_FILE_PAIRS:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    return None


def load_gpt2_tokenizer(directory: str | Path, pattern: str = GPT2_PATTERN) -> BPETokenizer:
    """A folder with vocab.json + merges.txt (or encoder.json + vocab.bpe) -> a kind 'gpt2' tokenizer."""
    directory = Path(directory)
    files = find_vocab_files(directory)
    if files is None:
        raise GptError(
            f"{directory}: no GPT-2 vocabulary (need vocab.json + merges.txt, or encoder.json + vocab.bpe)"
        )
    vocab_path, merges_path = files
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        merge_lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptError(f"{vocab_path}: unreadable vocabulary ({e})") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise GptError(f"{vocab_path}: expected a JSON object of token -> id")
    pairs = []
    for line_no, line in enumerate(merge_lines, 1):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise GptError(f"{merges_path}:{line_no}: expected two tokens separated by a space, got {line!r}")
        pairs.append((parts[0], parts[1]))
    return tokenizer_from_vocab(vocab, pairs, pattern, source=str(vocab_path))


def tokenizer_from_vocab(
    vocab: dict[str, int], merges: list[tuple[str, str]], pattern: str = GPT2_PATTERN, source: str = "vocab"
) -> BPETokenizer:
    """GPT-2-style string vocab + merges -> BPETokenizer, checking that ids follow GPT-2's layout."""
    byte_order = [None] * 256
    for s, i in vocab.items():
        if len(s) == 1 and s in CHAR_TO_BYTE:
            if not 0 <= i < 256:
                raise GptError(
                    f"{source}: single-byte token {s!r} has id {i}; GPT-2 layout puts bytes at 0..255"
                )
            byte_order[i] = CHAR_TO_BYTE[s]
    if None in byte_order:
        raise GptError(f"{source}: ids 0..255 must be the 256 single-byte tokens")
    id_merges = []
    for rank, (left, right) in enumerate(merges):
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise GptError(
                f"{source}: merge {rank} ({left} {right}) uses a token missing from the vocabulary"
            )
        if vocab[left + right] != 256 + rank:
            raise GptError(
                f"{source}: merge {rank} ({left} {right}) creates id {vocab[left + right]}, expected {256 + rank} "
                "(ids must follow merge order)"
            )
        id_merges.append((vocab[left], vocab[right]))
    n_ordinary = 256 + len(id_merges)
    specials = {s: i for s, i in vocab.items() if i >= n_ordinary}
    if len(vocab) != n_ordinary + len(specials):
        raise GptError(
            f"{source}: {len(vocab) - n_ordinary - len(specials)} vocabulary entries are neither bytes, merges nor specials"
        )
    return BPETokenizer(id_merges, pattern, specials, byte_order=byte_order, kind="gpt2")


def gpt2_vocab(tokenizer: BPETokenizer) -> tuple[dict[str, int], list[str]]:
    """Our BPE -> (vocab.json object, merges.txt lines) in GPT-2's string form."""
    vocab = {token_to_str(t): i for i, t in enumerate(tokenizer.vocab)}
    vocab.update(tokenizer.special_tokens)
    merges = [
        f"{token_to_str(tokenizer.vocab[a])} {token_to_str(tokenizer.vocab[b])}" for a, b in tokenizer.merges
    ]
    return vocab, merges
