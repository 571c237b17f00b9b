"""1. Training time: the corpus cut into a train part and a held-out part; ours and HF's trained
alternately on the train part, best of --repeats wall-clock runs each."""

from pathlib import Path

from tokenizers import Tokenizer

from gptcli.tokenizers.bpe import BPETokenizer
from tokbench.common import MB, log, timed
from tokbench.trainers import train_hf, train_ours

TRAIN_FRACTION = 0.9


def split_corpus(data: bytes) -> tuple[bytes, bytes]:
    """The first TRAIN_FRACTION of the bytes, cut just after a newline, and the rest."""
    cut = data.rfind(b"\n", 0, int(len(data) * TRAIN_FRACTION)) + 1
    return data[:cut], data[cut:]


def bench_training(train_path: Path, vocab_size: int, repeats: int) -> tuple[BPETokenizer, Tokenizer, dict]:
    ours_s, hf_s = [], []
    for i in range(repeats):
        log(f"training {i + 1}/{repeats} on {train_path.stat().st_size / MB:.1f} MB ...")
        seconds, ours = timed(train_ours, train_path, vocab_size)
        ours_s.append(seconds)
        seconds, hf = timed(train_hf, train_path, vocab_size)
        hf_s.append(seconds)
    numbers = {
        "ours_s": min(ours_s),
        "hf_s": min(hf_s),
        "ratio": min(ours_s) / min(hf_s),
        "ours_runs_s": ours_s,
        "hf_runs_s": hf_s,
        "ours_vocab": ours.vocab_size,
        "hf_vocab": hf.get_vocab_size(),
    }
    return ours, hf, numbers
