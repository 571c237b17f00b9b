"""The one chat renderer: a conversation -> token ids, and which of them are trained.

Training, `gpt data show`, chat, the server and export all render through `render`, so a model is
prompted with exactly the ids it was trained on:

    >>> template = ChatTemplate.chatml()
    >>> tok, added = with_special_tokens(tok, template.special_tokens)   # what fine-tuning does
    >>> r = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    ...            template, tok)
    >>> tok.decode(r.ids)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n'
    >>> tok.decode([i for i, t in zip(r.ids, r.trained) if t])
    'Hello<|im_end|>'

**Templates.** ChatML (the default) writes `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message,
and `<|im_start|>assistant\\n` as the generation prompt. A Hugging Face-style Jinja template
(`ChatTemplate.from_file("t.jinja")`) is rendered as transformers renders it (a sandboxed Jinja
environment with trim_blocks and lstrip_blocks; variables `messages`, `add_generation_prompt`,
`bos_token` = "" and `eos_token` = "<|endoftext|>"; `raise_exception`, `tojson`, `strftime_now`).
A Jinja template's special tokens are the `<|...|>` names in its text and in what it renders; its
end token is the special token that follows an assistant message (after optional whitespace). Both
can be given instead.

**Ids.** Each message's content is always encoded as ordinary text: a user who writes
`<|im_start|>` gets the ids of that text, never the special id. The template's own markers are
encoded as their special ids. Between two special tokens the text is encoded in one piece, as
Hugging Face does (it splits at added tokens, then pre-tokenizes each stretch), so our ids equal
`tokenizer.apply_chat_template(messages)` of the exported tokenizer.

**The mask.** `trained[i] = 1` means the model learns to predict `ids[i]`. By default exactly each
assistant message's content and the end token after it are trained, in every turn: not the role
headers, not the newline after the end token. A token that straddles a content boundary (rare: a
content starting with whitespace can merge with the header's newline) is trained if any of its
bytes are. `train_on_prompt=True` trains every token.
"""

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from gptcli.config import ENDOFTEXT
from gptcli.errors import GptError, one_line_validation_error
from gptcli.tokenizers.base import Tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BOS_TOKEN, EOS_TOKEN = "", ENDOFTEXT  # what a Jinja template sees as bos_token and eos_token
SPECIAL_NAME = re.compile(r"<\|[^|\s]+\|>")  # how special tokens are written: <|im_start|>, <|eot_id|>
PLACEHOLDER = "\ue000{}\ue001"  # stands for message i's content while a Jinja template renders
PLACEHOLDERS = re.compile("\ue000(\\d+)\ue001")
SAMPLE = [  # a conversation rendered to learn a Jinja template's tokens
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
    {"role": "user", "content": "v"},
    {"role": "assistant", "content": "b"},
]


