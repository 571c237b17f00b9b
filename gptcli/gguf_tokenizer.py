"""Our BPE tokenizer as GGUF's `tokenizer.ggml.*` keys, so llama.cpp encodes text to our ids.

    vocab = gguf_vocab(tokenizer, chat_template)   # refuses what llama.cpp cannot reproduce
    vocab.write(writer)                            # onto a gguf.GGUFWriter

What the file holds (llama.cpp's `gpt2` tokenizer model, the one its converter writes for GPT-2):

    tokenizer.ggml.model           "gpt2": byte-level BPE
    tokenizer.ggml.pre             the named pre-tokenizer: a GGUF file cannot carry a split regex
    tokenizer.ggml.tokens          every id's token: ordinary ones in GPT-2's byte-to-unicode form
                                   (space -> 'Ġ'), special ones as their text
    tokenizer.ggml.token_type      NORMAL, or CONTROL for a special token (matched in a text only when
                                   the caller parses specials, and not printed by default)
    tokenizer.ggml.merges          "left right" in rank order (merge i made id 256 + i)
    tokenizer.ggml.bos/eos_token_id, add_bos_token false: nothing is prepended, as in our training
    tokenizer.chat_template        a fine-tuned model's template, as Jinja

**Pre-tokenizers.** llama.cpp splits a text by the regex its named pre-tokenizer stands for, then
merges inside each piece. Only where that split is ours is the encoding ours, so a pattern maps only
to a pre-tokenizer that splits real text as it does (tests/test_gguf.py proves each on the sonnets,
conversations, code and non-ASCII text):

    gpt2 (tiktoken's r50k)   -> gpt-2       the same split everywhere
    gpt4 (tiktoken's cl100k) -> llama-bpe   Llama 3's regex: the same split, except where a text ends
                                            in whitespace holding a newline and then more whitespace:
                                            'x \\n  ' -> ' \\n', '  ' where ours keeps ' \\n  ' (cl100k's
                                            `\\s++$`), so such a prompt's last tokens may differ

Any other regex is refused (a GGUF file cannot carry one), as is the char tokenizer.
"""

from dataclasses import dataclass

from gptcli.chat.template import ChatTemplate
from gptcli.errors import GptError
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.gpt2 import gpt2_vocab, token_to_str
from gptcli.tokenizers.patterns import GPT2_PATTERN, GPT4_PATTERN

# our split pattern -> the llama.cpp pre-tokenizer that splits real text as it does (the docstring)
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "llama-bpe"}
NORMAL, CONTROL = 1, 3  # gguf.TokenType values (llama.cpp's llama_token_type)


@dataclass
class GgufVocab:
    """Everything the tokenizer adds to a GGUF file (the module docstring)."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    eot_id: int | None  # a chat model's end token: where a reply ends
    chat_template: str | None

    def write(self, writer) -> None:
        """Add the tokenizer keys to a gguf.GGUFWriter."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        writer.add_bos_token_id(self.bos_id)
        writer.add_eos_token_id(self.eos_id)
        if self.eot_id is not None:
            writer.add_eot_token_id(self.eot_id)
        writer.add_add_bos_token(False)  # our models are trained on text as it is, no BOS in front
        writer.add_add_eos_token(False)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def pre_tokenizer(tokenizer: Tokenizer) -> str:
    """The llama.cpp pre-tokenizer name for our tokenizer's split, or a GptError saying why none fits."""
    if not isinstance(tokenizer, BPETokenizer):
        raise GptError(
            f"a {tokenizer.kind} tokenizer has no GGUF form: llama.cpp reads byte-level BPE "
            "(train one with `gpt tokenizer train`, then the model with --tokenizer)"
        )
    if tokenizer.pattern in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[tokenizer.pattern]
    raise GptError(
        f"the tokenizer's split pattern ({tokenizer.pattern_name}) has no llama.cpp pre-tokenizer: GGUF "
        "names one instead of carrying a regex; tokenizers trained with --pattern gpt2 or gpt4 export"
    )


def gguf_vocab(tokenizer: Tokenizer, chat_template: ChatTemplate | None = None) -> GgufVocab:
    """Our tokenizer (and a fine-tuned model's chat template) -> the GGUF tokenizer keys."""
    pre = pre_tokenizer(tokenizer)
    _, merges = gpt2_vocab(tokenizer)  # "left right" in GPT-2's string form
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)  # ids follow the merges
    tokens = [token_to_str(t) for t in tokenizer.vocab] + specials
    if len(set(tokens)) != len(tokens):  # llama.cpp looks tokens up by text: one id per text
        clash = next(s for s in specials if s in tokens[: tokenizer.n_ordinary])
        raise GptError(
            f"the special token {clash!r} is also an ordinary token's text: llama.cpp would mix them up"
        )
    types = [CONTROL if i >= tokenizer.n_ordinary else NORMAL for i in range(tokenizer.vocab_size)]
    eot = tokenizer.eot_id
    # <|endoftext|> begins and ends a document (GPT-2's convention); without one the last id stands in,
    # as in the HF export (add_bos_token is false: it is never put in front of a prompt)
    bos = eot if eot is not None else tokenizer.vocab_size - 1
    end = None
    if chat_template is not None:
        missing = [s for s in chat_template.special_tokens if s not in tokenizer.special_tokens]
        if missing:
            raise GptError(f"the tokenizer lacks the chat template's special token(s) {', '.join(missing)}")
        end = tokenizer.special_tokens[chat_template.end_token]
    return GgufVocab(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=bos,
        eos_id=end if end is not None else bos,  # a chat model's reply ends at its template's end token
        eot_id=end,
        chat_template=chat_template.jinja() if chat_template is not None else None,
    )
