"""Reading a corpus in every format: each checked against files written by the format's own tools
(pyarrow's Parquet writer, `datasets`' save_to_disk, Python's gzip, zstandard)."""

import gzip
import hashlib
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gptcli.config import TokenizerTrainConfig
from gptcli.data.sources import CorpusReader, SourceOptions, find_sources
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from tests.conftest import SONNETS, assert_one_line_error, run_cli

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

TEXTS = ["Shall I compare thee to a summer's day?", "", "Thou art more lovely, é 🙂", "and more temperate\n"]
KEPT = [t for t in TEXTS if t]  # empty documents are skipped (and counted)


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def documents(reader: CorpusReader) -> list[str]:
    """The reader's pieces joined into documents, checking that every document ends with True."""
    docs, current = [], ""
    for text, ends in reader:
        current += text
        if ends:
            docs.append(current)
            current = ""
    assert current == ""
    return docs


def read(paths, **options) -> CorpusReader:
    return CorpusReader(find_sources(paths), SourceOptions(**options))


# ---- each format


def test_json_lines_and_json_arrays(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl({"id": i, "text": t} for i, t in enumerate(TEXTS)) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps([{"text": t} for t in TEXTS], indent=2))  # pretty: many lines
    (tmp_path / "c.json").write_bytes(b"\xef\xbb\xbf" + jsonl({"body": t} for t in TEXTS).encode())  # BOM
    for name, options in (("a.jsonl", {}), ("b.json", {}), ("c.json", {"text_field": "body"})):
        reader = read([tmp_path / name], **options)
        assert list(reader) == [(t, True) for t in KEPT]  # one record, one piece
        assert (reader.documents, reader.empty_documents, reader.report()) == (
            3,
            1,
            ["1 empty document(s) skipped"],
        )
        assert reader.bytes_read == reader.total_bytes == (tmp_path / name).stat().st_size


def test_parquet_is_read_a_batch_of_rows_at_a_time(tmp_path, monkeypatch):
    import gptcli.data.records as records

    many = [f"row {i} " + "x" * (i % 7) for i in range(50)] + [""]
    pq.write_table(pa.table({"id": list(range(51)), "text": many}), tmp_path / "d.parquet", row_group_size=8)
    monkeypatch.setattr(records, "ARROW_BATCH_ROWS", 5)
    reader = read([tmp_path / "d.parquet"])
    seen = []
    for text, ends in reader:
        seen.append(text)
        assert ends and 0 < reader.bytes_read <= reader.total_bytes
    assert seen == many[:-1] and reader.empty_documents == 1
    assert reader.bytes_read == reader.total_bytes
    large = pa.table({"text": pa.array(TEXTS, type=pa.large_string())})
    pq.write_table(large, tmp_path / "large.parquet")
    assert documents(read([tmp_path / "large.parquet"])) == KEPT


def test_hf_dataset_and_dataset_dict_folders(tmp_path):
    ds = datasets.Dataset.from_dict({"text": TEXTS, "n": [1, 2, 3, 4]})
    ds.save_to_disk(tmp_path / "ds", num_shards=2)  # two Arrow files, read in state.json's order
    assert documents(read([tmp_path / "ds"])) == KEPT
    other = datasets.Dataset.from_dict({"text": ["held out"], "n": [0]})
    datasets.DatasetDict({"train": ds, "test": other}).save_to_disk(tmp_path / "dd")
    assert documents(read([tmp_path / "dd"], split="train")) == KEPT
    assert documents(read([tmp_path / "dd"], split="test")) == ["held out"]
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "one")
    assert documents(read([tmp_path / "one"])) == KEPT  # one split: no --split needed
    reader = read([tmp_path / "ds"])
    list(reader)
    assert (
        reader.bytes_read
        == reader.total_bytes
        == sum(f.stat().st_size for f in (tmp_path / "ds").glob("*.arrow"))
    )


