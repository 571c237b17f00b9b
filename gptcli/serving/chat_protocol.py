"""OpenAI's chat completions API as data: the request model, and the bodies of answers and chunks.

    request = ChatCompletionRequest(model="out", messages=[{"role": "user", "content": "Hi"}], stream=True)
    request.messages                      # [{"role": "user", "content": "Hi"}]: checked, text only
    message_choice(0, "Hello", "stop")    # {"index": 0, "message": {"role": "assistant", ...}, ...}
    delta_chunk(meta, 0, {"content": "Hel"})

Fields follow https://platform.openai.com/docs/api-reference/chat, checked as strictly as
completions (gptcli.serving.protocol, whose sampling fields, Meta and usage these share).
A message is `{"role", "content"}`: the roles are system, user and assistant, and OpenAI's
"developer" (its newer name for system messages) is taken as system. A content is a string or a
list of text parts (`{"type": "text", "text": ...}`), joined with newlines as vLLM joins them;
any other part (an image, audio) is refused by its type. The conversation must end with the user's
message: the server answers it. Other fields of a message are accepted only as null.
"""

from pydantic import Field, field_validator

from gptcli.serving.protocol import Meta, SamplingRequest

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
NOT_TEXT = "must be a string or a list of text parts ({'type': 'text', 'text': ...})"


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    NEUTRAL = dict(
        logprobs=(None, False), top_logprobs=(None, 0), **SamplingRequest.NEUTRAL, tools=(None, []),
        tool_choice=(None, "none"), response_format=(None, {"type": "text"}), store=(None, False),
    )  # fmt: skip

    messages: list = Field(description="The conversation so far; the last message is the user's.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Tokens per choice at most (default: what the model's context has left)."
    )
    max_tokens: int | None = Field(None, ge=1, description="OpenAI's older name of max_completion_tokens.")
    # OpenAI's, accepted only at their neutral value
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    store: bool | None = None

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list) -> list[dict]:
        """The messages as the chat template takes them: {"role", "content": a string}."""
        if not messages:
            raise ValueError("the list of messages is empty")
        checked = [_message(i, message) for i, message in enumerate(messages)]
        if checked[-1]["role"] != "user":
            raise ValueError(
                f"the last message is the {messages[-1]['role']}'s: this server answers a user's message "
                "(continuing an assistant's message is not supported)"
            )
        return checked

    def asked_tokens(self) -> tuple[str, int | None]:
        """max_completion_tokens, else max_tokens (the newer name wins when both are given)."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


def _message(i: int, message) -> dict:
    if not isinstance(message, dict):
        raise ValueError(f"message {i} is not an object ({{'role': ..., 'content': ...}})")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(
            f"message {i} has the role {role!r}; this server takes system, developer, user and assistant"
        )
    if "content" not in message:
        raise ValueError(f"message {i} ({role}) has no content")
    if other := next((k for k, v in message.items() if k not in ("role", "content") and v is not None), None):
        raise ValueError(f"message {i} ({role}): {other!r} is not supported by this server")
    return {"role": ROLES[role], "content": _text(i, role, message["content"])}


def _text(i: int, role: str, content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise ValueError(f"the content of message {i} ({role}) {NOT_TEXT}")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            if isinstance(kind, str):
                raise ValueError(
                    f"message {i} ({role}) has a content part of type {kind!r}; this server reads text only"
                )
            raise ValueError(f"the content of message {i} ({role}) {NOT_TEXT}")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"a text part of message {i} ({role}) has no string 'text'")
        texts.append(part["text"])
    return "\n".join(texts)


# ---------------------------------------------------------------------------------------------
# answers: chat.completion, and chat.completion.chunk in a stream (Meta says which)


def message_choice(index: int, content: str, finish_reason: str | None) -> dict:
    message = {"role": "assistant", "content": content}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def delta_chunk(meta: Meta, index: int, delta: dict, finish_reason: str | None = None) -> dict:
    """A stream's chunk: a choice's first says the role, the next ones the content, its last the
    finish_reason (with an empty delta)."""
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**meta.head(), "choices": [choice]}
