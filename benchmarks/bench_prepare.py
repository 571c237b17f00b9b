"""Benchmark `gpt data prepare` against raw tiktoken on the same texts and cores, side by side, in one run.

    python benchmarks/bench_prepare.py [--mb 1000] [--corpus FILE.jsonl] [--gpt2 DIR] [--workers N]
                                       [--repeats 1] [--dir DIR] [--json]
    python benchmarks/bench_prepare.py --mb 20      # a quick check (a minute or so on 2 cores)

Corpus: --corpus (JSON Lines with a "text" field), or --mb MB (10^6 bytes of UTF-8 text) of JSON
Lines generated once into --dir (default $GPTCLI_CACHE_DIR or ~/.cache/gptcli, under bench_prepare):
one record per Python source file of this interpreter's site-packages, sorted by path, cycled
(with a one-line header naming the pass) until there is enough. Deterministic on a given machine.

Tokenizer: GPT-2's vocabulary through our tokenizer when --gpt2 names a folder with its files
(vocab.json + merges.txt, or encoder.json + vocab.bpe). Without one (no network is assumed), a
byte-level BPE with GPT-2's split pattern and a 32,768 vocabulary is trained on a 4 MB slice of
the corpus once, and kept in --dir. The peer is a raw `tiktoken.Encoding` built from the same
ranks and pattern.

Measured, each in a fresh subprocess, alternately, best of --repeats:
- ours: `prepare_store` (what `gpt data prepare` runs: read, encode in --workers processes, write
  shards with checksums, move the 10% validation tail), timed around the call;
- tiktoken: the same JSON Lines read and parsed in batches of 8 MB of text, each batch encoded
  with `encode_ordinary_batch(texts, num_threads=--workers)`, the ids counted (not stored; the
  counts are checked against ours, which adds one end-of-text per document);
- ours end to end: the `gpt data prepare ... --quiet` command, interpreter start included.
Throughput is MB of text (UTF-8) per second; CPU s is the user + system time of the whole
process tree (interpreter start included), which shows the pipeline's overhead even on a busy machine. Peak memory is the highest sum of RSS over the
process tree (the process and its workers), sampled every 50 ms with psutil; forked workers'
shared pages count once per process, so the sum overstates what the tree really holds. The ratio
ours / tiktoken is printed with the target (at least TARGET_RATIO).
"""

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from measure import run_measured  # same folder

MB = 1_000_000
TARGET_RATIO = 0.9  # ours / tiktoken MB/s, at least
SLICE_BYTES = 4 * MB  # corpus text the fallback tokenizer is trained on
FALLBACK_VOCAB = 32768
PEER_BATCH_CHARS = 8 * MB

OURS = """
import json, sys, time
from gptcli.data.prepare import prepare_store
from gptcli.data.sources import find_sources
from gptcli.tokenizers import load_tokenizer
corpus, tokenizer, out, workers = sys.argv[1:]
tok = load_tokenizer(tokenizer)
sources = find_sources([corpus])
start = time.perf_counter()
store = prepare_store(out, sources, tok, workers=int(workers), overwrite=True).store
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": len(store.train) + len(store.val)}))
"""

PEER = """
import json, sys, time
import tiktoken
from gptcli.tokenizers import load_tokenizer
corpus, tokenizer, workers, batch_chars = sys.argv[1:]
tok = load_tokenizer(tokenizer)
ranks = {tok.token_bytes(i): i for i in range(tok.n_ordinary)}
enc = tiktoken.Encoding("peer", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens)
start = time.perf_counter()
tokens, documents, batch, size = 0, 0, [], 0
with open(corpus, encoding="utf-8") as f:
    for line in f:
        text = json.loads(line)["text"]
        documents += 1
        batch.append(text)
        size += len(text)
        if size >= int(batch_chars):
            tokens += sum(map(len, enc.encode_ordinary_batch(batch, num_threads=int(workers))))
            batch, size = [], 0
if batch:
    tokens += sum(map(len, enc.encode_ordinary_batch(batch, num_threads=int(workers))))
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens, "documents": documents}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_dir() -> Path:
    if env := os.environ.get("GPTCLI_CACHE_DIR"):
        return Path(env) / "bench_prepare"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptcli" / "bench_prepare"


# ---- inputs


def generate_corpus(folder: Path, mb: int) -> tuple[Path, int]:
    """--mb MB of JSON Lines from site-packages' Python files (written once) -> (path, text bytes)."""
    path = folder / f"corpus_{mb}mb.jsonl"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        return path, json.loads(sidecar.read_text())["text_bytes"]
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted(p for p in site.rglob("*.py") if p.is_file())
    log(f"writing a {mb} MB corpus from {len(files)} Python files under {site} -> {path}")
    folder.mkdir(parents=True, exist_ok=True)
    text_bytes, goal, passes = 0, mb * MB, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        while text_bytes < goal:
            for f in files:
                text = f.read_text(encoding="utf-8", errors="replace")
                if passes:
                    text = f"# pass {passes}: {f.name}\n{text}"
                if not text:
                    continue
                out.write(json.dumps({"text": text}) + "\n")
                text_bytes += len(text.encode("utf-8"))
                if text_bytes >= goal:
                    break
            passes += 1
    tmp.replace(path)
    sidecar.write_text(json.dumps({"text_bytes": text_bytes}))
    return path, text_bytes


