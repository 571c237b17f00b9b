"""Character-level tokenizer: one id per character seen in the corpus, for small character models.

    >>> tok = CharTokenizer(chars=["\\n", " ", "a", "b"], special_tokens={"<|endoftext|>": 4})
    >>> tok.encode("ab ba")
    [2, 3, 1, 3, 2]
    >>> tok.decode([2, 3, 4])
    'ab<|endoftext|>'

Characters are ordered by code point, so the same corpus always gives the same ids. Text with a
character the corpus never had is refused with an error that names the characters.
"""

from collections import Counter
from collections.abc import Iterable

from gptcli.errors import GptError
from gptcli.tokenizers.base import CorpusFile, Tokenizer, TokenizerFile


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(
        self,
        chars: list[str],
        special_tokens: dict[str, int] | None = None,
        trained_on: list[CorpusFile] | None = None,
    ):
        super().__init__(special_tokens or {}, trained_on)
        self.chars = list(chars)
        self.char_to_id = {c: i for i, c in enumerate(self.chars)}

    @property
    def n_ordinary(self) -> int:
        return len(self.chars)

    def encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self.char_to_id[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.char_to_id})
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise GptError(
                f"text has {len(unknown)} character(s) this char tokenizer does not know: {shown}"
            ) from None

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < len(self.chars):
            return self.chars[token_id].encode("utf-8")
        return self.id_to_special[token_id].encode("utf-8")

    def decode(self, ids: list[int]) -> str:
        self.check_ids(ids)
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.id_to_special[i] for i in ids)

    def to_file(self) -> TokenizerFile:
        return TokenizerFile(
            kind="char", chars=self.chars, special_tokens=self.special_tokens, trained_on=self.trained_on
        )


def count_chars(texts: Iterable[str]) -> Counter:
    """Character counts over all texts (documents, or blocks of them)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(text)
    return counts
