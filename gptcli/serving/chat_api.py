"""POST /v1/chat/completions: a conversation, rendered by the model's chat template, answered
through the same scheduler (and batch) as completions.

    chats = ChatCompletions(scheduler, models, max_tokens=4096, log=print)  # create_app does this

The messages are rendered with gptcli.chat.template's `render` (the one renderer that training
and `gpt chat` use), with the generation prompt, into one job whose choices end at the template's
end token or at end-of-text (`end_ids`), never shown; finish_reason is "stop" there and at a stop
string, "length" at the token limit. Without max_completion_tokens (or max_tokens) a reply may
take what the model's context has left after the prompt, at least a quarter of the context (past
it the window slides, and the answer's context_note says so), and at most --max-tokens-limit.

Everything else (checks, submitting, cancelling when the client goes away, streaming, usage, the
log) is Completions' (gptcli.serving.api); this class says what differs. A model that was never
fine-tuned for chat has no template: its chat requests get a 400 that says so. Each model has its
own template (an adapter its fine-tune's, the base its own or none: gptcli.serving.adapters).
An encoder-decoder has no chat template either: a 400 that says to use /v1/completions.
"""

from gptcli.chat.template import end_ids, render
from gptcli.errors import GptError
from gptcli.serving import chat_protocol
from gptcli.serving.api import ApiError, Completions, Outbox, sample_config
from gptcli.serving.chat_protocol import ChatCompletionRequest
from gptcli.serving.protocol import Meta, completion_body
from gptcli.serving.scheduler import ChoiceDelta, Job

NO_TEMPLATE = (
    "this model has no chat template: it is a base model, never fine-tuned for chat; use "
    "/v1/completions with it, or fine-tune it into a chat model with `gpt finetune`"
)

ENCDEC_CHAT = (
    "chat is not supported for this architecture: an encoder-decoder answers one prompt at a time; "
    "use /v1/completions"
)


class ChatCompletions(Completions):
    """Completions' machinery with a chat request, one job per request, and chat's bodies."""

    Request = ChatCompletionRequest
    OBJECT, CHUNK_OBJECT, ID_PREFIX = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def parse(self, body: bytes) -> ChatCompletionRequest:
        request = super().parse(body)
        if self.scheduler.encdec:
            raise ApiError(400, ENCDEC_CHAT, "model", code="unsupported_architecture")
        if self.models[request.model].engine.chat_template is None:
            raise ApiError(400, NO_TEMPLATE, "model", code="no_chat_template")
        return request

    def jobs(self, request: ChatCompletionRequest, outbox: Outbox) -> list[Job]:
        model = self.models[request.model]
        template, tokenizer = model.engine.chat_template, model.engine.tokenizer
        try:
            ids = render(request.messages, template, tokenizer, add_generation_prompt=True).ids
            ends = end_ids(template, tokenizer)
        except GptError as e:  # a Jinja template's own refusal (roles must alternate, ...)
            raise ApiError(400, str(e), "messages") from None
        _, asked = request.asked_tokens()
        config = sample_config(request, asked or self.default_max_tokens(len(ids)))
        return [Job(ids, config, outbox.put, end_ids=ends, adapter=model.adapter)]

    def default_max_tokens(self, prompt_tokens: int) -> int:
        """What the context has left, at least a quarter of it (see the module docstring)."""
        block = self.scheduler.block_size
        return min(self.max_tokens, max(block - prompt_tokens, block // 4, 1))

    def answer_body(self, request, meta: Meta, texts: list[str], reasons: list, usage: dict) -> dict:
        choices = [chat_protocol.message_choice(i, t, r) for i, (t, r) in enumerate(zip(texts, reasons))]
        return completion_body(meta, choices, usage)

    def opening_chunks(self, request, meta: Meta, choices: int) -> list[dict]:
        """Each choice's first delta: the role."""
        return [
            chat_protocol.delta_chunk(meta, i, {"role": "assistant", "content": ""}) for i in range(choices)
        ]

    def delta_chunks(self, meta: Meta, delta: ChoiceDelta) -> list[dict]:
        chunks = [chat_protocol.delta_chunk(meta, delta.index, {"content": delta.text})] if delta.text else []
        if delta.finish_reason is not None:
            chunks.append(chat_protocol.delta_chunk(meta, delta.index, {}, delta.finish_reason))
        return chunks

    def describe(self, request: ChatCompletionRequest) -> str:
        return f"chat completion: {len(request.messages)} message(s) x {request.n}"
