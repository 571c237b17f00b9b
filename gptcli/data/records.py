"""The text of each record of a JSON Lines, JSON array, Parquet or Arrow-stream file.

Each reader yields the value of one field (`text` by default) per record, in file order, and
reports what it cannot use to a `RecordLog` (in practice the `CorpusReader` of
`gptcli.data.sources`, which stops there or counts and skips, as --skip-bad-records says):

    >>> texts = list(json_texts(open("data.jsonl", "rb"), "data.jsonl", "text", log))
    # data.jsonl: {"text": "hello"}\\n{"body": "x"}\\n  ->  ["hello"], and log.bad() got
    # 'data.jsonl line 2: no "text" field (the record\\'s keys: body); use --text-field'

`json_records`, `parquet_records` and `arrow_records` yield whole records instead, each with its
place (what fine-tuning reads: conversations). A bad record is named by its place: `line N` (JSON
Lines, 1-based), `record N (0-based)` (a JSON array), `row N (0-based)` (Parquet and Arrow, counted
within the file). A file that cannot be read at all (corrupt, no such column) raises
`UnreadableFile`. pyarrow is imported only when a Parquet or Arrow file is read (the caller has
checked that it is installed).
"""

import json
import re
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Protocol

from gptcli.data.corpus import decode_utf8

UTF8_BOM = b"\xef\xbb\xbf"
ARROW_BATCH_ROWS = 8192  # Parquet rows read and converted to Python strings at a time
# a lone surrogate can only come from a \\uD800-\\uDFFF escape: check for one only when it may be there
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}


class UnreadableFile(Exception):
    """The whole file cannot be read; with --skip-bad-records it is skipped as one problem."""


class RecordLog(Protocol):
    def bad(self, message: str) -> None:
        """A record that cannot be used: raise GptError(message), or count it and go on."""

    def invalid(self, n_bytes: int) -> None:
        """`n_bytes` of invalid UTF-8 were read as U+FFFD."""


def json_texts(stream: BinaryIO, name: str, field: str, log: RecordLog) -> Iterator[str]:
    """The `field` text of each record of a JSON Lines file, or of a JSON array (see `json_records`)."""
    for where, record, escaped in _json_records(stream, name, log):
        text = _field_text(record, field, where, log)
        if text is not None:
            yield _without_lone_surrogates(text, log) if escaped else text


def json_records(stream: BinaryIO, name: str, log: RecordLog) -> Iterator[tuple[str, dict]]:
    """(place, record) for each record, whole: what fine-tuning reads (gptcli.chat.formats).

    JSON Lines are read line by line (memory bounded by the longest line); blank lines are no
    records. A JSON array (the first non-space byte is `[`) is parsed whole, so its size is bounded
    by memory: write large corpora as JSON Lines. A record that is not an object is reported bad.
    """
    for where, record, escaped in _json_records(stream, name, log):
        if not isinstance(record, dict):
            log.bad(f"{where}: the record is {_json_kind(record)}, not a JSON object")
        else:
            yield where, _without_lone_surrogates_in(record, log) if escaped else record


def _json_records(stream: BinaryIO, name: str, log: RecordLog) -> Iterator[tuple[str, object, bool]]:
    """(place, parsed record, whether its bytes hold a surrogate escape) in file order."""
    lines = iter(stream)
    for line_no, raw in enumerate(lines, 1):
        if line_no == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        if not raw.strip():
            continue
        if raw.lstrip().startswith(b"["):
            yield from _array_records(raw + stream.read(), name, log)
        else:
            yield from _line_records(chain([(line_no, raw)], enumerate(lines, line_no + 1)), name, log)
        return


