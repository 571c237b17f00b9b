"""The running text of one sample: token bytes in, printable text out.

    text = SampleText(stops=["\n\n"])
    printable = text.add(tokenizer.token_bytes(token))   # "" while a character or a stop is pending

Decoding is incremental, so a character whose bytes span two tokens is handed out whole, once both
have arrived; text that might be the start of a stop string is held back until it is clear that it
is not; a stop string that appears cuts the text just before it. A SampleState is a sample in
progress (its text, its ids, why it ended), shared by `gpt generate` and the server:

    sample = SampleState(SampleText(["\n\n"]))
    printable = sample.take(token, tokenizer, eos=tokenizer.eot_id)   # then sample.finish_reason
"""

import codecs
from collections.abc import Collection
from dataclasses import dataclass, field


class SampleText:
    """Bytes in, printable text out: incremental UTF-8 decoding, stop strings, held-back text."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def add(self, data: bytes, final: bool = False) -> str:
        """Feed one token's bytes; return the text that is now final."""
        before = len(self.text)
        self.text += self.decoder.decode(data, final=final)
        for stop in self.stops:
            # a stop can only newly appear where it overlaps what was just added
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        return self.flush(final or self.stopped)

    def flush(self, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held_back()
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


@dataclass
class SampleState:
    """One sample while it runs: its text so far, its new ids, why it ended (None until it does)."""

    text: SampleText
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def take(self, token: int, tokenizer, eos: "int | Collection[int] | None") -> str:
        """The next token -> the text it makes printable. The sample ends at `eos` (the end-of-text
        id, or several, such as a chat template's end token and end-of-text; never kept; None:
        never), reason "eos", and at a stop string, reason "stop"."""
        if token == eos or (eos is not None and not isinstance(eos, int) and token in eos):
            self.finish_reason = "eos"
            return self.text.add(b"", final=True)
        self.ids.append(token)
        text = self.text.add(tokenizer.token_bytes(token))
        if self.text.stopped:
            self.finish_reason = "stop"
        return text
