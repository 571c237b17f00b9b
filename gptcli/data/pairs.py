"""Prompt/completion pairs: what the encoder-decoder trains on, and what `gpt eval` scores completions of.

    pairs, report = read_pairs(["pairs.jsonl"])          # [Pair(prompt, completion)], skipped records
    src, target = encode_pair(tokenizer, pairs[0])        # the encoder's ids; [start] + completion + [end]

A pair is a conversation of one user message and one assistant reply, in any format gpt finetune
reads (gptcli.chat.formats): {"prompt", "completion"}, Alpaca's instruction/input/output, or a
two-turn messages or ShareGPT record. A system message or more turns have no place in a pair: the
record is bad (an error naming it, or skipped and counted with skip_bad).

The encoder-decoder's ids: the prompt's text as ordinary text (a special token's name written in it
is text), and the target framed by the tokenizer's <|endoftext|>, which starts the decoder and ends
the completion: the decoder reads target[:-1] and learns target[1:] (the completion and its end).
"""

from dataclasses import dataclass
from pathlib import Path

from gptcli.chat.formats import MAX_PROBLEMS_KEPT, BadRecord, Message, ReadReport, iter_conversations
from gptcli.config import ENDOFTEXT
from gptcli.data.sources import SourceOptions, describe_source, find_sources
from gptcli.errors import GptError
from gptcli.tokenizers.base import Tokenizer

PAIR_FORMATS = (
    "JSONL, JSON or Parquet records of prompt + completion, Alpaca, or one user + one assistant message"
)


@dataclass(frozen=True)
class Pair:
    prompt: str
    completion: str


def as_pair(messages: list[Message]) -> Pair:
    """A conversation of one user message then one assistant reply -> a Pair; else BadRecord."""
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"]:
        raise BadRecord(
            f"a pair is one user message then one assistant reply, not {len(roles)} message(s) "
            f"({', '.join(roles)})"
        )
    return Pair(messages[0]["content"], messages[1]["content"])


def read_pairs(
    paths: list[str | Path], fmt: str = "auto", skip_bad: bool = False, split: str | None = None
) -> tuple[list[Pair], ReadReport]:
    """Every pair of the files, folders and patterns in `paths`, in order, and what was skipped."""
    report = ReadReport()
    pairs = []
    for where, messages in iter_conversations(paths, fmt, skip_bad, split, report):
        try:
            pairs.append(as_pair(messages))
        except BadRecord as e:
            if not skip_bad:
                raise GptError(f"{where}: {e}") from None
            report.conversations -= 1
            report.bad += 1
            if len(report.problems) < MAX_PROBLEMS_KEPT:
                report.problems.append(f"{where}: {e}")
    if not pairs:
        raise GptError(
            f"no prompt/completion pairs in {', '.join(map(str, paths))}: {report.bad} bad skipped"
        )
    return pairs, report


def require_pair_sources(paths: list[str | Path], split: str | None, why: str) -> None:
    """Pairs are records: a plain text file among `paths` is a one-line error saying `why` pairs are read."""
    options = SourceOptions(split=split)
    for path in find_sources(list(paths)):
        if describe_source(path, options).format == "text":
            raise GptError(f"{path} is plain text: {why} ({PAIR_FORMATS})")


def are_pairs(paths: list[str | Path], split: str | None = None) -> bool:
    """True when the first record of `paths` is a conversation (prompt + completion, Alpaca, messages,
    ShareGPT); plain text, or records of another shape, are a corpus."""
    try:
        next(iter_conversations(paths, "auto", split=split), None)
    except GptError:  # a text file, or a first record that is no conversation
        return False
    return True


def start_id(tokenizer: Tokenizer) -> int:
    """The id that starts the decoder and ends a completion: the tokenizer's <|endoftext|>."""
    if tokenizer.eot_id is None:
        raise GptError(f"an encoder-decoder needs {ENDOFTEXT} in its tokenizer, to start and end completions")
    return tokenizer.eot_id


def encode_pair(tokenizer: Tokenizer, pair: Pair) -> tuple[list[int], list[int]]:
    """(the prompt's ids, [start] + the completion's ids + [end]); start and end are <|endoftext|>."""
    eot = start_id(tokenizer)
    return tokenizer.encode_ordinary(pair.prompt), [eot, *tokenizer.encode_ordinary(pair.completion), eot]
