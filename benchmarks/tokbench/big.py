"""4. Peak memory and time of training on a big synthetic corpus: each trainer in a fresh subprocess
that reports its own peak RSS (and its workers'), the process tree sampled besides."""

import json
import resource
import sys
from pathlib import Path

from measure import run_measured  # benchmarks/, beside this package

from gptcli.tokenizers.bpe_train import count_chunks
from gptcli.tokenizers.patterns import GPT4_PATTERN
from tokbench.common import MB, log, timed
from tokbench.corpora import synthesize_corpus
from tokbench.trainers import corpus_texts, train_hf, train_ours

CHILD_CODE = (
    "import sys; sys.path.insert(0, {dir!r}); from tokbench.big import child_main; child_main(sys.argv[1:])"
)


def own_peak_rss_bytes() -> int:
    """VmHWM: this process's peak RSS since its exec (ru_maxrss would include the parent's, see bench_tokenizer.py)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(argv: list[str]) -> None:
    """In the subprocess: train one tokenizer, print one JSON line with its seconds and peak memory."""
    which, path, vocab_size = argv
    if which == "ours":
        seconds, tok = timed(train_ours, Path(path), int(vocab_size))
        vocab = tok.vocab_size
    else:
        seconds, tok = timed(train_hf, Path(path), int(vocab_size))
        vocab = tok.get_vocab_size()
    result = {"train_s": seconds, "vocab": vocab, "peak_rss_mb": own_peak_rss_bytes() / MB}
    if which == "ours":  # the pre-tokenizing pool's processes (HF uses threads)
        result["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / MB
    print(json.dumps(result))


def run_child(which: str, path: Path, vocab_size: int) -> dict:
    code = CHILD_CODE.format(dir=str(Path(__file__).resolve().parents[1]))
    argv = [sys.executable, "-c", code, which, str(path), str(vocab_size)]
    run = run_measured(argv, capture=True)
    return json.loads(run.out.strip().splitlines()[-1]) | {
        "wall_s": run.seconds,
        "peak_tree_rss_mb": run.peak_rss / MB,
    }


def bench_big(source: str, big_mb: float, vocab_size: int, workdir: Path, with_hf: bool) -> dict:
    path = workdir / "big.txt"
    log(f"writing a {big_mb:g} MB synthetic corpus ...")
    synthesize_corpus(source, path, int(big_mb * MB))
    numbers: dict = {"corpus_mb": path.stat().st_size / MB}
    log("training ours on it in a subprocess ...")
    numbers["ours"] = run_child("ours", path, vocab_size)
    if with_hf:
        log("training HF on it in a subprocess ...")
        numbers["hf"] = run_child("hf", path, vocab_size)
    log("counting its distinct pre-token chunks ...")
    numbers["distinct_chunks"] = len(count_chunks(corpus_texts(path), GPT4_PATTERN))
    return numbers