def test_compressed_text_and_json_lines(tmp_path):
    text = "plain text, compressed; " * 400
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "c.gz").write_bytes(gzip.compress(text.encode()))  # no inner suffix: text
    frames = [zstandard.ZstdCompressor().compress(part.encode()) for part in (text[:3000], text[3000:])]
    (tmp_path / "b.txt.zst").write_bytes(b"".join(frames))  # two frames, as `cat a.zst b.zst` makes
    records = jsonl({"text": t} for t in TEXTS).encode()
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(records))
    (tmp_path / "e.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records))
    for name in ("a.txt.gz", "c.gz", "b.txt.zst"):
        reader = CorpusReader(find_sources([tmp_path / name]), block_bytes=256)
        pieces = list(reader)
        assert "".join(p for p, _ in pieces) == text and [e for _, e in pieces] == [False] * (
            len(pieces) - 1
        ) + [True]
        assert len(pieces) > 5 and reader.bytes_read == reader.total_bytes == (tmp_path / name).stat().st_size
    for name in ("d.jsonl.gz", "e.jsonl.zst"):
        assert documents(read([tmp_path / name])) == KEPT


def test_plain_text_is_one_document_in_blocks_with_invalid_utf8_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good text \xff here " * 100)
    (tmp_path / "empty.txt").write_text("")
    reader = CorpusReader(find_sources([tmp_path / "a.txt", tmp_path / "empty.txt"]), block_bytes=64)
    pieces = list(reader)
    assert "".join(p for p, _ in pieces) == "good text \ufffd here " * 100 and pieces[-1][1]
    assert (reader.documents, reader.empty_documents, reader.invalid_bytes) == (1, 1, 100)
    assert reader.report()[0] == "100 byte(s) of the corpus were not valid UTF-8 and were read as U+FFFD"
    assert list(reader) == pieces  # the same pieces every time: a consumer can count them to resume
    assert reader.documents == 1  # counts start again with each reading


def test_json_invalid_utf8_and_lone_surrogates_are_read_as_replacement_characters(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "bad \xff byte"}\n{"text": "lone \\ud800 half"}\n'
                                       b'{"text": "pair \\ud83d\\ude00"}\n')  # fmt: skip
    reader = read([tmp_path / "a.jsonl"])
    assert documents(reader) == ["bad \ufffd byte", "lone \ufffd half", "pair 😀"]
    assert reader.invalid_bytes == 2
    for text in documents(reader):
        text.encode("utf-8")  # every text is valid Unicode for the tokenizer


# ---- finding sources


def test_dirs_and_globs_mix_formats_and_take_dataset_folders_whole(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain")
    (root / "b.jsonl").write_text(jsonl([{"text": "record"}]))
    (root / "sub" / "c.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": "zipped"}]).encode()))
    pq.write_table(pa.table({"text": ["row"]}), root / "sub" / "d.parquet")
    datasets.Dataset.from_dict({"text": ["arrow"]}).save_to_disk(root / "sub" / "hf")
    (root / "img.png").write_bytes(b"\x89PNG")
    (root / ".hidden.txt").write_text("secret")
    sources = find_sources([root])
    assert [s.relative_to(root).as_posix() for s in sources] == [
        "a.txt",
        "b.jsonl",
        "sub/c.jsonl.gz",
        "sub/d.parquet",
        "sub/hf",
    ]
    assert documents(CorpusReader(sources)) == ["plain", "record", "zipped", "row", "arrow"]
    globbed = find_sources([str(root / "sub" / "*"), root / "a.txt", root / "a.txt"])
    assert [s.name for s in globbed] == ["c.jsonl.gz", "d.parquet", "hf", "a.txt"]  # args' order, unique


def test_find_sources_reports_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for bad, message in [
        ([tmp_path / "missing.txt"], "not found"),
        ([tmp_path / "empty"], "no text files or datasets"),
        ([tmp_path / "empty.txt"], "empty"),
        ([str(tmp_path / "*.nothing")], "no files match"),
        ([], "no corpus"),
    ]:
        with pytest.raises(GptError, match=message):
            find_sources(bad)


def test_split_errors(tmp_path):
    two = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                                "test": datasets.Dataset.from_dict({"text": ["b"]})})  # fmt: skip
    two.save_to_disk(tmp_path / "dd")
    with pytest.raises(GptError, match="DatasetDict with splits train, test: choose one with --split"):
        read([tmp_path / "dd"])
    with pytest.raises(GptError, match=r"no split 'valid' \(its splits: train, test\); use --split"):
        read([tmp_path / "dd"], split="valid")
    assert_one_line_error(run_cli("tokenizer", "train", str(tmp_path / "dd"), "--out", str(tmp_path / "t.json")),
                          "choose one with --split")  # fmt: skip


