"""OpenAI's completions API as data: the request model, and the bodies of answers, chunks and errors
(chat's own request and bodies: gptcli.serving.chat_protocol, on this module's SamplingRequest and Meta).

    request = CompletionRequest(model="out", prompt="Once upon a time", max_tokens=50, stream=True)
    completion_body(meta, choices, usage)       # {"id", "object": "text_completion", "choices", "usage", ...}
    chunk_body(meta, index, text, finish_reason)
    error_body("max_tokens must be at most 64", param="max_tokens")   # {"error": {"message", "type", ...}}

Fields follow https://platform.openai.com/docs/api-reference/completions. Values are checked
strictly (a string is not a number, unknown fields are errors). Fields OpenAI has and this server
does not implement are accepted only at their neutral value (logprobs null, penalties 0, ...);
`top_k` and `ignore_eos` are extensions.
"""

import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STRICT = ConfigDict(extra="forbid", strict=True)
MAX_STOPS = 4  # as OpenAI
UNIONS = {"prompt": "a string or a list of strings", "stop": "a string, a list of strings or null"}


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """What completions and chat completions share: the model, how to sample, how to answer."""

    model_config = STRICT
    NEUTRAL: ClassVar[dict[str, tuple]] = dict(
        presence_penalty=(0.0,), frequency_penalty=(0.0,), logit_bias=(None, {})
    )  # OpenAI's fields this server does not do -> the values that mean "not used"

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="Extension: sample from the k most likely tokens only.")
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, unused
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def unsupported(self) -> str | None:
        """The first OpenAI field set to something this server does not do, if any."""
        return next(
            (name for name, values in self.NEUTRAL.items() if getattr(self, name) not in values), None
        )

    def asked_tokens(self) -> tuple[str, int | None]:
        """The field that says how many tokens a choice may have, and its value (None: not given)."""
        raise NotImplementedError

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    NEUTRAL = dict(best_of=(None, 1), logprobs=(None, 0), **SamplingRequest.NEUTRAL, suffix=(None,))

    prompt: str | list[str] = Field(description="A text, or a list of texts (each gets its own n choices).")
    max_tokens: int | None = Field(
        16, ge=1, description="Tokens to generate per choice (OpenAI's default: 16)."
    )
    echo: bool = False
    ignore_eos: bool = Field(False, description="Extension: do not end a choice at <|endoftext|>.")
    # OpenAI's, accepted only at their neutral value
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("the list of prompts is empty")
        return v

    def asked_tokens(self) -> tuple[str, int | None]:
        return "max_tokens", self.max_tokens

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---------------------------------------------------------------------------------------------
# answers


@dataclass
class Meta:
    """What every chunk of one answer repeats; `context_note` (an extension, only when a prompt and
    max_tokens exceed the model's context: the window slides, as in `gpt generate`) is in the answer,
    or in a stream's first chunk. `object`: "text_completion", or chat's "chat.completion" (an
    answer) and "chat.completion.chunk" (a stream)."""

    id: str
    created: int
    model: str
    context_note: str | None = None
    object: str = "text_completion"

    @classmethod
    def new(
        cls,
        model: str,
        context_note: str | None = None,
        object: str = "text_completion",
        prefix: str = "cmpl",
    ) -> "Meta":
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model, context_note, object)

    def head(self) -> dict:
        head = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        return head | ({"context_note": self.context_note} if self.context_note else {})


def choice_body(index: int, text: str, finish_reason: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens whose keys and values came from the prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(meta: Meta, choices: list[dict], usage: dict) -> dict:
    return {**meta.head(), "choices": choices, "usage": usage}


def chunk_body(meta: Meta, index: int, text: str, finish_reason: str | None = None) -> dict:
    return {**meta.head(), "choices": [choice_body(index, text, finish_reason)]}


def model_body(model: str, created: int) -> dict:
    return {"id": model, "object": "model", "created": created, "owned_by": "gptcli"}


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(e: ValidationError) -> tuple[str, str | None]:
    """A Pydantic error about a request body -> (one-line message, the field it is about)."""
    first = e.errors(include_url=False)[0]
    loc = [p for p in first["loc"] if p != "body"]
    param = str(loc[0]) if loc and isinstance(loc[0], str) else None
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and param is None:
        return "the body must be a JSON object", None
    if first["type"] == "extra_forbidden":
        return f"unknown field {param!r}", param
    if param in UNIONS and len(loc) > 1 and not isinstance(loc[1], int):  # which member of the union failed
        return f"{param} must be {UNIONS[param]}", param
    message = first["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param
