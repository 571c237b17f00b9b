"""Conversations read from every kind of source through the data layer; bad records named by place."""

import gzip
import json

import pytest

from gptcli.chat.formats import read_conversations
from gptcli.errors import GptError
from tests.chat.conftest import CONVERSATIONS

RECORDS = [
    {"messages": CONVERSATIONS[0]},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"instruction": "Add", "input": "2 and 3", "output": "5"},
    {"prompt": "Name a flower", "completion": "Rose"},
    {"messages": CONVERSATIONS[1]},
]
EXPECTED = [
    CONVERSATIONS[0],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
    [{"role": "user", "content": "Name a flower"}, {"role": "assistant", "content": "Rose"}],
    CONVERSATIONS[1],
]


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def test_jsonl_json_array_and_gzip(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(RECORDS), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(RECORDS).encode()))
    for name in ("a.jsonl", "b.json", "c.jsonl.gz"):
        conversations, report = read_conversations([tmp_path / name])
        assert conversations == EXPECTED, name
        assert report.conversations == 5 and report.bad == 0 and list(report) == []


def test_parquet_and_an_hf_dataset_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    same_shape = [{"messages": c} for c in CONVERSATIONS]  # a column holds one type: messages only
    pq.write_table(pa.Table.from_pylist(same_shape), tmp_path / "chats.parquet")
    assert read_conversations([tmp_path / "chats.parquet"])[0] == CONVERSATIONS
    datasets.Dataset.from_list(same_shape).save_to_disk(str(tmp_path / "hf"))
    assert read_conversations([tmp_path / "hf"])[0] == CONVERSATIONS
    alpaca = [
        {"instruction": "Add", "input": "", "output": "5"},
        {"instruction": "Sub", "input": "3, 1", "output": "2"},
    ]
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(alpaca), "test": datasets.Dataset.from_list(alpaca[:1])}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    conversations, _ = read_conversations([tmp_path / "dict"], split="train")
    assert [c[0]["content"] for c in conversations] == ["Add", "Sub\n\n3, 1"]
    with pytest.raises(GptError, match="choose one with --split"):
        read_conversations([tmp_path / "dict"])


BAD_LINES = [
    ('{"messages": [{"role": "bot", "content": "x"}]}', "line 3: message 1: unknown role 'bot' (expected system, user or assistant)"),
    ("{not json", "line 3: invalid JSON"),
    ('["a list"]', "line 3: the record is an array, not a JSON object"),
    ('{"messages": []}', "line 3: the conversation is empty"),
    ('{"text": "plain"}', 'line 3: no conversation in it (its keys: text)'),
    ('{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}',
     "line 3: message 2: the assistant's content is empty"),
    ('{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": 7}]}',
     "line 3: message 2: content is a number, not a string"),
    ('{"messages": [{"role": "user", "content": "Q"}]}', "line 3: the conversation ends with user"),
    ('{"instruction": "Q"}', 'line 3: no "output" field'),
]  # fmt: skip


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_a_bad_record_is_an_error_naming_file_and_line_or_is_skipped_and_counted(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    fmt = "alpaca" if "instruction" in line else "auto"
    good = RECORDS[2] if fmt == "alpaca" else RECORDS[0]
    path.write_text(jsonl([good, good]) + line + "\n" + jsonl([good]), encoding="utf-8")
    with pytest.raises(GptError) as e:
        read_conversations([path], fmt)
    assert str(e.value).startswith(f"{path} {message}") and "\n" not in str(e.value)
    conversations, report = read_conversations([path], fmt, skip_bad=True)
    assert len(conversations) == 3 and report.bad == 1 and report.conversations == 3
    [line] = report.lines()
    assert line.startswith(f"1 bad record(s) skipped; first: {path} {message}")


def test_places_in_a_json_array_and_a_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.json").write_text(json.dumps([RECORDS[0], {"messages": []}]), encoding="utf-8")
    with pytest.raises(GptError, match=r"a.json record 1 \(0-based\): the conversation is empty"):
        read_conversations([tmp_path / "a.json"])
    rows = [{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    with pytest.raises(GptError, match=r"b.parquet row 1 \(0-based\): \"completion\" is null, not a string"):
        read_conversations([tmp_path / "b.parquet"])


def test_skip_bad_keeps_the_first_few_reasons_and_all_bad_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n' * 8, encoding="utf-8")
    with pytest.raises(GptError, match="no conversations in .*: 8 bad record"):
        read_conversations([path], skip_bad=True)
    path.write_text('{"messages": []}\n' * 8 + jsonl(RECORDS[:1]), encoding="utf-8")
    conversations, report = read_conversations([path], skip_bad=True)
    assert len(conversations) == 1 and report.bad == 8 and len(report.problems) == 5
    assert "line 1: the conversation is empty" in report.problems[0]


def test_a_text_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("just text\n")
    with pytest.raises(GptError) as e:
        read_conversations([tmp_path / "notes.txt"])
    assert str(e.value) == (
        f"{tmp_path / 'notes.txt'} is a text file: fine-tuning reads conversations from JSONL, JSON, "
        "Parquet or a dataset folder"
    )


def test_an_unreadable_file_is_an_error_or_skipped(tmp_path):
    (tmp_path / "good.jsonl").write_text(jsonl(RECORDS[:1]))
    (tmp_path / "broken.json").write_text('[{"messages": ')
    with pytest.raises(GptError, match="broken.json: invalid JSON"):
        read_conversations([tmp_path / "good.jsonl", tmp_path / "broken.json"])
    conversations, report = read_conversations(
        [tmp_path / "good.jsonl", tmp_path / "broken.json"], skip_bad=True
    )
    assert (
        len(conversations) == 1 and report.bad == 1 and "skipped the rest of the file" in report.problems[0]
    )