# ---- bad records


def write_bad(tmp_path, name: str) -> str:
    """One bad corpus file of each kind, and the message it must give."""
    path = tmp_path / name
    good = {"text": "fine"}
    cases = {
        "invalid.jsonl": (jsonl([good]) + '{"text": "no end\n', "invalid.jsonl line 2: invalid JSON ("),
        "list.jsonl": (
            jsonl([good, good, ["text"]]),
            "list.jsonl line 3: the record is an array, not a JSON object",
        ),
        "missing.jsonl": (
            jsonl([good, {"id": 1, "body": "x"}]),
            'missing.jsonl line 2: no "text" field (the record\'s keys: id, body); use --text-field',
        ),
        "null.jsonl": (jsonl([{"text": None}]), 'null.jsonl line 1: "text" is null, not a string'),
        "number.jsonl": (jsonl([good, {"text": 7}]), 'number.jsonl line 2: "text" is a number, not a string'),
        "array.json": (
            json.dumps([good, good, "text"]),
            "array.json record 2 (0-based): the record is a string",
        ),
        "broken.json": ('[{"text": "a"},', "broken.json: invalid JSON ("),
    }
    if name in cases:
        content, message = cases[name]
        path.write_text(content)
    elif name == "nulls.parquet":
        pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), path, row_group_size=2)
        message = 'nulls.parquet row 2 (0-based): "text" is null, not a string'
    elif name == "column.parquet":
        pq.write_table(pa.table({"body": ["a"], "id": [1]}), path)
        message = 'column.parquet: no "text" column (its columns: body, id); use --text-field'
    elif name == "ints.parquet":
        pq.write_table(pa.table({"text": [1, 2]}), path)
        message = 'ints.parquet: column "text" holds int64, not strings'
    elif name == "corrupt.parquet":
        path.write_bytes(b"PAR1 this is not parquet")
        message = "corrupt.parquet: not a readable Parquet file ("
    elif name == "hf_nulls":
        datasets.Dataset.from_dict({"text": ["a", None]}).save_to_disk(path)
        message = 'data-00000-of-00001.arrow row 1 (0-based): "text" is null, not a string'
    elif name == "truncated.txt.gz":
        path.write_bytes(gzip.compress(b"some text " * 1000)[:-30])
        message = "truncated.txt.gz: not a readable gzip file ("
    elif name == "corrupt.jsonl.zst":
        path.write_bytes(b"\x28\xb5\x2f\xfd garbage")
        message = "corrupt.jsonl.zst: not a readable zstd file ("
    return message


BAD = ["invalid.jsonl", "list.jsonl", "missing.jsonl", "null.jsonl", "number.jsonl", "array.json", "broken.json",
       "nulls.parquet", "column.parquet", "ints.parquet", "corrupt.parquet", "hf_nulls", "truncated.txt.gz",
       "corrupt.jsonl.zst"]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_a_bad_record_stops_the_reading_naming_file_and_place(tmp_path, name):
    message = write_bad(tmp_path, name)
    (tmp_path / "good.txt").write_text("a good document")
    with pytest.raises(GptError) as caught:
        list(read([tmp_path / "good.txt", tmp_path / name]))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", BAD)
def test_skip_bad_records_counts_and_reports_them(tmp_path, name):
    message = write_bad(tmp_path, name)
    (tmp_path / "good.txt").write_text("a good document")
    reader = read([tmp_path / "good.txt", tmp_path / name], skip_bad_records=True)
    docs = documents(reader)
    assert docs[0] == "a good document" and reader.bad_records >= 1
    assert message in reader.problems[0]
    assert reader.report()[-1].startswith(f"{reader.bad_records} bad record(s) skipped; first: ")
    assert reader.bytes_read == reader.total_bytes


