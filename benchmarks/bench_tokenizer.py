"""Benchmark gptcli's byte-level BPE tokenizer against Hugging Face `tokenizers`, side by side, in one run.

Run from the repository root (the corpus comes from `make data`):

    python benchmarks/bench_tokenizer.py [--corpus toy_data/shakespeare.txt] [--vocab-size 20000] [--big-mb 100]
                                         [--repeats 3] [--encode-mb 20] [--no-hf-big] [--json]
    python benchmarks/bench_tokenizer.py --scale-only --scale python:100:32000 mixed:100:32000 nospace:20:5000

Both tokenizers are byte-level BPE with the same vocabulary size (256 bytes + merges + <|endoftext|>).
Ours: `train_tokenizer` (GPT-4 split pattern; encoding runs in tiktoken). HF: `models.BPE` with a
`ByteLevel(add_prefix_space=False)` pre-tokenizer (GPT-2's split regex), `BpeTrainer` and
`Tokenizer.train(files)`. What is measured:

1. Training time. The corpus is cut into train (first 90% of its bytes, cut at a newline) and held-out
   (the rest); both train on the train part, in this process, alternately; best of --repeats
   wall-clock runs each. Both use all cores (ours: a process pool to pre-tokenize; HF: rayon).
2. Compression: UTF-8 bytes per token on the held-out text (higher is better), and round trips
   (decode(encode(text)) == text). Two things besides the algorithm change this figure, so HF is
   also trained (once each) with GPT-4's split regex (a `Split` pre-tokenizer), from the file and
   from the text in ~1 MB blocks: HF's `train(files)` reads a file line by line, so it never sees a
   chunk that spans lines ("\\n\\n"), while ours pre-tokenizes the whole text.
3. Encode throughput, MB/s (MB = 10^6 UTF-8 bytes) on the held-out text repeated to --encode-mb:
   the text as one string (ours `encode_ordinary`, HF `encode`; one thread), and its lines (ours
   `encode_batch`, HF `encode_batch`), pinned to one thread (ours `num_threads=1`, HF
   TOKENIZERS_PARALLELISM=false) and on all cores (ours: one thread per core, used only for long texts; HF: rayon, a
   thread a core). Also shown: ours `encode_ordinary` in a Python loop over the lines, and HF's
   `encode_batch_fast` (no offsets). Best of --repeats.
4. Peak memory and time of training on a synthetic --big-mb corpus (0 skips it): Shakespeare's lines
   with a fraction of the words perturbed deterministically (case changes, letter substitutions,
   insertions, deletions, appended digits; random.Random(0)), so that the number of distinct
   pre-token chunks grows with the size as it does in real text. Each trainer runs in a fresh
   subprocess, which reports its own peak RSS (VmHWM) and its workers' (RUSAGE_CHILDREN). The
   ru_maxrss that wait4/RUSAGE_CHILDREN give here would be useless: Linux carries the parent's
   high-water mark across fork and exec. The RSS summed over the process tree is also sampled
   every 50 ms with psutil (pages that forked workers share count once per process).
5. At scale (--scale KIND:MB:VOCAB): `gpt tokenizer train` (a fresh process, as a user runs it), HF's
   BpeTrainer and nanochat's `rustbpe` (nanochat's trainer: GPT-4 split, Rust, rayon), each in a fresh
   process, on real varied text (`python`: the Python sources on this machine; `mixed`: its other
   text files, C headers, HTML, JavaScript, Perl, docs) or text without spaces (`nospace`, CJK
   ideographs, see tokbench/corpora.py). Wall seconds, start-up included, and the peak over the
   process tree of the summed RSS and of the summed PSS (shared pages divided among the processes
   that share them: the tree's real footprint), sampled every 50 ms.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

# tokbench/ sits beside this script: Python finds it when the script runs by path
from tokbench.big import bench_big
from tokbench.common import MB, log
from tokbench.compression import bench_compression
from tokbench.corpora import SCALE_SUFFIXES
from tokbench.encode import bench_encode
from tokbench.report import (
    big_rows,
    compression_rows,
    encode_rows,
    machine,
    print_notes,
    print_table,
    scale_rows,
    training_rows,
)
from tokbench.scale import SCALE_TRAINERS, bench_scale
from tokbench.trainers import corpus_texts, hf_parallel, train_hf
from tokbench.training import bench_training, split_corpus

from gptcli.tokenizers.bpe_train import count_chunks
from gptcli.tokenizers.patterns import GPT4_PATTERN


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path("toy_data/shakespeare.txt"))
    p.add_argument("--vocab-size", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3, help="runs per timing; the best is reported (default 3)")
    p.add_argument(
        "--encode-mb", type=float, default=20, help="size of the encode benchmark's text (default 20)"
    )
    p.add_argument(
        "--big-mb", type=float, default=100, help="synthetic corpus for peak memory; 0 skips (default 100)"
    )
    p.add_argument("--no-hf-big", action="store_true", help="do not train HF on the big corpus")
    p.add_argument(
        "--scale",
        nargs="*",
        default=[],
        metavar="KIND:MB:VOCAB",
        help="train at scale on python|mixed|nospace corpora of MB megabytes, e.g. python:100:32000 nospace:20:5000",
    )
    p.add_argument(
        "--trainers",
        default=",".join(SCALE_TRAINERS),
        help="for --scale: which of ours,hf,rustbpe (default all)",
    )
    p.add_argument("--scale-only", action="store_true", help="run only the --scale part")
    p.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    return p.parse_args()


def run_scale_part(args: argparse.Namespace, data: bytes, workdir: Path) -> list[dict]:
    results = []
    for spec in args.scale:
        kind, mb, vocab = spec.split(":")
        if kind not in (*SCALE_SUFFIXES, "nospace"):
            raise SystemExit(f"error: --scale kind {kind!r} is not one of python, mixed, nospace")
        trainers = args.trainers.split(",")
        results.append(bench_scale(kind, data.decode("utf-8"), float(mb), int(vocab), trainers, workdir))
    return results


def run_all(args: argparse.Namespace, data: bytes, workdir: Path) -> dict:
    if args.scale_only:
        return {"machine": machine(), "scale": run_scale_part(args, data, workdir)}
    train_bytes, heldout_bytes = split_corpus(data)
    train_path = workdir / "train.txt"
    train_path.write_bytes(train_bytes)
    (workdir / "heldout.txt").write_bytes(heldout_bytes)
    heldout = heldout_bytes.decode("utf-8")
    r: dict = {"corpus": str(args.corpus), "vocab_size": args.vocab_size, "repeats": args.repeats}
    r["machine"] = machine()
    r["train_mb"] = len(train_bytes) / MB
    ours, hf, r["training"] = bench_training(train_path, args.vocab_size, args.repeats)
    log("training HF with GPT-4's split, from the file and from text blocks ...")
    hf_variants = {
        "HF GPT-2 split, train(file)": hf,
        "HF GPT-4 split, train(file)": train_hf(train_path, args.vocab_size, "gpt4"),
        "HF GPT-4 split, 1 MB blocks": train_hf(train_path, args.vocab_size, "gpt4", blocks=True),
    }
    r["compression"] = bench_compression(ours, hf_variants, heldout)
    r["encode"] = bench_encode(ours, hf, heldout, args.encode_mb, args.repeats)
    if args.big_mb > 0:
        r["corpus_distinct_chunks"] = len(count_chunks(corpus_texts(args.corpus), GPT4_PATTERN))
        r["big"] = bench_big(data.decode("utf-8"), args.big_mb, args.vocab_size, workdir, not args.no_hf_big)
    r["scale"] = run_scale_part(args, data, workdir)
    return r


def main() -> int:
    args = parse_args()
    if not args.corpus.is_file():
        print(f"error: corpus {args.corpus} not found; run `make data` to fetch it", file=sys.stderr)
        return 1
    hf_parallel(True)  # set explicitly, so that HF does not warn when our trainer forks its pool
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        r = run_all(args, args.corpus.read_bytes(), Path(tmp))
    header = ("benchmark (ours | HF)", "ours", "HF", "ours/HF", "target", "met")
    if args.scale_only:
        rows = scale_rows(r)
    else:
        rows = training_rows(r) + compression_rows(r) + encode_rows(r) + (big_rows(r) if "big" in r else [])
        rows += scale_rows(r)
    print_table([header, *rows])
    if not args.scale_only:
        print_notes(r)
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
