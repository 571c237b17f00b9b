"""A corpus in any of its formats, read as documents: what every command that reads data reads through.

    >>> sources = find_sources(["books/", "web.jsonl.zst", "wiki.parquet", "hf_dataset/"])
    >>> reader = CorpusReader(sources, SourceOptions(text_field="text", split="train"))
    >>> for text, ends_document in reader:
    ...     ...  # a plain-text file arrives in blocks of about 4 MiB; a record in one piece
    >>> reader.report()  # ['2 empty document(s) skipped', ...]

A source is one of
- a plain-text file (`.txt`, `.md`, ..., no suffix): one document, read in blocks cut at safe points
  (`gptcli.data.corpus`); invalid UTF-8 is read as U+FFFD and counted;
- a JSON Lines file (`.jsonl`, `.json`), or a JSON array of objects: one document per record, its
  text in the field `text_field` (see `gptcli.data.records`);
- a Parquet file: one document per row of the column `text_field`, read a batch of rows at a time;
- a folder that Hugging Face `datasets` wrote with `save_to_disk`: a `Dataset` (state.json,
  dataset_info.json, data-*.arrow) or a `DatasetDict` (dataset_dict.json, one folder per split;
  `split` picks one, and is needed when there are several); its Arrow files are read in the order
  state.json lists them, record batch by record batch, without importing `datasets`;
- any of the text and JSON files compressed with gzip (`.gz`) or zstandard (`.zst`): the suffix
  inside decides the format (`a.jsonl.gz` is JSON Lines, `b.txt.zst` and `c.gz` plain text), and
  the file is decompressed as a stream.

Empty documents are skipped and counted. A bad record (invalid JSON, not an object, no such field,
a value that is not a string) or an unreadable file stops the reading with a one-line GptError that
names the file and the line or row, unless `skip_bad_records`: then it is counted, its message kept
(the first few), and `report()` tells the caller. Nothing is dropped silently. The pieces come in
the same order on every run, so a consumer can count them to resume.

pyarrow (Parquet, HF folders) and zstandard (.zst) are the optional extra `gptcli[data]`, imported
only when such a source is met.
"""

