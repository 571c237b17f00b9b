"""The corpora the big and at-scale parts train on, written deterministically: Shakespeare with its
words perturbed (the big corpus), the text files on this machine (`python`, `mixed`) and text
without spaces (`nospace`)."""

import random
import re
import string
import sys
import sysconfig
from pathlib import Path

from tokbench.common import MB, log

PERTURB_RATE = 0.1  # fraction of the words changed in the synthetic corpus


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
