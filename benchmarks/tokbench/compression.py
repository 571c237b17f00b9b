"""2. Compression: UTF-8 bytes per token on the held-out text, ours beside each HF variant, and
whether decode(encode(text)) == text."""

from tokenizers import Tokenizer

from gptcli.tokenizers.bpe import BPETokenizer


def bench_compression(ours: BPETokenizer, hf_variants: dict[str, Tokenizer], text: str) -> dict:
    n_bytes = len(text.encode("utf-8"))
    ours_ids = ours.encode_ordinary(text)
    ours_bpt = n_bytes / len(ours_ids)
    numbers: dict = {
        "heldout_bytes": n_bytes,
        "ours_tokens": len(ours_ids),
        "ours_bytes_per_token": ours_bpt,
        "ours_roundtrip": ours.decode(ours_ids) == text,
        "hf": [],
    }
    for name, hf in hf_variants.items():
        ids = hf.encode(text, add_special_tokens=False).ids
        numbers["hf"].append(
            {
                "name": name,
                "tokens": len(ids),
                "bytes_per_token": n_bytes / len(ids),
                "rel_diff": ours_bpt / (n_bytes / len(ids)) - 1,
                "roundtrip": hf.decode(ids) == text,
            }
        )
    return numbers
