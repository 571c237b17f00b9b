"""5. At scale: `gpt tokenizer train` (as a user runs it), HF's BpeTrainer and nanochat's rustbpe,
each in a fresh process on one corpus: wall seconds, start-up included, and the peak summed RSS and
PSS of its process tree."""

import sys
from pathlib import Path

from measure import run_measured  # benchmarks/, beside this package

from tokbench.common import MB, log
from tokbench.corpora import write_scale_corpus

SCALE_TRAINERS = ("ours", "hf", "rustbpe")

HF_CODE = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path, vocab_size = sys.argv[1], int(sys.argv[2])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train([path], trainer)
print(tok.get_vocab_size())
"""
RUSTBPE_CODE = """
import sys, rustbpe
path, vocab_size = sys.argv[1], int(sys.argv[2])
def blocks():
    with open(path, encoding="utf-8", errors="replace") as f:
        while block := f.read(1 << 20):
            yield block
tok = rustbpe.Tokenizer()
tok.train_from_iterator(blocks(), vocab_size)
print(vocab_size)
"""


def run_trainer(which: str, path: Path, vocab_size: int, workdir: Path) -> dict:
    """One trainer in a fresh process: wall seconds (start-up included) and peak tree memory."""
    if which == "ours":
        out = workdir / "ours.json"
        argv = [
            sys.executable,
            "-m",
            "gptcli",
            "tokenizer",
            "train",
            str(path),
            "--vocab-size",
            str(vocab_size),
        ]
        argv += ["--out", str(out), "--quiet"]
    else:
        argv = [sys.executable, "-c", HF_CODE if which == "hf" else RUSTBPE_CODE, str(path), str(vocab_size)]
    run = run_measured(argv)
    return {"wall_s": run.seconds, "peak_rss_mb": run.peak_rss / MB, "peak_pss_mb": run.peak_pss / MB}


def bench_scale(
    kind: str, source: str, mb: float, vocab_size: int, trainers: list[str], workdir: Path
) -> dict:
    path = workdir / f"{kind}.txt"
    log(f"writing the {kind} corpus ({mb:g} MB) ...")
    write_scale_corpus(kind, source, path, int(mb * MB))
    r: dict = {"kind": kind, "corpus_mb": path.stat().st_size / MB, "vocab_size": vocab_size}
    for which in trainers:
        log(f"training {which} on it (vocab {vocab_size}) ...")
        r[which] = run_trainer(which, path, vocab_size, workdir)
    path.unlink()
    return r
