"""What `gpt data show` prints: a rendered conversation as text, its trained stretches marked.

    >>> pieces = trained_pieces(rendered, tok)
    [('<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n', False), ('Hello<|im_end|>', True), ('\\n', False)]
    >>> plain(pieces)                 # piped output: trained text between [[ and ]]
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n[[Hello<|im_end|>]]\\n'
    >>> highlighted(pieces)           # a terminal: trained text in TRAINED_STYLE (a rich Text)

The text is the decoded ids, so what is shown is what is trained, special tokens included.
"""

import codecs

from rich.text import Text

from gptcli.chat.template import Rendered
from gptcli.tokenizers.base import Tokenizer

OPEN, CLOSE = "[[", "]]"  # around trained text, in plain output
TRAINED_STYLE = "bold black on green"


def trained_pieces(rendered: Rendered, tokenizer: Tokenizer) -> list[tuple[str, bool]]:
    """The decoded text cut where training starts or stops: [(text, trained), ...].

    A character whose bytes two pieces share (a token boundary inside it) goes with the later one."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(rendered.ids) + 1):
        if end == len(rendered.ids) or rendered.trained[end] != rendered.trained[start]:
            data = tokenizer.decode_bytes(rendered.ids[start:end])
            text = decoder.decode(data, final=end == len(rendered.ids))
            if text:
                pieces.append((text, bool(rendered.trained[start])))
            start = end
    return pieces


def plain(pieces: list[tuple[str, bool]]) -> str:
    return "".join(f"{OPEN}{text}{CLOSE}" if trained else text for text, trained in pieces)


def highlighted(pieces: list[tuple[str, bool]]) -> Text:
    out = Text()
    for text, trained in pieces:
        out.append(text, style=TRAINED_STYLE if trained else None)
    return out
