"""Records -> conversations: every format gives the same conversation, and every bad record a clear reason."""

import pytest

from gptcli.chat.formats import BadRecord, check_conversation, detect_format, to_messages
from gptcli.errors import GptError

EXCHANGE = [
    {"role": "user", "content": "Add the numbers\n\n2 and 3"},
    {"role": "assistant", "content": "5"},
]
SAME_EXCHANGE = {
    "messages": {"messages": EXCHANGE, "id": 7},  # other fields of a record are ignored
    "sharegpt": {
        "conversations": [{"from": "human", "value": EXCHANGE[0]["content"]}, {"from": "gpt", "value": "5"}]
    },
    "alpaca": {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
    "prompt-completion": {"prompt": EXCHANGE[0]["content"], "completion": "5"},
}


@pytest.mark.parametrize("fmt", list(SAME_EXCHANGE))
def test_each_format_gives_the_same_conversation_detected_or_forced(fmt):
    record = SAME_EXCHANGE[fmt]
    assert detect_format(record) == fmt
    assert to_messages(record) == to_messages(record, fmt) == EXCHANGE


def test_alpaca_without_input_is_the_instruction_alone():
    for record in (
        {"instruction": "Say hi", "output": "hi"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say hi", "input": None, "output": "hi"},
        {"instruction": "Say hi", "input": "  \n", "output": "hi"},
    ):
        assert to_messages(record)[0] == {"role": "user", "content": "Say hi"}


def test_multi_turn_with_system_in_messages_and_sharegpt():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye."},
    ]
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
    assert to_messages({"messages": messages}) == to_messages(sharegpt) == messages


def test_trl_conversational_prompt_completion():
    record = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "completion": [{"role": "assistant", "content": "A"}],
    }
    assert [m["role"] for m in to_messages(record)] == ["system", "user", "assistant"]


def test_null_fields_of_arrow_structs_are_absent():
    record = {
        "messages": [{"role": "user", "content": "Q", "name": None}, {"role": "assistant", "content": "A"}]
    }
    assert to_messages(record)[0] == {"role": "user", "content": "Q"}


def user(text="Q"):
    return {"role": "user", "content": text}


def assistant(text="A"):
    return {"role": "assistant", "content": text}


BAD = [
    ([1, 2], "auto", "the record is an array, not a JSON object"),
    ({"text": "plain"}, "auto", 'no conversation in it (its keys: text): expected "messages"'),
    ({"text": "plain"}, "alpaca", 'no "instruction" field (the record\'s keys: text)'),
    ({"messages": "hi"}, "auto", '"messages" is a string, not a list of messages'),
    ({"messages": []}, "auto", "the conversation is empty"),
    ({"messages": ["hi"]}, "auto", "message 1 is a string, not an object"),
    ({"messages": [{"content": "Q"}]}, "auto", 'message 1: no "role" field (its keys: content)'),
    ({"messages": [user(), {"role": "assistant"}]}, "auto", 'message 2: no "content" field'),
    ({"messages": [user(), {**assistant(), "weight": 1}]}, "auto", 'message 2: unknown field "weight"'),
    ({"messages": [user(), {"role": "bot", "content": "x"}]}, "auto",
     "message 2: unknown role 'bot' (expected system, user or assistant)"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "auto",
     "message 1: unknown role 'robot' (expected system, human or gpt)"),
    ({"messages": [user(), {"role": "assistant", "content": 5}]}, "auto", "message 2: content is a number, not a string"),
    ({"messages": [user(), {"role": "assistant", "content": None}]}, "auto", "message 2: content is null"),
    ({"messages": [assistant(), user()]}, "auto", "message 1: assistant first (expected user"),
    ({"messages": [user(), user()]}, "auto", "message 2: user after user (expected assistant"),
    ({"messages": [user(), assistant(), {"role": "system", "content": "S"}]}, "auto",
     "message 3: a system message can only come first"),
    ({"messages": [{"role": "system", "content": "S"}]}, "auto", "the conversation has only a system message"),
    ({"messages": [user(), assistant(), user()]}, "auto", "the conversation ends with user (training needs"),
    ({"messages": [user(), assistant(" \n")]}, "auto", "message 2: the assistant's content is empty"),
    ({"instruction": 3, "output": "x"}, "auto", '"instruction" is a number, not a string'),
    ({"instruction": "x", "input": ["a"], "output": "x"}, "auto", '"input" is an array, not a string'),
    ({"prompt": "x", "completion": ""}, "auto", "message 2: the assistant's content is empty"),
    ({"prompt": "x", "completion": {"a": 1}}, "auto", '"completion" is an object, not a string'),
]  # fmt: skip


@pytest.mark.parametrize("record, fmt, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_records_say_what_is_wrong(record, fmt, message):
    with pytest.raises(BadRecord) as e:
        to_messages(record, fmt)
    assert message in str(e.value)


def test_a_prompt_ends_with_the_user():
    check_conversation([user(), assistant(), user()], for_training=False)
    with pytest.raises(BadRecord, match="a prompt ends with the user's message"):
        check_conversation([user(), assistant()], for_training=False)


def test_an_unknown_format_is_refused():
    with pytest.raises(GptError, match="unknown format 'chatml'"):
        to_messages({"messages": [user(), assistant()]}, "chatml")
