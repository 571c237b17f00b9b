"""Records in any of the usual fine-tuning formats -> conversations, checked.

A conversation is a list of messages, each `{"role": "system" | "user" | "assistant", "content": str}`:
an optional system message first, then user and assistant alternating, starting with the user and,
for training, ending with the assistant. Every format becomes one:

    messages           {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", ...}]}
                       (OpenAI, TRL; multi-turn)
    sharegpt           {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", ...}]}
                       (from: system | human | gpt; user and assistant are read too)
    alpaca             {"instruction": "Add", "input": "2 and 3", "output": "5"}
                       -> user "Add\\n\\n2 and 3" (the input after a blank line, when it is not
                       blank), assistant "5"
    prompt-completion  {"prompt": "Hi", "completion": "Hello"} -> user "Hi", assistant "Hello"
                       (TRL's conversational form, lists of messages in both, is read too)

    >>> to_messages({"instruction": "Add", "input": "2 and 3", "output": "5"})
    [{'role': 'user', 'content': 'Add\\n\\n2 and 3'}, {'role': 'assistant', 'content': '5'}]

`fmt="auto"` picks the format of each record by its fields, in the order above. Other fields of a
record (an id, a source) are ignored; a message's own fields must be its role and content. What is
wrong with a record raises `BadRecord`, whose message names the message (1-based) and the problem.

`read_conversations` reads files and folders through the data layer (gptcli.data.sources and
records): JSON Lines, JSON arrays, Parquet, Hugging Face dataset folders, compressed .gz/.zst.
A bad record there is a one-line GptError naming the file and its place,

    data.jsonl line 3: message 2: unknown role 'bot' (expected system, user or assistant)

or, with `skip_bad`, counted in the report and passed over.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.data.records import UnreadableFile, arrow_records, json_records, parquet_records
from gptcli.data.sources import SourceOptions, describe_source, find_sources, open_decompressed
from gptcli.errors import GptError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt-completion")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "gpt": "assistant",
    "user": "user",
    "assistant": "assistant",
}
MAX_PROBLEMS_KEPT = 5  # reasons of skipped records kept for the report
KINDS = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}


class BadRecord(ValueError):
    """A record that is no valid conversation; the message says what is wrong."""


# ---- one record


def to_messages(record: dict, fmt: str = "auto") -> list[Message]:
    """The conversation a record holds, checked for training (see `check_conversation`)."""
    if fmt not in FORMATS:
        raise GptError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    if not isinstance(record, dict):
        raise BadRecord(f"the record is {kind(record)}, not a JSON object")
    if fmt == "auto":
        fmt = detect_format(record)
    messages = {
        "messages": _from_messages,
        "sharegpt": _from_sharegpt,
        "alpaca": _from_alpaca,
        "prompt-completion": _from_prompt_completion,
    }[fmt](record)
    check_conversation(messages)
    return messages


def detect_format(record: dict) -> str:
    """The format a record's fields say it is in."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    keys = ", ".join(record) or "none"
    raise BadRecord(
        f'no conversation in it (its keys: {keys}): expected "messages", "conversations", '
        '"instruction" + "output", or "prompt" + "completion"'
    )


def _from_messages(record: dict) -> list[Message]:
    return [_message(m, i, "role", "content", dict(zip(ROLES, ROLES))) for i, m in _turns(record, "messages")]


def _from_sharegpt(record: dict) -> list[Message]:
    return [_message(m, i, "from", "value", SHAREGPT_ROLES) for i, m in _turns(record, "conversations")]