import glob
import gzip
import importlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gptcli.data.corpus import BLOCK_BYTES, TextReader
from gptcli.data.records import UnreadableFile, arrow_texts, json_texts, parquet_texts
from gptcli.errors import GptError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ".csv", ".tsv", ".py", ".html", ".xml", ""}
JSON_SUFFIXES = {".jsonl", ".json"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
CORPUS_SUFFIXES = TEXT_SUFFIXES | JSON_SUFFIXES | {".parquet"} | set(COMPRESSIONS)
MAX_PROBLEMS_KEPT = 5  # messages of skipped records kept for the report


@dataclass(frozen=True)
class SourceOptions:
    text_field: str = "text"  # the JSON field / Parquet or Arrow column holding each document
    split: str | None = None  # the split of an HF DatasetDict folder
    skip_bad_records: bool = False  # count and skip bad records instead of stopping at the first

    @classmethod
    def of(cls, config) -> "SourceOptions":
        """The options of a config that has them (TokenizerTrainConfig, TrainConfig)."""
        return cls(config.text_field, config.split, config.skip_bad_records)


@dataclass(frozen=True)
class Source:
    """What one source is on disk: how to read it, and the files that hold its data."""

    path: Path  # the file or dataset folder (for a DatasetDict: the chosen split's folder)
    format: str  # text | json | parquet | arrow
    compression: str | None  # gzip | zstd | None
    files: tuple[Path, ...]  # in reading order: the file itself, or a dataset's Arrow files

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


# ---- finding sources


def find_sources(paths: list[str | Path]) -> list[Path]:
    """Files, directories (searched recursively), glob patterns and HF dataset folders -> unique sources.

    Each directory's and each pattern's sources are sorted; the order of `paths` is kept. An HF
    dataset folder is one source, never searched inside.
    """
    if not paths:
        raise GptError("no corpus given: pass one or more files or directories")
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if any(ch in str(raw) for ch in "*?[") and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            usable = [m for m in matches if m.is_file() or is_dataset_folder(m)]
            if not usable:
                raise GptError(f"no files match {str(raw)!r}")
            found.extend(usable)
        elif is_dataset_folder(p):
            found.append(p)
        elif p.is_dir():
            inside = _search(p)
            if not inside:
                suffixes = ", ".join(sorted(s for s in CORPUS_SUFFIXES if s))
                raise GptError(f"directory {str(p)!r} holds no text files or datasets ({suffixes})")
            found.extend(inside)
        elif p.is_file():
            found.append(p)
        else:
            raise GptError(f"corpus file not found: {str(raw)!r}")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if sum(_bytes_on_disk(f) for f in unique) == 0:
        raise GptError("the corpus is empty: " + ", ".join(str(f) for f in unique))
    return unique


def is_dataset_folder(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk: a DatasetDict or a Dataset."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _search(folder: Path) -> list[Path]:
    """Corpus files and dataset folders under `folder`, sorted; hidden files and folders skipped."""
    found = []
    for here, dirs, files in os.walk(folder):
        here_path = Path(here)
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if is_dataset_folder(here_path / d):
                found.append(here_path / d)  # one source: its own JSON and Arrow files are not corpus files
            else:
                kept.append(d)
        dirs[:] = kept
        found.extend(
            here_path / f
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in CORPUS_SUFFIXES
        )
    return sorted(found)


def _bytes_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*.arrow"))
    return path.stat().st_size


# ---- what a source is


def describe_source(path: Path, options: SourceOptions = SourceOptions()) -> Source:
    """Its format and data files; a missing split or extra is a GptError here, before any reading."""
    if path.is_dir():
        _require("pyarrow", "Hugging Face dataset folders")
        folder = _split_folder(path, options.split)
        return Source(folder, "arrow", None, tuple(_arrow_files(folder)))
    suffix = path.suffix.lower()
    compression = COMPRESSIONS.get(suffix)
    inner = Path(path.stem).suffix.lower() if compression else suffix
    form = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}.get(inner, "text")
    if compression and form in ("parquet", "arrow"):
        raise GptError(f"{path}: a compressed {form} file cannot be streamed; decompress it first")
    if form in ("parquet", "arrow"):
        _require("pyarrow", f".{form} files")
    if compression == "zstd":
        _require("zstandard", ".zst files")
    return Source(path, form, compression, (path,))


def _split_folder(folder: Path, split: str | None) -> Path:
    """The Dataset folder to read: `folder` itself, or the chosen split of a DatasetDict."""
    if not (folder / "dataset_dict.json").is_file():
        return folder
    splits = _read_json(folder / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not splits:
        raise GptError(f"{folder}/dataset_dict.json lists no splits: not a readable datasets folder")
    names = ", ".join(map(str, splits))
    if split is None:
        if len(splits) > 1:
            raise GptError(f"{folder} is a DatasetDict with splits {names}: choose one with --split")
        split = splits[0]
    elif split not in splits:
        raise GptError(f"{folder} has no split {split!r} (its splits: {names}); use --split")
    if not is_dataset_folder(folder / split):
        raise GptError(f"{folder / split} (split {split!r}) is not a readable datasets folder")
    return folder / split


def _arrow_files(folder: Path) -> list[Path]:
    """The Arrow files of a Dataset folder, in the order its state.json lists them."""
    entries = _read_json(folder / "state.json").get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
        raise GptError(f"{folder}/state.json has no list of data files: not a readable datasets folder")
    files = [folder / e["filename"] for e in entries]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise GptError(f"{folder}: data file(s) listed in state.json are missing: {', '.join(missing)}")
    return files


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(value, dict):
        raise GptError(f"{path} is not a JSON object")
    return value


def _require(module: str, what: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GptError(f"reading {what} needs {module}: pip install 'gptcli[data]'") from None


@contextmanager
def open_decompressed(path: Path, compression: str | None) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(the decompressed byte stream, the file on disk, whose position tells the progress)."""
    with open(path, "rb") as raw:
        if compression is None:
            yield raw, raw
            return
        if compression == "gzip":
            stream: BinaryIO = gzip.GzipFile(fileobj=raw)
            errors: tuple = (OSError, EOFError, zlib.error)
        else:
            zstandard = _require("zstandard", ".zst files")
            # read_across_frames: files made by concatenating frames (pzstd, `cat a.zst b.zst`) read whole
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
            stream, errors = io.BufferedReader(reader), (zstandard.ZstdError, OSError)
        with stream:
            try:
                yield stream, raw
            except errors as e:
                raise UnreadableFile(f"{path}: not a readable {compression} file ({e})") from None


# ---- reading


class CorpusReader:
    """The documents of the sources, in order, as (text piece, ends_document).

    A plain-text document comes in blocks of about `block_bytes` cut at safe points, the last with
    True; each record (JSON) or row (Parquet, Arrow) is one piece with True. `total_bytes` and
    `bytes_read` are bytes on disk (compressed, for .gz/.zst), for progress. The counts and
    `problems` grow as the reading goes; `report()` says what a caller should warn about.
    """

    def __init__(
        self, sources: list[Path], options: SourceOptions = SourceOptions(), block_bytes: int | None = None
    ):
        self.options = options
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.sources = [describe_source(Path(s), options) for s in sources]
        self.total_bytes = sum(s.bytes for s in self.sources)
        self._reset()

    def _reset(self) -> None:
        self.bytes_read = 0
        self.documents = self.empty_documents = self.invalid_bytes = self.bad_records = 0
        self.problems: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        self._reset()
        for source in self.sources:
            start, size = self.bytes_read, source.bytes
            try:
                yield from self._pieces(source, start)
            except UnreadableFile as e:  # counted as one bad record, when skipping
                if not self.options.skip_bad_records:
                    raise GptError(str(e)) from None
                self._skipped(f"{e}; skipped the rest of the file")
            self.bytes_read = start + size
        if self.documents == 0:
            raise GptError(
                "the corpus holds no text: "
                f"{self.empty_documents} empty document(s), {self.bad_records} bad record(s) skipped"
            )

    def report(self) -> list[str]:
        """Warning lines: invalid UTF-8, empty documents skipped, bad records skipped."""
        lines = []
        if self.invalid_bytes:
            lines.append(
                f"{self.invalid_bytes} byte(s) of the corpus were not valid UTF-8 and were read as U+FFFD"
            )
        if self.empty_documents:
            lines.append(f"{self.empty_documents} empty document(s) skipped")
        if self.bad_records:
            lines.append(f"{self.bad_records} bad record(s) skipped; first: " + " | ".join(self.problems))
        return lines

    # RecordLog: what the record readers report
    def bad(self, message: str) -> None:
        if not self.options.skip_bad_records:
            raise GptError(message)
        self._skipped(message)

    def invalid(self, n_bytes: int) -> None:
        self.invalid_bytes += n_bytes

    def _skipped(self, message: str) -> None:
        self.bad_records += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(message)

    def _pieces(self, source: Source, start: int) -> Iterator[tuple[str, bool]]:
        field = self.options.text_field
        if source.format in ("text", "json"):
            path = source.files[0]
            with open_decompressed(path, source.compression) as (stream, raw):
                if source.format == "text":
                    yield from self._text_document(TextReader(path, self.block_bytes, stream), raw, start)
                else:
                    for text in json_texts(stream, str(path), field, self):
                        self.bytes_read = start + raw.tell()
                        yield from self._record(text)
            return
        done = 0  # bytes of the source's files already read
        for path in source.files:
            size = path.stat().st_size
            batches = parquet_texts if source.format == "parquet" else arrow_texts
            for texts, fraction in batches(path, field, self):
                self.bytes_read = start + done + int(size * fraction)
                for text in texts:
                    yield from self._record(text)
            done += size

    def _text_document(self, reader: TextReader, raw: BinaryIO, start: int) -> Iterator[tuple[str, bool]]:
        """The blocks of one document, the last marked as its end (one block of look-ahead)."""
        previous = None
        try:
            for block in reader:
                self.bytes_read = start + raw.tell()
                if previous is not None:
                    yield previous, False
                previous = block
        except Exception:  # a damaged .gz/.zst: when skipping, what was read stays a whole document
            if previous is not None and self.options.skip_bad_records:
                self.documents += 1
                yield previous, True
            raise
        finally:
            self.invalid_bytes += reader.invalid_bytes
        if previous is None:
            self.empty_documents += 1
            return
        self.documents += 1
        yield previous, True

    def _record(self, text: str) -> Iterator[tuple[str, bool]]:
        if not text:
            self.empty_documents += 1
            return
        self.documents += 1
        yield text, True