def _line_records(numbered: Iterable[tuple[int, bytes]], name: str, log: RecordLog):
    for line_no, raw in numbered:
        if not raw.strip():
            continue
        where = f"{name} line {line_no}"
        line, invalid = decode_utf8(raw)
        if invalid:
            log.invalid(invalid)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            log.bad(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        yield where, record, _SURROGATE_ESCAPE.search(raw) is not None


def _array_records(raw: bytes, name: str, log: RecordLog) -> Iterator[tuple[str, object, bool]]:
    content, invalid = decode_utf8(raw)
    if invalid:
        log.invalid(invalid)
    try:
        records = json.loads(content)
    except json.JSONDecodeError as e:
        raise UnreadableFile(f"{name}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    escaped = _SURROGATE_ESCAPE.search(raw) is not None
    for i, record in enumerate(records):
        yield f"{name} record {i} (0-based)", record, escaped


def _field_text(record, field: str, where: str, log: RecordLog) -> str | None:
    """The record's text, or None after reporting why there is none."""
    if not isinstance(record, dict):
        log.bad(f"{where}: the record is {_json_kind(record)}, not a JSON object")
    elif field not in record:
        keys = ", ".join(record) or "none"
        log.bad(f'{where}: no "{field}" field (the record\'s keys: {keys}); use --text-field')
    elif not isinstance(text := record[field], str):
        log.bad(f'{where}: "{field}" is {_json_kind(text)}, not a string')
    else:
        return text
    return None


def _json_kind(value) -> str:
    return JSON_KINDS.get(type(value), "a number")


def _without_lone_surrogates(text: str, log: RecordLog) -> str:
    """A "\\ud800" escape decodes to a character UTF-8 cannot hold: read it as U+FFFD, as bad bytes are."""
    fixed, n = _LONE_SURROGATE.subn("\ufffd", text)
    if n:
        log.invalid(n)
    return fixed


def _without_lone_surrogates_in(value, log: RecordLog):
    """`_without_lone_surrogates` through every string of a parsed record."""
    if isinstance(value, str):
        return _without_lone_surrogates(value, log)
    if isinstance(value, list):
        return [_without_lone_surrogates_in(v, log) for v in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates_in(k, log): _without_lone_surrogates_in(v, log) for k, v in value.items()
        }
    return value


def parquet_texts(path: Path, field: str, log: RecordLog) -> Iterator[tuple[list[str], float]]:
    """(texts of a batch of rows, fraction of the file's rows read so far), batch by batch.

    Reads only the `field` column, a few thousand rows at a time, so memory is bounded by a row group
    (what Parquet decodes at once), not by the file.
    """
    what, row = f"{path}: not a readable Parquet file", 0
    for batch, fraction in _parquet_batches(path, lambda schema: _check_column(schema, field, path), [field]):
        yield _batch_texts(batch.column(0), row, path, field, what, log), fraction
        row += batch.num_rows


def arrow_texts(path: Path, field: str, log: RecordLog) -> Iterator[tuple[list[str], float]]:
    """(texts of a record batch, fraction of the file read so far) from an Arrow IPC file.

    Hugging Face `datasets` writes Arrow's streaming format, read here record batch by record batch
    (memory bounded by one batch); a file in Arrow's random-access format is read batch by batch too.
    """
    what, row = f"{path}: not a readable Arrow file", 0
    for batch, fraction in _arrow_batches(path, lambda schema: _check_column(schema, field, path)):
        yield _batch_texts(batch.column(field), row, path, field, what, log), fraction
        row += batch.num_rows


def parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(place, row as a dict of all its columns) for each row of a Parquet file."""
    yield from _rows(path, _parquet_batches(path), f"{path}: not a readable Parquet file")


def arrow_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(place, row as a dict of all its columns) for each row of an Arrow IPC file."""
    yield from _rows(path, _arrow_batches(path), f"{path}: not a readable Arrow file")


def _rows(path: Path, batches: Iterator, what: str) -> Iterator[tuple[str, dict]]:
    row = 0
    for batch, _ in batches:
        try:
            records = batch.to_pylist()
        except Exception as e:  # e.g. a string column holding bytes that are not UTF-8
            raise UnreadableFile(f"{what} ({_first_line(e)})") from None
        for i, record in enumerate(records):
            yield f"{path} row {row + i} (0-based)", record
        row += batch.num_rows


def _parquet_batches(path: Path, check=None, columns: list[str] | None = None) -> Iterator:
    """(record batch of `columns` (all: None), fraction of the rows read); `check(schema)` first."""
    import pyarrow.parquet as pq

    what = f"{path}: not a readable Parquet file"
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a damaged file
        raise UnreadableFile(f"{what} ({_first_line(e)})") from None
    if check is not None:
        check(schema)
    n_rows, row = max(parquet.metadata.num_rows, 1), 0
    for batch in _guarded(parquet.iter_batches(batch_size=ARROW_BATCH_ROWS, columns=columns), what):
        row += batch.num_rows
        yield batch, row / n_rows


def _arrow_batches(path: Path, check=None) -> Iterator:
    """(record batch, fraction of the file read) of an Arrow IPC file; `check(schema)` first."""
    import pyarrow as pa

    what = f"{path}: not a readable Arrow file"
    with pa.OSFile(str(path)) as fh:
        size = max(fh.size(), 1)
        try:
            reader = pa.ipc.open_stream(fh)
            batches = ((batch, fh.tell() / size) for batch in reader)
        except Exception:
            try:
                reader = pa.ipc.open_file(fh)
            except Exception as e:
                raise UnreadableFile(f"{what} ({_first_line(e)})") from None
            n = reader.num_record_batches
            batches = ((reader.get_batch(i), (i + 1) / n) for i in range(n))
        if check is not None:
            check(reader.schema)
        for batch, fraction in _guarded(batches, what):
            yield batch, min(fraction, 1.0)


def _check_column(schema, field: str, path: Path) -> int:
    """The index of the text column; a file without it (or with numbers in it) is unreadable."""
    import pyarrow as pa

    index = schema.get_field_index(field)
    if index < 0:
        names = ", ".join(schema.names) or "none"
        raise UnreadableFile(f'{path}: no "{field}" column (its columns: {names}); use --text-field')
    kind = schema.field(index).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise UnreadableFile(f'{path}: column "{field}" holds {kind}, not strings')
    return index


def _batch_texts(column, first_row: int, path: Path, field: str, what: str, log: RecordLog) -> list[str]:
    try:
        texts = column.to_pylist()
    except Exception as e:  # e.g. a string column holding bytes that are not UTF-8
        raise UnreadableFile(f"{what} ({_first_line(e)})") from None
    if column.null_count:
        for i, text in enumerate(texts):
            if text is None:
                log.bad(f'{path} row {first_row + i} (0-based): "{field}" is null, not a string')
        texts = [t for t in texts if t is not None]
    return texts


def _guarded(batches: Iterator, what: str) -> Iterator:
    """The batches; a read error in the middle of the file becomes UnreadableFile."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # damaged pages or record batches: pyarrow's errors vary
            raise UnreadableFile(f"{what} ({_first_line(e)})") from None
        yield batch


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