def text_bytes_of(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(len(json.loads(line)["text"].encode("utf-8")) for line in f)


def tokenizer_for(args, corpus: Path) -> tuple[Path, str]:
    """(our tokenizer file, what it is): GPT-2's from --gpt2, else one trained on a slice, kept."""
    from gptcli.config import TokenizerTrainConfig
    from gptcli.data.tokenizer_corpus import train_tokenizer
    from gptcli.tokenizers import load_tokenizer

    if args.gpt2:
        path = args.dir / "gpt2_tokenizer.json"
        load_tokenizer(args.gpt2).save(path)
        return path, f"GPT-2 ({args.gpt2})"
    path = args.dir / f"bpe{FALLBACK_VOCAB}_tokenizer.json"
    what = f"byte-level BPE, GPT-2 split, vocab {FALLBACK_VOCAB}, trained on a {SLICE_BYTES // MB} MB slice"
    if path.is_file():
        return path, what
    slice_path = args.dir / "slice.txt"
    with open(corpus, encoding="utf-8") as f, open(slice_path, "w", encoding="utf-8") as out:
        size = 0
        for i, line in enumerate(f):
            if i % 7:  # every 7th document: a slice from across the corpus
                continue
            text = json.loads(line)["text"]
            out.write(text)
            size += len(text)
            if size >= SLICE_BYTES:
                break
    log(f"training the fallback tokenizer ({what}) -> {path}")
    config = TokenizerTrainConfig(files=[str(slice_path)], vocab_size=FALLBACK_VOCAB, pattern="gpt2")
    train_tokenizer(config).tokenizer.save(path)
    return path, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1000, help="corpus size to generate (MB of text)")
    parser.add_argument("--corpus", type=Path, help="a JSON Lines corpus ('text' field) instead")
    parser.add_argument("--gpt2", type=Path, help="a folder with GPT-2's vocabulary files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--dir", type=Path, default=default_dir(), help="where the corpus and tokenizer are kept"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    if args.corpus:
        corpus, text_bytes = args.corpus, text_bytes_of(args.corpus)
    else:
        corpus, text_bytes = generate_corpus(args.dir, args.mb)
    tokenizer, tokenizer_what = tokenizer_for(args, corpus)
    mb = text_bytes / MB
    log(f"corpus: {corpus} ({mb:,.1f} MB of text); tokenizer: {tokenizer_what}; {args.workers} worker(s)")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        out = Path(scratch) / "store"
        runs = {
            "ours": [sys.executable, "-c", OURS, str(corpus), str(tokenizer), str(out), str(args.workers)],
            "tiktoken": [sys.executable, "-c", PEER, str(corpus), str(tokenizer), str(args.workers), str(PEER_BATCH_CHARS)],
            "ours, gpt data prepare": [
                sys.executable, "-m", "gptcli", "data", "prepare", str(corpus), "--tokenizer", str(tokenizer),
                "--out", str(out), "--workers", str(args.workers), "--overwrite", "--quiet",
            ],
        }  # fmt: skip
        for repeat in range(args.repeats):
            for name, command in runs.items():
                log(f"run {repeat + 1}/{args.repeats}: {name}")
                run = run_measured(command, capture=True, quiet=True)
                reported = json.loads(run.out) if run.out.strip().startswith("{") else {}
                seconds = reported.get("seconds", run.seconds)
                best = results.get(name)
                if best is None or seconds < best["seconds"]:
                    results[name] = {
                        "seconds": seconds,
                        "wall": run.seconds,
                        "cpu": run.cpu_seconds,
                        "peak_rss_mb": run.peak_rss / 1e6,
                        **reported,
                    }
                    results[name]["mb_per_s"] = mb / seconds
                if name != "tiktoken":  # the CLI sees the store just written as complete otherwise
                    subprocess.run(["rm", "-rf", str(out)], check=True)

    ours, peer = results["ours"], results["tiktoken"]
    if ours["tokens"] != peer["tokens"] + peer["documents"]:  # ours: an end-of-text after each document
        raise SystemExit(f"token counts differ: ours {ours['tokens']:,}, tiktoken {peer['tokens']:,} + eots")
    ratio = ours["mb_per_s"] / peer["mb_per_s"]
    print(
        f"corpus {mb:,.1f} MB of text, {ours['tokens']:,} tokens; {tokenizer_what}; {args.workers} worker(s)"
    )
    print(f"{'':26} {'MB/s':>8} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:26} {r['mb_per_s']:8.2f} {r['seconds']:8.2f} {r['cpu']:8.2f} {r['peak_rss_mb']:12.0f}")
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"ours / tiktoken: {ratio:.2f}x MB/s (target >= {TARGET_RATIO}x: {verdict})")
    if args.json:
        print(
            json.dumps(
                {"mb": mb, "workers": args.workers, "tokenizer": tokenizer_what, "ratio": ratio, **results}
            )
        )


if __name__ == "__main__":
    main()