def _from_alpaca(record: dict) -> list[Message]:
    instruction, output = _field(record, "instruction"), _field(record, "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise BadRecord(f'"input" is {kind(extra)}, not a string')
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _from_prompt_completion(record: dict) -> list[Message]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational form
        turns = [*_turns(record, "prompt"), *((len(prompt) + i, m) for i, m in _turns(record, "completion"))]
        return [_message(m, i, "role", "content", dict(zip(ROLES, ROLES))) for i, m in turns]
    prompt, completion = _field(record, "prompt"), _field(record, "completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _required(record: dict, name: str):
    if name not in record:
        keys = ", ".join(record) or "none"
        raise BadRecord(f'no "{name}" field (the record\'s keys: {keys})')
    return record[name]


def _field(record: dict, name: str) -> str:
    value = _required(record, name)
    if not isinstance(value, str):
        raise BadRecord(f'"{name}" is {kind(value)}, not a string')
    return value


def _turns(record: dict, name: str) -> Iterator[tuple[int, object]]:
    """(1-based number, message) of the list in `record[name]`."""
    turns = _required(record, name)
    if not isinstance(turns, list):
        raise BadRecord(f'"{name}" is {kind(turns)}, not a list of messages')
    return enumerate(turns, 1)


def _message(turn, number: int, role_key: str, content_key: str, roles: dict[str, str]) -> Message:
    """One message in our form, from a turn with fields `role_key` and `content_key`."""
    where = f"message {number}"
    if not isinstance(turn, dict):
        raise BadRecord(f"{where} is {kind(turn)}, not an object")
    for key in (role_key, content_key):
        if key not in turn:
            raise BadRecord(f'{where}: no "{key}" field (its keys: {", ".join(turn) or "none"})')
    # a dataset's Arrow structs give every message all the fields of any: a null one is absent
    unknown = [k for k, v in turn.items() if k not in (role_key, content_key) and v is not None]
    if unknown:
        raise BadRecord(f'{where}: unknown field "{unknown[0]}" (expected "{role_key}" and "{content_key}")')
    role = turn[role_key]
    if role not in roles:
        expected = "system, human or gpt" if role_key == "from" else "system, user or assistant"
        raise BadRecord(f"{where}: unknown role {role!r} (expected {expected})")
    content = turn[content_key]
    if not isinstance(content, str):
        raise BadRecord(f"{where}: content is {kind(content)}, not a string")
    return {"role": roles[role], "content": content}


# ---- the order of the roles


def check_conversation(messages: list[Message], for_training: bool = True) -> None:
    """Raise BadRecord unless: each message a role and a string content; an optional system message
    first, then user and assistant alternating from the user; no assistant message empty; for
    training, the assistant's message last (else, for a prompt, the user's)."""
    if not messages:
        raise BadRecord("the conversation is empty")
    for number, message in enumerate(messages, 1):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise BadRecord(f"message {number}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(message.get("content"), str):
            raise BadRecord(f"message {number}: content is {kind(message.get('content'))}, not a string")
    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        raise BadRecord("the conversation has only a system message")
    for number, message in enumerate(messages[start:], start + 1):
        role = message["role"]
        expected = "user" if (number - start) % 2 else "assistant"
        if role != expected:
            if role == "system":
                raise BadRecord(f"message {number}: a system message can only come first")
            after = f"after {messages[number - 2]['role']}" if number > 1 else "first"
            raise BadRecord(
                f"message {number}: {role} {after} (expected {expected}: user and assistant alternate)"
            )
        if role == "assistant" and not message["content"].strip():
            raise BadRecord(f"message {number}: the assistant's content is empty")
    last = messages[-1]["role"]
    if for_training and last != "assistant":
        raise BadRecord(f"the conversation ends with {last} (training needs the assistant's reply last)")
    if not for_training and last != "user":
        raise BadRecord(f"the conversation ends with {last} (a prompt ends with the user's message)")


def kind(value) -> str:
    """What a JSON value is, in words: 'an object', 'a number', ..."""
    return KINDS.get(type(value), "a number")


# ---- files


@dataclass
class ReadReport:
    """What reading found: records that became conversations, and those skipped as bad."""

    conversations: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)  # the first few reasons, with their places

    def lines(self) -> list[str]:
        """Warning lines for the caller to print (none when nothing was skipped)."""
        if not self.bad:
            return []
        return [f"{self.bad} bad record(s) skipped; first: " + " | ".join(self.problems)]

    def __iter__(self) -> Iterator[str]:
        """Its warning lines: `notes.extend(report)`."""
        return iter(self.lines())


class _Log:
    """The data layer's RecordLog: a bad record raises, or is counted when skipping."""

    def __init__(self, report: ReadReport, skip_bad: bool):
        self.report, self.skip_bad = report, skip_bad

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise GptError(message)
        self.report.bad += 1
        if len(self.report.problems) < MAX_PROBLEMS_KEPT:
            self.report.problems.append(message)

    def invalid(self, n_bytes: int) -> None:
        """Invalid UTF-8 was read as U+FFFD: fine-tuning data should not have it, but it is readable."""


def read_conversations(
    paths: list[str | Path], fmt: str = "auto", skip_bad: bool = False, split: str | None = None
) -> tuple[list[list[Message]], ReadReport]:
    """Every conversation of the files, folders and patterns in `paths`, in order, and the report."""
    report = ReadReport()
    conversations = [messages for _, messages in iter_conversations(paths, fmt, skip_bad, split, report)]
    if not conversations:
        given = ", ".join(map(str, paths))
        raise GptError(f"no conversations in {given}: {report.bad} bad record(s) skipped")
    return conversations, report


def iter_conversations(
    paths: list[str | Path],
    fmt: str = "auto",
    skip_bad: bool = False,
    split: str | None = None,
    report: ReadReport | None = None,
) -> Iterator[tuple[str, list[Message]]]:
    """(place, conversation) one at a time: `read_conversations` without holding them all."""
    if fmt not in FORMATS:
        raise GptError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    report = report if report is not None else ReadReport()
    log = _Log(report, skip_bad)
    options = SourceOptions(split=split)
    sources = [describe_source(p, options) for p in find_sources(list(paths))]
    for source in sources:
        if source.format == "text":
            raise GptError(
                f"{source.path} is a text file: fine-tuning reads conversations from JSONL, JSON, "
                "Parquet or a dataset folder"
            )
    for source in sources:
        try:
            for where, record in _records(source, log):
                try:
                    messages = to_messages(record, fmt)
                except BadRecord as e:
                    log.bad(f"{where}: {e}")
                    continue
                report.conversations += 1
                yield where, messages
        except UnreadableFile as e:
            log.bad(f"{e}; skipped the rest of the file" if skip_bad else str(e))


def _records(source, log: _Log) -> Iterator[tuple[str, dict]]:
    if source.format == "json":
        path = source.files[0]
        with open_decompressed(path, source.compression) as (stream, _):
            yield from json_records(stream, str(path), log)
        return
    read = parquet_records if source.format == "parquet" else arrow_records
    for path in source.files:
        yield from read(path)