def test_a_damaged_compressed_text_keeps_what_was_read_as_one_whole_document(tmp_path):
    text = " ".join(f"w{i * 7919 % 10007}x" for i in range(5000))  # does not compress to nothing
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text.encode())[:-200])
    (tmp_path / "b.txt").write_text("next")
    sources = find_sources([tmp_path / "a.txt.gz", tmp_path / "b.txt"])
    reader = CorpusReader(sources, SourceOptions(skip_bad_records=True), block_bytes=256)
    first, second = documents(reader)  # the pieces of the damaged file end with a True of their own
    assert 1000 < len(first) < len(text) and text.startswith(first) and second == "next"
    assert reader.bad_records == 1 and "a.txt.gz: not a readable gzip file" in reader.problems[0]


def test_the_first_problems_are_kept_and_a_corpus_of_nothing_is_an_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text(jsonl([{"x": i} for i in range(20)] + [{"text": ""}]))
    reader = read([tmp_path / "bad.jsonl"], skip_bad_records=True)
    with pytest.raises(GptError, match=r"holds no text: 1 empty document\(s\), 20 bad record\(s\) skipped"):
        list(reader)
    assert reader.bad_records == 20 and len(reader.problems) == 5 and "line 1:" in reader.problems[0]


def test_the_cli_stops_at_a_bad_record_or_skips_and_says_so(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl([{"text": "the cat sat on the mat"}] * 5 + [{"body": "x"}]))
    out = tmp_path / "t.json"
    assert_one_line_error(run_cli("tokenizer", "train", str(path), "--vocab-size", "260", "--out", str(out)),
                          "bad.jsonl line 6", 'no "text" field', "--text-field")  # fmt: skip
    assert not out.exists()
    result = run_cli(
        "tokenizer", "train", str(path), "--vocab-size", "260", "--out", str(out), "--skip-bad-records"
    )
    assert result.exit_code == 0 and out.is_file()
    assert (
        "warning: 1 bad record(s) skipped; first: " in result.stderr and "bad.jsonl line 6" in result.stderr
    )
    body = run_cli("tokenizer", "train", str(path), "--text-field", "body", "--vocab-size", "260", "--out", str(out),
                   "--skip-bad-records")  # fmt: skip
    assert "5 bad record(s) skipped" in body.stderr


# ---- optional extras


@pytest.mark.parametrize(
    "module, name, message",
    [
        ("pyarrow", "a.parquet", "reading .parquet files needs pyarrow: pip install 'gptcli[data]'"),
        ("pyarrow", "hf", "reading Hugging Face dataset folders needs pyarrow: pip install 'gptcli[data]'"),
        ("zstandard", "a.txt.zst", "reading .zst files needs zstandard: pip install 'gptcli[data]'"),
    ],
)
def test_a_missing_extra_says_how_to_install_it(tmp_path, monkeypatch, module, name, message):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(tmp_path / "hf")
    (tmp_path / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"a"))
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, loaded, None)  # `import pyarrow` now raises ImportError
    with pytest.raises(GptError) as caught:
        read([tmp_path / name])
    assert str(caught.value) == message


# ---- the same texts in every format train the same tokenizer


def test_every_format_of_the_same_documents_trains_the_same_merges(tmp_path):
    docs = [d for d in SONNETS.read_text().split("\n\n") if d.strip()][:120]
    (tmp_path / "plain").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "plain" / f"{i:04d}.txt").write_text(doc)
    (tmp_path / "docs.jsonl").write_text(jsonl({"text": d} for d in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet", row_group_size=16)
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress((tmp_path / "docs.jsonl").read_bytes()))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(tmp_path / "hf")
    merges = {}
    for name in ("plain", "docs.jsonl", "docs.parquet", "docs.jsonl.gz", "hf"):
        config = TokenizerTrainConfig(files=[str(tmp_path / name)], vocab_size=400, split="train", workers=1)
        tokenizer = train_tokenizer(config).tokenizer
        merges[name] = tokenizer.merges
    assert len(merges["plain"]) == 400 - 257
    assert all(m == merges["plain"] for m in merges.values())
    recorded = tokenizer.trained_on[0]  # an HF folder: the split's folder and its Arrow files' hash
    arrow = sorted((tmp_path / "hf" / "train").glob("*.arrow"))
    assert recorded.path == str((tmp_path / "hf" / "train").resolve())
    assert recorded.sha256 == hashlib.sha256(b"".join(f.read_bytes() for f in arrow)).hexdigest()