class ChatTemplate(BaseModel):
    """How conversations are written; saved in a fine-tuned checkpoint's config.json (`to_json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["chatml", "jinja"] = "chatml"
    source: str | None = None  # the Jinja text (kind "jinja")
    special_tokens: list[str] = [IM_START, IM_END]  # what a tokenizer needs added, in this order
    end_token: str = IM_END  # ends each assistant message: trained, and where generation stops

    @model_validator(mode="after")
    def _check(self) -> "ChatTemplate":
        if (self.kind == "jinja") != (self.source is not None):
            raise ValueError("a jinja template needs its source, and only a jinja template has one")
        if self.end_token not in self.special_tokens:
            raise ValueError(f"the end token {self.end_token!r} is not one of its special tokens")
        return self

    @classmethod
    def chatml(cls) -> "ChatTemplate":
        return cls()

    @classmethod
    def from_file(
        cls, path: str | Path, special_tokens: list[str] | None = None, end_token: str | None = None
    ) -> "ChatTemplate":
        """A Jinja template file; its special and end tokens found as the module docstring says."""
        path = Path(path)
        if not path.is_file():
            raise GptError(f"chat template not found: {path}")
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise GptError(f"chat template {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return cls.from_jinja(source, special_tokens, end_token, name=str(path))

    @classmethod
    def from_jinja(
        cls,
        source: str,
        special_tokens: list[str] | None = None,
        end_token: str | None = None,
        name: str = "the chat template",
    ) -> "ChatTemplate":
        pieces = _sample_pieces(source, name)
        template_text = "".join(text for text, role in pieces if role is None)
        if special_tokens is None:
            special_tokens = list(dict.fromkeys(SPECIAL_NAME.findall(source + template_text)))
        if end_token is None:
            end_token = _end_token_after_assistant(pieces, special_tokens, name)
        try:
            return cls(kind="jinja", source=source, special_tokens=special_tokens, end_token=end_token)
        except ValidationError as e:
            raise GptError(f"{name}: {one_line_validation_error(e)}") from None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict | None) -> "ChatTemplate":
        """What `to_json` wrote; None (no template recorded) is ChatML."""
        if data is None:
            return cls.chatml()
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise GptError(f"invalid chat template: {one_line_validation_error(e)}") from None

    def jinja(self) -> str:
        """The template as Hugging Face Jinja (tokenizer_config.json's chat_template, GGUF's)."""
        return CHATML_JINJA if self.kind == "chatml" else self.source


def resolve_template(path: str | Path | None = None, saved: dict | None = None) -> ChatTemplate:
    """The template to use: a --chat-template file, else the one saved with a checkpoint
    (config.json's "chat_template"), else ChatML."""
    if path is not None:
        return ChatTemplate.from_file(path)
    if saved is not None:
        return ChatTemplate.from_json(saved)
    return ChatTemplate.chatml()


@dataclass
class Rendered:
    ids: list[int]
    trained: list[int]  # 1: the model learns to predict ids[i]; same length as ids

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


def render(
    messages: list[dict],
    template: ChatTemplate,
    tokenizer: Tokenizer,
    add_generation_prompt: bool = False,
    train_on_prompt: bool = False,
) -> Rendered:
    """A conversation as ids and its mask (see the module docstring)."""
    if template.kind == "chatml":
        pieces = _chatml_pieces(messages, add_generation_prompt)
    else:
        pieces = _jinja_pieces(template.source, messages, add_generation_prompt)
    return _encode(_mark(pieces, template.end_token, train_on_prompt), template.special_tokens, tokenizer)


def end_ids(template: ChatTemplate, tokenizer: Tokenizer) -> tuple[int, ...]:
    """Where a reply ends: the template's end token, and end-of-text where the tokenizer has it."""
    ids = [_special_id(tokenizer, template.end_token)]
    if tokenizer.eot_id is not None and tokenizer.eot_id not in ids:
        ids.append(tokenizer.eot_id)
    return tuple(ids)


# ---- 1) a conversation -> pieces: (text, the role whose content it is, or None for template text)


def _chatml_pieces(messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, str | None]]:
    pieces: list[tuple[str, str | None]] = []
    for message in messages:
        role, content = _role_and_content(message)
        pieces += [(f"{IM_START}{role}\n", None), (content, role), (f"{IM_END}\n", None)]
    if add_generation_prompt:
        pieces.append((f"{IM_START}assistant\n", None))
    return pieces


