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
   ideographs, see write_nospace_corpus). Wall seconds, start-up included, and the peak over the
   process tree of the summed RSS and of the summed PSS (shared pages divided among the processes
   that share them: the tree's real footprint), sampled every 50 ms.
"""

import argparse
import json
import os
import platform
import random
import re
import resource
import string
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import tokenizers
from measure import run_measured  # same folder
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader
from gptcli.tokenizers.base import ENDOFTEXT
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.bpe_train import PRETOKENIZE_BLOCK_BYTES, count_chunks
from gptcli.tokenizers.patterns import GPT4_PATTERN
from gptcli.tokenizers.train import train_tokenizer

MB = 1_000_000
TRAIN_FRACTION = 0.9
BLOCK_CHARS = 1 << 20  # text blocks fed to HF's train_from_iterator
PERTURB_RATE = 0.1  # fraction of the words changed in the synthetic corpus
# Oniguruma (HF) reads `{1,3}+` as "{1,3}, one or more times", not as possessive; plain `{1,3}`
# splits exactly as GPT4_PATTERN does in the `regex` module and in tiktoken.
HF_GPT4_PATTERN = GPT4_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
TARGET_TRAIN_RATIO = 1.5  # ours/HF seconds, at most
TARGET_COMPRESSION_DIFF = 0.01  # |ours/HF bytes per token - 1|, at most
TARGET_ENCODE_RATIO = 3.0  # ours/HF MB/s, at least
TARGET_BIG_PEAK_MB = 2000  # peak RSS training on the big corpus, below


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


# --- the two trainers -------------------------------------------------------------------------------


def train_ours(path: Path, vocab_size: int) -> BPETokenizer:
    return train_tokenizer(TokenizerTrainConfig(files=[str(path)], vocab_size=vocab_size)).tokenizer


def new_hf(split: str) -> Tokenizer:
    """split 'gpt2': ByteLevel's built-in regex (the usual HF setup); 'gpt4': the same split as ours."""
    tok = Tokenizer(models.BPE())
    if split == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        gpt4_split = pre_tokenizers.Split(Regex(HF_GPT4_PATTERN), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([gpt4_split, byte_level])
    tok.decoder = decoders.ByteLevel()
    return tok


def text_blocks(path: Path) -> Iterator[str]:
    """The file's text in blocks of about BLOCK_CHARS, each ending at a newline."""
    text = path.read_text(encoding="utf-8")
    start = 0
    while start < len(text):
        end = text.find("\n", start + BLOCK_CHARS) + 1 or len(text)
        yield text[start:end]
        start = end


def corpus_texts(path: Path) -> Iterator[str]:
    """The file's text in the blocks `gpt tokenizer train` pre-tokenizes."""
    return (text for text, _ in CorpusReader([path], block_bytes=PRETOKENIZE_BLOCK_BYTES))


def train_hf(path: Path, vocab_size: int, split: str = "gpt2", blocks: bool = False) -> Tokenizer:
    """HF's usual `train(files)` (line by line), or with blocks=True `train_from_iterator` on text blocks."""
    tok = new_hf(split)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[ENDOFTEXT],
        show_progress=False,
    )
    if blocks:
        tok.train_from_iterator(text_blocks(path), trainer)
    else:
        tok.train([str(path)], trainer)
    return tok


def hf_parallel(enabled: bool) -> None:
    """HF reads this variable on every call: 'false' keeps encode_batch (and training) on one thread."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"


# --- 1. training time -------------------------------------------------------------------------------


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


# --- 2. compression ---------------------------------------------------------------------------------


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


# --- 3. encode throughput ---------------------------------------------------------------------------


@dataclass
class EncodeCase:
    name: str
    arg: str  # the input: "text" (one string) or "lines"
    hf_parallel: bool
    ours: Callable
    hf: Callable
    has_target: bool


def encode_cases(ours: BPETokenizer, hf: Tokenizer) -> list[EncodeCase]:
    def ours_loop(lines: list[str]) -> list[list[int]]:
        return [ours.encode_ordinary(line) for line in lines]

    def ours_batch_1(lines: list[str]) -> list[list[int]]:
        return ours.encode_batch(lines, num_threads=1)

    def hf_encode(text: str) -> list[int]:
        return hf.encode(text, add_special_tokens=False).ids

    batch, fast = hf.encode_batch, hf.encode_batch_fast
    return [
        EncodeCase(
            "text, 1 thread: encode_ordinary | encode", "text", False, ours.encode_ordinary, hf_encode, True
        ),
        EncodeCase("lines, 1 thread: encode_batch | encode_batch", "lines", False, ours_batch_1, batch, True),
        EncodeCase(
            "lines, 1 thread: encode_ordinary loop | encode_batch", "lines", False, ours_loop, batch, False
        ),
        EncodeCase(
            "lines, 1 thread: encode_batch | encode_batch_fast", "lines", False, ours_batch_1, fast, False
        ),
        EncodeCase(
            "lines, all cores: encode_batch | encode_batch", "lines", True, ours.encode_batch, batch, True
        ),
        EncodeCase(
            "lines, all cores: encode_batch | encode_batch_fast",
            "lines",
            True,
            ours.encode_batch,
            fast,
            False,
        ),
    ]


def best_mb_per_s(fn: Callable, arg, n_bytes: int, repeats: int) -> float:
    return n_bytes / min(timed(fn, arg)[0] for _ in range(repeats)) / MB


def bench_encode(ours: BPETokenizer, hf: Tokenizer, heldout: str, target_mb: float, repeats: int) -> dict:
    copies = max(1, round(target_mb * MB / len(heldout.encode("utf-8"))))
    inputs = {"text": heldout * copies}
    inputs["lines"] = inputs["text"].splitlines(keepends=True)
    n_bytes = len(inputs["text"].encode("utf-8"))
    numbers: dict = {"text_mb": n_bytes / MB, "lines": len(inputs["lines"]), "cases": []}
    for case in encode_cases(ours, hf):
        log(f"encoding {n_bytes / MB:.1f} MB, {case.name} ...")
        hf_parallel(case.hf_parallel)
        ours_mbs = best_mb_per_s(case.ours, inputs[case.arg], n_bytes, repeats)
        hf_mbs = best_mb_per_s(case.hf, inputs[case.arg], n_bytes, repeats)
        ratio = ours_mbs / hf_mbs
        numbers["cases"].append(
            {
                "name": case.name,
                "ours_mb_s": ours_mbs,
                "hf_mb_s": hf_mbs,
                "ratio": ratio,
                "target": case.has_target,
            }
        )
    hf_parallel(True)
    return numbers


# --- 4. peak memory on a big synthetic corpus --------------------------------------------------------


def perturb(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    letter = rng.choice(string.ascii_lowercase)
    kind = rng.randrange(6)
    if kind == 0:
        return word.upper()
    if kind == 1:
        return word[:i] + word[i].swapcase() + word[i + 1 :]
    if kind == 2:
        return word[:i] + letter + word[i + 1 :]
    if kind == 3:
        return word[:i] + letter + word[i:]
    if kind == 4 and len(word) > 1:
        return word[:i] + word[i + 1 :]
    return word + str(rng.randrange(100))


def synthesize_corpus(source: str, path: Path, target_bytes: int) -> None:
    """Cycle over the source's lines, perturbing PERTURB_RATE of the words, until target_bytes are written."""
    rng = random.Random(0)
    lines = source.splitlines()
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            block = []
            for line in lines:
                words = [perturb(w, rng) if w and rng.random() < PERTURB_RATE else w for w in line.split(" ")]
                block.append(" ".join(words) + "\n")
            data = "".join(block)[: target_bytes - written]
            f.write(data)
            written += len(data.encode("utf-8"))


CHILD_CODE = (
    "import sys; sys.path.insert(0, {dir!r}); import bench_tokenizer as b; b.child_main(sys.argv[1:])"
)


def own_peak_rss_bytes() -> int:
    """VmHWM: this process's peak RSS since its exec (ru_maxrss would include the parent's, see the top)."""
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
    code = CHILD_CODE.format(dir=str(Path(__file__).resolve().parent))
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


# --- at scale: real varied text and text without spaces, against HF and rustbpe ---------------------

# The corpora are built from what is on this machine, deterministically (sorted, then shuffled with
# a fixed seed): "python" is the Python sources of this interpreter's stdlib and site-packages,
# "mixed" the other text files (C/C++ headers, HTML, JavaScript, Perl, Markdown, JSON, ...) under
# /usr and the venv, and "nospace" is --corpus with its words mapped to 1-3 CJK ideographs (a
# fixed, Zipf-weighted choice per word) and most spaces, punctuation and line breaks dropped, so
# that a letter chunk runs for a whole sentence or speech (tens to hundreds of characters).
SCALE_SUFFIXES = {
    "python": {".py"},
    "mixed": {
        ".h",
        ".c",
        ".hpp",
        ".cpp",
        ".cuh",
        ".html",
        ".js",
        ".md",
        ".rst",
        ".txt",
        ".pm",
        ".pl",
        ".xml",
        ".yaml",
        ".json",
    },
}
SCALE_TRAINERS = ("ours", "hf", "rustbpe")
TARGET_SCALE_RATIO = 1.0  # ours/HF, seconds and peak memory, at most

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


def scale_files(kind: str, target_bytes: int) -> list[Path]:
    """The files of one corpus kind, in a fixed shuffled order, up to target_bytes in all."""
    if kind == "python":
        roots = {Path(p) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"])}
    else:
        roots = {Path("/usr"), Path(sys.prefix)}
    found = sorted(
        {
            p
            for root in roots
            for p in root.rglob("*")
            if p.suffix in SCALE_SUFFIXES[kind] and p.is_file() and not p.is_symlink()
        }
    )
    random.Random(0).shuffle(found)
    files, total = [], 0
    for p in found:
        files.append(p)
        total += p.stat().st_size
        if total >= target_bytes:
            break
    return files


def write_scale_corpus(kind: str, source: str, path: Path, target_bytes: int) -> None:
    if kind == "nospace":
        write_nospace_corpus(source, path, target_bytes)
        return
    written = 0
    with open(path, "wb") as out:
        for f in scale_files(kind, target_bytes):
            # valid UTF-8 only (a few stdlib test files are Latin-1): HF's trainer stops at a bad byte
            data = f.read_bytes().decode("utf-8", "replace").encode("utf-8")[: target_bytes - written]
            data = data.decode("utf-8", "ignore").encode(
                "utf-8"
            )  # the last file may be cut inside a character
            out.write(data)
            written += len(data)
    if written < target_bytes:
        log(f"note: this machine has only {written / MB:.0f} MB of {kind} text; the corpus is that size")


def write_nospace_corpus(source: str, path: Path, target_bytes: int) -> None:
    rng = random.Random(0)
    ideographs = [chr(0x4E00 + i) for i in range(6000)]
    weights = [1 / (rank + 10) for rank in range(len(ideographs))]
    words: dict[str, str] = {}
    punctuation = dict(zip(",.;:!?", "，。；：！？"))
    written, rotation = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            for speech in source.split("\n\n"):
                parts = []
                for token in re.findall(r"[A-Za-z']+|[,.;:!?]|\n", speech):
                    if token in punctuation:
                        if rng.random() < 0.15:
                            parts.append(punctuation[token])
                    elif token == "\n":
                        if rng.random() < 0.05:
                            parts.append("\n")
                    else:
                        key = f"{rotation}:{token.lower()}"  # each pass over the source maps words anew
                        if key not in words:
                            r = random.Random(key)
                            words[key] = "".join(r.choices(ideographs, weights, k=r.randint(1, 3)))
                        parts.append(words[key])
                paragraph = "".join(parts) + "\n\n"
                out.write(paragraph)
                written += len(paragraph.encode("utf-8"))
                if written >= target_bytes:
                    break
            rotation += 1


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


def scale_rows(r: dict) -> list[tuple[str, ...]]:
    rows = []
    for s in r["scale"]:
        name = f"{s['kind']} {s['corpus_mb']:.0f} MB, vocab {s['vocab_size']}"
        ours, hf, rb = s.get("ours"), s.get("hf"), s.get("rustbpe")
        for label, key, unit in (
            ("seconds", "wall_s", "s"),
            ("peak PSS", "peak_pss_mb", "MB"),
            ("peak RSS", "peak_rss_mb", "MB"),
        ):
            if ours is None:
                continue
            line = f"{name}: {label} (rustbpe {rb[key]:.1f} {unit})" if rb else f"{name}: {label}"
            if hf:
                ratio = ours[key] / hf[key]
                rows.append(
                    (
                        line,
                        f"{ours[key]:.1f}",
                        f"{hf[key]:.1f}",
                        f"{ratio:.2f}x",
                        f"<= {TARGET_SCALE_RATIO:g}x",
                        met(ratio <= TARGET_SCALE_RATIO),
                    )
                )
            else:
                rows.append((line, f"{ours[key]:.1f}", "-", "-", "-", "-"))
    return rows


# --- report -----------------------------------------------------------------------------------------


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def training_rows(r: dict) -> list[tuple[str, ...]]:
    t = r["training"]
    name = f"train, vocab {r['vocab_size']}, {r['train_mb']:.2f} MB: seconds (best of {r['repeats']})"
    ok = met(t["ratio"] <= TARGET_TRAIN_RATIO)
    return [(name, f"{t['ours_s']:.2f}", f"{t['hf_s']:.2f}", f"{t['ratio']:.2f}x", "<= 1.5x", ok)]


def compression_rows(r: dict) -> list[tuple[str, ...]]:
    c = r["compression"]
    rows = []
    for v in c["hf"]:
        ok = met(abs(v["rel_diff"]) <= TARGET_COMPRESSION_DIFF)
        ours, hf = f"{c['ours_bytes_per_token']:.4f}", f"{v['bytes_per_token']:.4f}"
        rows.append(
            (f"bytes/token, held-out; {v['name']}", ours, hf, f"{v['rel_diff']:+.2%}", "within 1%", ok)
        )
    return rows


def encode_rows(r: dict) -> list[tuple[str, ...]]:
    rows = []
    for case in r["encode"]["cases"]:
        target = ">= 3x" if case["target"] else "-"
        ok = met(case["ratio"] >= TARGET_ENCODE_RATIO) if case["target"] else "-"
        ours, hf = f"{case['ours_mb_s']:.2f}", f"{case['hf_mb_s']:.2f}"
        rows.append((f"MB/s, {case['name']}", ours, hf, f"{case['ratio']:.2f}x", target, ok))
    return rows


def big_rows(r: dict) -> list[tuple[str, ...]]:
    b = r["big"]
    hf = b.get("hf")
    label = f"train on {b['corpus_mb']:.0f} MB synthetic"

    def row(what: str, key: str, fmt: str, target: str = "-", ok: str = "-") -> tuple[str, ...]:
        has_hf = bool(hf and hf.get(key))
        hf_cell = format(hf[key], fmt) if has_hf else "-"
        ratio = f"{b['ours'][key] / hf[key]:.2f}x" if has_hf else "-"
        return (f"{label}: {what}", format(b["ours"][key], fmt), hf_cell, ratio, target, ok)

    ok = met(b["ours"]["peak_rss_mb"] < TARGET_BIG_PEAK_MB)
    return [
        row("wall seconds (subprocess)", "wall_s", ".1f"),
        row("peak RSS MB, trainer process", "peak_rss_mb", ".0f", "< 2000", ok),
        row("peak RSS MB, largest worker", "workers_peak_rss_mb", ".0f"),
        row("peak RSS MB, sum over tree", "peak_tree_rss_mb", ".0f"),
    ]


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_notes(r: dict) -> None:
    m, t, c, e = r["machine"], r["training"], r["compression"], r["encode"]
    ours_runs = ", ".join(f"{s:.2f}" for s in t["ours_runs_s"])
    hf_runs = ", ".join(f"{s:.2f}" for s in t["hf_runs_s"])
    hf_tokens = ", ".join(f"{v['tokens']:,}" for v in c["hf"])
    hf_trips = ", ".join(str(v["roundtrip"]) for v in c["hf"])
    notes = [
        f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, "
        f"tokenizers {m['tokenizers']}, tiktoken {m['tiktoken']}",
        f"training: vocab sizes ours {t['ours_vocab']}, HF {t['hf_vocab']}; "
        f"all runs (s): ours {ours_runs}; HF {hf_runs}",
        f"compression: {c['heldout_bytes']:,} held-out bytes; tokens: ours {c['ours_tokens']:,}, "
        f"HF (rows above, in order) {hf_tokens}; round trips ok: ours {c['ours_roundtrip']}, HF {hf_trips}",
        f"encode: held-out repeated to {e['text_mb']:.1f} MB = {e['lines']:,} lines; MB = 10^6 bytes; "
        f"HF: the GPT-2-split tokenizer; 'all cores': ours one thread per core for long texts (one thread for lines), HF rayon on {m['cores']}",
    ]
    if "big" in r:
        b = r["big"]
        hf_s = f", HF {b['hf']['train_s']:.1f}" if "hf" in b else ""
        notes.append(
            f"big corpus: {b['corpus_mb']:.1f} MB, {b['distinct_chunks']:,} distinct pre-token chunks "
            f"(the whole Shakespeare corpus: {r['corpus_distinct_chunks']:,}); "
            f"training seconds inside the subprocess: ours {b['ours']['train_s']:.1f}{hf_s}"
        )
    print()
    print("\n".join(notes))


# --- main -------------------------------------------------------------------------------------------


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


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__,
    }


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
