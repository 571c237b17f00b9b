"""ChatSession: each turn's reply is greedy decoding of the whole rendered conversation (checked by
recomputation, no cache), while it prefills only the turn's new tokens; undo, retry, reset, the
system message, save/load, a full context, and an interrupted reply."""

import json

import pytest

from gptcli.chat.session import ChatSession
from gptcli.chat.template import render
from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.generation import Engine
from tests.generation.test_engine import assert_greedy
from tests.serving.helpers import save_tiny_chat_checkpoint

GREEDY = dict(temperature=0.0, top_k=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_chat_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", printable=True)


def engine_of(checkpoint) -> Engine:
    return Engine.from_checkpoint(checkpoint, device="cpu")


def reference(engine: Engine, messages: list[dict]) -> list[int]:
    return render(messages, engine.chat_template, engine.tokenizer, add_generation_prompt=True).ids


def test_each_reply_is_greedy_on_the_whole_conversation_and_prefills_only_the_new_turn(checkpoint):
    engine = engine_of(checkpoint)
    session = ChatSession(engine, SampleConfig(max_new_tokens=12, **GREEDY), system="Be brief.")
    first = session.say("Shall I compare thee?")
    first.text()
    ids_1 = reference(engine, session.messages[:-1])
    second = session.say("To a summer's day?")
    second.text()
    ids_2 = reference(engine, session.messages[:-1])
    reply_ids = engine.tokenizer.encode(first.result.reply)
    assert ids_2[: len(ids_1) + len(reply_ids)] == ids_1 + reply_ids  # ASCII: the reply renders back
    for turn, ids in ((first, ids_1), (second, ids_2)):
        assert_greedy(engine.tokenizer.encode(turn.result.reply), engine.model, ids)
        assert turn.result.prompt_tokens == len(ids) and turn.result.completion_tokens == 12
    assert first.result.new_prompt_tokens == len(ids_1)
    # the second turn prefills its own tokens, and the first reply's last token (sampled, never fed)
    assert second.result.new_prompt_tokens == len(ids_2) - len(ids_1) - len(reply_ids) + 1
    assert second.result.new_prompt_tokens < len(ids_2) / 2


def test_the_second_reply_depends_on_the_first_turn(checkpoint):
    engine = engine_of(checkpoint)

    def second_reply(first_message):
        session = ChatSession(engine, SampleConfig(max_new_tokens=10, **GREEDY))
        session.say(first_message).text()
        return session.say("And then?").text()

    assert second_reply("Tell me of roses.") != second_reply("What of the sea?")


def test_undo_retry_reset_and_the_system_message(checkpoint):
    engine = engine_of(checkpoint)
    session = ChatSession(engine, SampleConfig(max_new_tokens=8, temperature=1.0, seed=3))
    one = session.say("One").text()
    two = session.say("Two").text()
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    again = session.retry()
    assert again.text() != two and again.result.new_prompt_tokens == 1  # the prompt was all cached
    assert session.messages[-1]["content"] == again.result.reply
    assert session.undo() and session.messages == [{"role": "user", "content": "One"},
                                                   {"role": "assistant", "content": one}]  # fmt: skip
    session.set_system("Be kind.")
    assert session.messages[0] == {"role": "system", "content": "Be kind."} and len(session.messages) == 3
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be kind."}]
    assert not session.undo()
    with pytest.raises(GptError, match="no reply to retry"):
        session.retry()
    session.set_system(None)
    assert session.messages == []


def test_same_seed_same_conversation(checkpoint):
    engine = Engine.from_checkpoint(checkpoint, device="cpu")

    def conversation(seed):
        session = ChatSession(engine, SampleConfig(max_new_tokens=8, temperature=1.0, seed=seed))
        return [session.say(text).text() for text in ("a", "b")]

    assert conversation(1) == conversation(1) != conversation(2)


def test_save_and_load_round_trip_and_bad_files(checkpoint, tmp_path):
    engine = engine_of(checkpoint)
    session = ChatSession(engine, SampleConfig(max_new_tokens=6, **GREEDY), system="S")
    session.say("Hello").text()
    session.save(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved == {"messages": session.messages}
    other = ChatSession(engine, SampleConfig(max_new_tokens=6, **GREEDY))
    other.load(tmp_path / "c.json")
    assert other.messages == session.messages and other.system == "S"
    # a loaded conversation goes on as the one that was saved
    assert other.say("More").text() == session.say("More").text()
    (tmp_path / "bad.json").write_text('{"messages": [{"role": "bot", "content": "x"}]}')
    for name, match in (("bad.json", "unknown role 'bot'"), ("missing.json", "not found")):
        with pytest.raises(GptError, match=match):
            other.load(tmp_path / name)


def test_a_full_context_drops_the_oldest_exchanges_and_keeps_the_system_message(tmp_path):
    engine = engine_of(save_tiny_chat_checkpoint(tmp_path / "short", block_size=96, printable=True))
    notes = []
    session = ChatSession(
        engine, SampleConfig(max_new_tokens=10, **GREEDY), system="Sys", on_note=notes.append
    )
    for i in range(4):
        turn = session.say(f"message number {i}")
        turn.text()
        assert turn.result.prompt_tokens + 10 <= 96
    assert session.messages[0] == {"role": "system", "content": "Sys"}
    assert session.messages[-2]["content"] == "message number 3" and len(session.messages) < 9
    assert notes and "dropped the oldest" in notes[0] and "system message stays" in notes[0]
    with pytest.raises(GptError, match="the message and the system message take .* context is 96"):
        session.say("x" * 200).text()
    assert session.messages[-2]["content"] == "message number 3"  # the failed message is not kept


def test_an_interrupted_reply_keeps_what_it_wrote(checkpoint):
    engine = engine_of(checkpoint)
    session = ChatSession(engine, SampleConfig(max_new_tokens=50, **GREEDY))
    turn = session.say("Go on and on")
    pieces = [next(turn) for _ in range(5)]
    turn.close()
    assert turn.result.finish_reason == "interrupted"
    assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    cut = session.say("Stop")
    pieces = []
    for text in cut:  # Ctrl-C arrives while the reply is being written
        pieces.append(text)
        if len(pieces) == 3:
            with pytest.raises(KeyboardInterrupt):
                cut._events.throw(KeyboardInterrupt)
            break
    assert cut.result.finish_reason == "interrupted" and session.messages[-1]["role"] == "assistant"
    assert session.say("Next").text()  # the session goes on


def test_a_base_model_has_no_chat(tmp_path):
    from tests.serving.helpers import save_tiny_checkpoint

    engine = Engine.from_checkpoint(save_tiny_checkpoint(tmp_path / "base"), device="cpu")
    with pytest.raises(GptError, match="no chat template.*gpt finetune"):
        ChatSession(engine)