def _jinja_pieces(
    source: str, messages: list[dict], add_generation_prompt: bool, name: str = "the chat template"
):
    """Render with each content replaced by a placeholder, then cut the text at the placeholders."""
    contents = [_role_and_content(m) for m in messages]
    stand_ins = [{**m, "content": PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
    compiled = _compiled(source)
    try:
        text = _render(compiled, stand_ins, add_generation_prompt)
    except Exception as e:  # TemplateError from raise_exception, or the template's own bugs
        raise GptError(f"{name} failed to render the conversation: {e}") from None
    parts = PLACEHOLDERS.split(text)  # text, index, text, index, ..., text
    if len(parts[1::2]) != len(set(parts[1::2])):
        raise GptError(f"{name} writes a message's content more than once: cannot tell what to train")
    order = [int(i) for i in parts[1::2]]
    as_written = _contents_as_written(compiled, messages, add_generation_prompt, parts[0::2], order)
    pieces: list[tuple[str, str | None]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pieces.append((part, None))
        else:
            role, content = contents[int(part)]
            pieces.append((as_written.get(int(part), content), role))
    return pieces


def _render(compiled, messages: list[dict], add_generation_prompt: bool) -> str:
    return compiled.render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
    )


def _contents_as_written(compiled, messages, add_generation_prompt, between: list[str], order: list[int]):
    """{message index: its content as the template writes it}, for a template that filters contents
    (Llama 3's `message['content'] | trim`): the text rendered with the real contents, cut at the
    template's own text around each placeholder. {} where that text is not found in order (a
    template whose other text depends on the contents): the contents are then used as given."""
    try:
        text = _render(compiled, messages, add_generation_prompt)
    except Exception:  # noqa: BLE001 - the placeholder render worked: keep its contents
        return {}
    if not text.startswith(between[0]):
        return {}
    found, at = {}, len(between[0])
    for k, (n, after) in enumerate(zip(order, between[1:])):
        content = str(messages[n].get("content", ""))
        if text.startswith(content + after, at):
            end = at + len(content)  # written as given (most contents: a filter like trim changes nothing)
        elif after:
            end = text.find(after, at)
        else:  # nothing of the template's after it: the rest, if it is the last content
            end = len(text) if k == len(order) - 1 else -1
        if end < 0:
            return {}
        found[n], at = text[at:end], end + len(after)
    return found if at == len(text) else {}


@functools.lru_cache(maxsize=8)
def _compiled(source: str):
    """The template compiled as transformers compiles chat templates (sandboxed)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (HF's marker of assistant text): rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise GptError(f"not a valid Jinja template (line {e.lineno}: {e.message})") from None


def _role_and_content(message: dict) -> tuple[str, str]:
    role, content = message.get("role"), message.get("content")
    if role not in ("system", "user", "assistant"):
        raise GptError(f"unknown role {role!r} (expected system, user or assistant)")
    if not isinstance(content, str):
        raise GptError(f"the content of a {role} message is not a string")
    return role, content


def _sample_pieces(source: str, name: str) -> list[tuple[str, str | None]]:
    """The pieces of SAMPLE (without its system message if the template refuses one)."""
    try:
        _compiled(source)
    except GptError as e:
        raise GptError(f"{name}: {e}") from None
    try:
        return _jinja_pieces(source, SAMPLE, True, name)
    except GptError:
        return _jinja_pieces(source, SAMPLE[1:], True, name)


def _end_token_after_assistant(pieces, special_tokens: list[str], name: str) -> str:
    for i, (_, role) in enumerate(pieces[:-1]):
        if role == "assistant":
            after = pieces[i + 1][0].lstrip()
            found = next((s for s in special_tokens if after.startswith(s)), None)
            if found is None:
                raise GptError(
                    f"{name}: no special token follows an assistant message, so nothing would teach "
                    "the model to stop (write one, such as {{ eos_token }}, after the content)"
                )
            return found
    raise GptError(f"{name} writes no assistant message")


# ---- 2) pieces -> segments: (text, trained, is template text)


def _mark(pieces: list[tuple[str, str | None]], end_token: str, train_on_prompt: bool):
    """Assistant contents trained, and the end token after each (with the whitespace before it)."""
    segments: list[tuple[str, bool, bool]] = []
    after_assistant = False
    for text, role in pieces:
        if role is not None:
            segments.append((text, train_on_prompt or role == "assistant", False))
        else:
            end = re.match(r"\s*" + re.escape(end_token), text) if after_assistant else None
            if end:
                segments.append((text[: end.end()], True, True))
                text = text[end.end() :]
            segments.append((text, train_on_prompt, True))
        after_assistant = role == "assistant"
    return [s for s in segments if s[0]]


# ---- 3) segments -> ids and mask: special tokens by id, each stretch between them encoded whole


def _encode(
    segments: list[tuple[str, bool, bool]], special_tokens: list[str], tokenizer: Tokenizer
) -> Rendered:
    longest_first = sorted(special_tokens, key=len, reverse=True)
    markers = re.compile("|".join(map(re.escape, longest_first))) if special_tokens else None
    ids: list[int] = []
    trained: list[int] = []
    stretch: list[tuple[str, bool]] = []
    for text, is_trained, is_template in segments:
        start = 0
        for m in markers.finditer(text) if is_template and markers else []:
            stretch.append((text[start : m.start()], is_trained))
            _encode_stretch(stretch, tokenizer, ids, trained)
            stretch = []
            ids.append(_special_id(tokenizer, m.group()))
            trained.append(int(is_trained))
            start = m.end()
        stretch.append((text[start:], is_trained))
    _encode_stretch(stretch, tokenizer, ids, trained)
    return Rendered(ids, trained)


def _encode_stretch(parts: list[tuple[str, bool]], tokenizer: Tokenizer, ids: list[int], trained: list[int]):
    """Encode the parts' text as one text; a token is trained if any of its bytes is in a trained part."""
    parts = [(text, t) for text, t in parts if text]
    if not parts:
        return
    new = tokenizer.encode_ordinary("".join(text for text, _ in parts))
    ids += new
    if len({t for _, t in parts}) == 1:
        trained += [int(parts[0][1])] * len(new)
        return
    ends, flags, offset = [], [], 0  # each part's end, in bytes of the stretch
    for text, t in parts:
        offset += len(text.encode("utf-8"))
        ends.append(offset)
        flags.append(t)
    part, start = 0, 0
    for token in new:
        end = start + len(tokenizer.token_bytes(token))
        while ends[part] <= start:
            part += 1
        hit, k = flags[part], part
        while not hit and k + 1 < len(ends) and ends[k] < end:
            k += 1
            hit = flags[k]
        trained.append(int(hit))
        start = end


def _special_id(tokenizer: Tokenizer, name: str) -> int:
    if name not in tokenizer.special_tokens:
        raise GptError(
            f"the tokenizer has no special token {name!r}, which the chat template needs "
            "(fine-tuning adds it: gptcli.tokenizers.with_special_tokens)"
        )
    return tokenizer.special_tokens[name]
