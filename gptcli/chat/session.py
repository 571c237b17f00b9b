"""A conversation with a fine-tuned model, turn by turn, its KV cache kept from one turn to the next.

    session = ChatSession(engine, SampleConfig(temperature=0.7, seed=0), system="Answer briefly.")
    turn = session.say("Hello!")
    for text in turn:                       # the reply as it is written
        print(text, end="", flush=True)
    turn.result.to_json()                   # reply, finish_reason, token counts, ttft_s, seconds
    session.retry(); session.undo(); session.reset(); session.set_system("..."); session.messages

How a turn goes: the whole conversation, the new user message included, is rendered by the one chat
renderer (gptcli.chat.template.render, with the assistant's generation prompt), exactly as the
model was fine-tuned. The ids it shares with what the cache already holds (the previous turns, the
reply's own tokens) are kept, and only the rest is prefilled (Decoder.extend): a turn costs its new
tokens, not the history's, where nanochat's CLI prefills the whole history again. The reply ends at
the template's end token (or end-of-text; neither is shown), at a stop string, after max_new_tokens,
or when the context is full.

When the conversation and room for a reply do not fit the model's context, the oldest exchanges are
dropped (the system message stays) and `on_note` says so. A turn that is cut short (Ctrl-C: a
KeyboardInterrupt, or closing the turn) keeps its partial reply, finish reason "interrupted".
"""

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptcli.chat.formats import BadRecord, Message, check_conversation
from gptcli.chat.template import end_ids, render
from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.generation.cpu_matmul import torch_threads
from gptcli.generation.decoder import Decoder
from gptcli.generation.sampling import NO_TOKEN, NOT_FINITE, pick_next
from gptcli.generation.text import SampleState, SampleText

REPLY_ROOM = 4  # a turn keeps room for at least 1/4 of the context (or max_new_tokens) for its reply


@dataclass
class TurnResult:
    reply: str
    finish_reason: str  # "stop" (end token, end-of-text or a stop string) | "length" | "interrupted"
    prompt_tokens: int  # the whole rendered conversation this turn
    new_prompt_tokens: int  # what this turn prefilled: the rest was in the cache already
    completion_tokens: int
    ttft_s: float  # from the turn's start to its first token
    seconds: float

    def to_json(self) -> dict:
        out = asdict(self)
        out["ttft_s"], out["seconds"] = round(self.ttft_s, 4), round(self.seconds, 4)
        return out


class ChatSession:
    """One conversation with one engine's model (see the module docstring)."""

    def __init__(
        self,
        engine,
        config: SampleConfig | None = None,
        system: str | None = None,
        on_note: Callable[[str], None] | None = None,
    ):
        if getattr(engine, "encoder_decoder", False):
            raise GptError(
                "an encoder-decoder has no chat template: it answers one prompt at a time; use "
                "gpt generate --prompt TEXT, or gpt serve's /v1/completions"
            )
        if engine.chat_template is None:
            where = f" {engine.checkpoint}" if engine.checkpoint else ""
            raise GptError(
                f"the checkpoint{where} has no chat template: it is a base model. Fine-tune it on "
                "conversations first (gpt finetune --base RUN --data CHATS.jsonl), then chat with that run"
            )
        self.engine, self.template, self.tokenizer = engine, engine.chat_template, engine.tokenizer
        self.config = config or SampleConfig()
        self.end_ids = end_ids(self.template, self.tokenizer)
        self.on_note = on_note or (lambda note: None)
        self.messages: list[Message] = []
        self.set_system(system)
        seed = self.config.seed if self.config.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=engine.device).manual_seed(seed)  # one per session
        # its own decoder (the engine's are shared with other calls): the whole context, kept between turns
        self.decoder = Decoder(engine.model, 1, engine.block_size, engine.compile)
        self.cached: list[int] = []  # the ids whose keys and values the decoder's cache holds, in order

    # --- the conversation ----------------------------------------------------------------------

    def set_system(self, text: str | None) -> None:
        """Set (or with None / "", remove) the system message; the exchanges stay."""
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def reset(self) -> None:
        """Forget the exchanges; the system message stays."""
        self.set_system(self.system)
        self.messages = self.messages[:1] if self.system else []

    def undo(self) -> bool:
        """Drop the last exchange (the last user message and the reply to it); False if there is none."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i]["role"] == "user":
                del self.messages[i:]
                return True
        return False

    def save(self, path: str | Path) -> None:
        """The conversation as {"messages": [...]}, the JSON that `gpt finetune` reads."""
        Path(path).write_text(json.dumps({"messages": self.messages}, ensure_ascii=False, indent=1) + "\n")

    def load(self, path: str | Path) -> None:
        """A conversation saved by `save` (or any {"messages": [...]} record) replaces this one."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            messages = record["messages"] if isinstance(record, dict) else None
            if not isinstance(messages, list):
                raise BadRecord('expected an object {"messages": [...]}')
            check_conversation(messages)
        except FileNotFoundError:
            raise GptError(f"conversation file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GptError(f"cannot read a conversation from {path}: {e}") from None
        except BadRecord as e:
            raise GptError(f"{path}: {e}") from None
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    # --- turns ---------------------------------------------------------------------------------

    def say(self, text: str) -> "Turn":
        """The user's message -> a Turn: iterate it for the reply."""
        if self.messages and self.messages[-1]["role"] == "user":  # a turn that failed before its reply
            self.messages.pop()
        self.messages.append({"role": "user", "content": text})
        return Turn(self)

    def retry(self) -> "Turn":
        """Sample the last reply again (the generator has moved on: another reply, unless greedy)."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise GptError("there is no reply to retry yet")
        self.messages.pop()
        return Turn(self)

    def prompt_ids(self) -> list[int]:
        """The conversation rendered for the reply; the oldest exchanges dropped while it and room for
        the reply do not fit the context (the system message and the last user message stay)."""
        block = self.engine.block_size
        room = min(self.config.max_new_tokens, max(1, block // REPLY_ROOM))
        first = 1 if self.system is not None else 0
        least = self._render(self.messages[:first] + self.messages[-1:])  # what must fit, whatever is dropped
        if len(least) >= block:
            self.messages.pop()
            what = "the message and the system message take" if first else "the message takes"
            raise GptError(f"{what} {len(least)} tokens: the model's context is {block}")
        dropped = 0
        ids = self._render(self.messages)
        while len(ids) + room > block and len(self.messages) - first > 1:
            del self.messages[first : first + 2]  # the oldest user message and its reply
            dropped += 1
            ids = self._render(self.messages)
        if dropped:
            self.on_note(
                f"the conversation outgrew the model's context of {block} tokens: dropped the oldest "
                f"{dropped} exchange{'s' if dropped > 1 else ''} (the system message stays)"
            )
        return ids

    def _render(self, messages: list[Message]) -> list[int]:
        return render(messages, self.template, self.tokenizer, add_generation_prompt=True).ids


class Turn:
    """One reply being written: iterate for its text; `result` once it has ended."""

    def __init__(self, session: ChatSession):
        self.session = session
        self.result: TurnResult | None = None
        self._events = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._events)

    def close(self) -> None:
        """Stop the reply here (what was written stays); nothing if it has ended already."""
        self._events.close()

    def text(self) -> str:
        """Run to the end; the reply."""
        for _ in self:
            pass
        return self.result.reply

    def _run(self) -> Iterator[str]:
        session, config = self.session, self.session.config
        started = time.perf_counter()
        ids = session.prompt_ids()
        decoder, tokenizer = session.decoder, session.tokenizer
        sample = SampleState(SampleText(config.stop))
        reason, ttft, new = "interrupted", 0.0, 0
        try:
            with torch_threads(session.engine.threads):
                # the ids in common with what the cache holds stay; at least the last one is fed again
                shared = common_prefix(session.cached, ids, len(ids) - 1)
                if not decoder.static and shared != len(session.cached):
                    shared = 0  # a recurrent state cannot go back
                new = len(ids) - shared
                session.cached = ids[:shared]  # (if the prefill is interrupted, the rest is not there)
                logits = decoder.extend([ids[shared:]], shared)
                session.cached = list(ids)
                for i in range(config.max_new_tokens):
                    token_tensor = pick_next(logits, config, session.generator)  # (1,)
                    token = int(token_tensor[0])
                    if token == NO_TOKEN:
                        raise GptError(f"sampling failed: {NOT_FINITE}")
                    ttft = ttft or time.perf_counter() - started
                    text = sample.take(token, tokenizer, session.end_ids)
                    if text:
                        yield text
                    if sample.finish_reason is not None or i == config.max_new_tokens - 1:
                        break
                    if len(session.cached) == decoder.max_len:  # the context is full: the reply ends
                        break
                    logits = decoder.step(token_tensor)
                    session.cached.append(token)
            reason = "stop" if sample.finish_reason in ("eos", "stop") else "length"
        finally:  # ended, failed or interrupted: the reply as far as it got stays in the conversation
            tail = sample.text.add(b"", final=True) if not sample.text.stopped else ""
            self._finish(sample, reason, ids, new, ttft, started)
        if tail:
            yield tail

    def _finish(
        self, sample: SampleState, reason: str, ids: list[int], new: int, ttft: float, started: float
    ):
        session = self.session
        reply = sample.text.text
        if reply.strip():
            session.messages.append({"role": "assistant", "content": reply})
        else:  # an assistant message is never empty (gpt finetune refuses one): the exchange is taken back
            session.messages.pop()
            if reason != "interrupted":
                session.on_note("the reply is empty: this exchange is not kept in the conversation")
        self.result = TurnResult(
            reply, reason, len(ids), new, len(sample.ids), ttft, time.perf_counter() - started
        )


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading ids a and b share, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
