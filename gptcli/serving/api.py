"""The HTTP side: a FastAPI app in front of the scheduler.

    app = create_app(scheduler, ServeConfig(api_key="sk-local"), models, log=print)   # models: {id: ServedModel}

Routes: `GET /` the playground page, `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`,
`POST /v1/completions` and `POST /v1/chat/completions` (gptcli.serving.chat_api), JSON or server-sent
events with `stream: true`, both through the same scheduler. How a completion goes:
the body is checked (gptcli.serving.protocol), each prompt is encoded and becomes a Job with its
own n rows, the jobs go to the scheduler's inbox, and the handler reads their events from an
Outbox (an asyncio queue the scheduler's thread feeds) into one JSON answer or a stream of chunks.
A client that goes away cancels its jobs: their rows are free at the scheduler's next round.
A request's `model` is the base's id or an adapter's (gpt serve --adapter NAME=RUN,
gptcli.serving.adapters): its prompt is encoded, and its rows decoded, as that model's.

Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad body
(FastAPI's 422 is not used), 401 without the API key, 404, 413 for a body over the limit, 500 when
generation fails (that request only).
"""

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from gptcli.config import SampleConfig, ServeConfig
from gptcli.errors import GptError
from gptcli.generation.engine import context_note
from gptcli.serving import protocol
from gptcli.serving.adapters import ServedModel
from gptcli.serving.scheduler import ChoiceDelta, Job, JobEnd, Scheduler

ENCDEC_NO_PREFIX_CACHE = "an encoder-decoder: no prefix cache (its prompts are encoded whole, each apart)"
DISCONNECT_POLL = 0.5  # seconds between checks that a client waiting for a whole answer is still there
Log = Callable[[str], None]


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, type: str | None = None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        return JSONResponse(protocol.error_body(self.message, self.type, self.param, self.code), self.status)


class ClientGone(Exception):
    pass


def playground_page() -> str:
    return resources.files("gptcli.serving").joinpath("page.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# scheduler thread -> request handler


class Outbox:
    """One request's events: put by the scheduler's thread, read by the handler on the event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: asyncio.Future | None = None

    def put(self, event: ChoiceDelta | JobEnd) -> None:  # any thread; raises once the loop is closed
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self, http: Request | None = None) -> ChoiceDelta | JobEnd:
        """The next event; with `http`, raise ClientGone if that client disconnects meanwhile."""
        if http is None:
            return await self.queue.get()
        while True:
            if self.pending is None:
                self.pending = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({self.pending}, timeout=DISCONNECT_POLL)
            if done:
                event, self.pending = self.pending.result(), None
                return event
            if await http.is_disconnected():
                self.pending.cancel()
                raise ClientGone


# ---------------------------------------------------------------------------------------------
# completions


class Completions:
    """POST /v1/completions: a checked request -> jobs -> one answer, or a stream of chunks.

    gptcli.serving.chat_api's ChatCompletions is this with its own request, jobs and bodies (the
    methods under "what a completion says"); checks, the scheduler, streaming and logging are these."""

    Request: type[protocol.SamplingRequest] = protocol.CompletionRequest
    OBJECT, CHUNK_OBJECT, ID_PREFIX = "text_completion", "text_completion", "cmpl"

    def __init__(
        self, scheduler: Scheduler, models: dict[str, ServedModel], max_tokens: int, log: Log | None
    ):
        self.scheduler, self.models, self.max_tokens, self.log = scheduler, models, max_tokens, log

    def parse(self, body: bytes) -> protocol.SamplingRequest:
        try:
            request = self.Request.model_validate_json(body)
        except ValidationError as e:
            raise ApiError(400, *protocol.validation_error(e)) from None
        if request.model not in self.models:
            raise ApiError(404, f"the model {request.model!r} does not exist; this server has "
                           f"{', '.join(map(repr, self.models))}", "model", code="model_not_found")  # fmt: skip
        if name := request.unsupported():
            raise ApiError(400, f"{name} is not supported by this server", name)
        name, asked = request.asked_tokens()
        if asked is not None and asked > self.max_tokens:
            raise ApiError(
                400, f"{name} must be at most {self.max_tokens} on this server (--max-tokens-limit)", name
            )
        if request.n > self.scheduler.max_batch:
            raise ApiError(400, f"n must be at most {self.scheduler.max_batch} (the batch size)", "n")
        return request

    def submit(self, jobs: list[Job]) -> None:
        try:
            for job in jobs:
                self.scheduler.submit(job)
        except GptError as e:
            for job in jobs:
                job.cancel()
            raise ApiError(503, str(e)) from None

    async def events(
        self, jobs: list[Job], outbox: Outbox, http: Request | None
    ) -> AsyncIterator[ChoiceDelta]:
        """The jobs' deltas until every job has ended; a failed job fails the request (ApiError 500)."""
        ended = 0
        try:
            while ended < len(jobs):
                event = await outbox.get(http)
                if isinstance(event, JobEnd):
                    if event.error is not None:
                        raise ApiError(500, f"generation failed: {event.error}")
                    ended += 1
                else:
                    yield event
        finally:
            for job in jobs:  # ended jobs ignore it; the others leave the batch at the next round
                job.cancel()

    def meta(self, request, jobs: list[Job], streamed: bool) -> protocol.Meta:
        """Past the context the window slides, as in `gpt generate`: said of the longest prompt."""
        longest = max(len(job.prompt_ids) for job in jobs)
        scheduler = self.scheduler
        note = context_note(longest, jobs[0].config.max_new_tokens, scheduler.block_size, scheduler.encdec)
        kind = self.CHUNK_OBJECT if streamed else self.OBJECT
        return protocol.Meta.new(request.model, note, kind, self.ID_PREFIX)

    async def answer(self, request, jobs: list[Job], outbox: Outbox, http: Request) -> dict:
        meta, started = self.meta(request, jobs, streamed=False), time.perf_counter()
        texts = [""] * (len(jobs) * request.n)
        reasons: list[str | None] = [None] * len(texts)
        tokens = 0
        async for delta in self.events(jobs, outbox, http):
            texts[delta.index] += delta.text
            if delta.finish_reason is not None:
                reasons[delta.index], tokens = delta.finish_reason, tokens + delta.tokens
        usage = self.usage(jobs, tokens)
        self._log(request, usage, started, "")
        return self.answer_body(request, meta, texts, reasons, usage)

    async def stream(self, request, jobs: list[Job], outbox: Outbox) -> AsyncIterator[str]:
        """Server-sent events: the opening chunks and a chunk or two per delta (the first with the
        context note, if any), the usage if asked for, then `data: [DONE]`."""
        meta, started = self.meta(request, jobs, streamed=True), time.perf_counter()
        usage, tokens = self.usage(jobs, 0), 0
        note = "; the client went away"
        try:
            for body in self.opening_chunks(request, meta, len(jobs) * request.n):
                yield sse(body)
                meta.context_note = None  # said once, in the first chunk
            async for delta in self.events(jobs, outbox, None):
                tokens += delta.tokens
                usage = self.usage(jobs, tokens)
                for body in self.delta_chunks(meta, delta):
                    yield sse(body)
                    meta.context_note = None
            if request.include_usage:
                yield sse({**meta.head(), "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
            note = ""
        except ApiError as e:  # the answer has begun (status 200): the error goes in the stream
            note = f"; {e.message}"
            yield sse(protocol.error_body(e.message, e.type, e.param, e.code))
        finally:
            self._log(request, usage, started, note, streamed=True)

    @staticmethod
    def usage(jobs: list[Job], completion_tokens: int) -> dict:
        """OpenAI's usage of these jobs (cached_tokens: what the prefix cache gave, known once admitted)."""
        prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
        return protocol.usage_body(prompt_tokens, completion_tokens, sum(job.cached_tokens for job in jobs))

    def _log(self, request, usage: dict, started: float, note: str, streamed: bool = False) -> None:
        if self.log is not None:
            seconds = time.perf_counter() - started
            self.log(
                f"{self.describe(request)}, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
                f"completion tokens in {seconds:.2f} s{', streamed' if streamed else ''}{note}"
            )

    # --- what a completion says ----------------------------------------------------------------

    def jobs(self, request: protocol.CompletionRequest, outbox: Outbox) -> list[Job]:
        """One job per prompt; prompt text is only ever text (no FILE: reading here)."""
        config = sample_config(request, request.max_tokens or 16, request.ignore_eos)
        model, jobs = self.models[request.model], []
        for i, prompt in enumerate(request.prompts):
            try:
                ids = model.engine.encode_prompt(prompt)  # the model's own tokenizer
            except GptError as e:
                raise ApiError(400, str(e), "prompt") from None
            jobs.append(Job(ids, config, outbox.put, first_index=i * request.n, adapter=model.adapter))
        return jobs

    def answer_body(self, request, meta: protocol.Meta, texts: list[str], reasons: list, usage: dict) -> dict:
        n = request.n
        echoed = [request.prompts[i // n] if request.echo else "" for i in range(len(texts))]
        choices = [
            protocol.choice_body(i, e + t, r) for i, (e, t, r) in enumerate(zip(echoed, texts, reasons))
        ]
        return protocol.completion_body(meta, choices, usage)

    def opening_chunks(self, request, meta: protocol.Meta, choices: int) -> list[dict]:
        """What a stream says before any token: the prompts, with echo."""
        n = request.n
        return [protocol.chunk_body(meta, i, request.prompts[i // n]) for i in range(choices) if request.echo]

    def delta_chunks(self, meta: protocol.Meta, delta: ChoiceDelta) -> list[dict]:
        return [protocol.chunk_body(meta, delta.index, delta.text, delta.finish_reason)]

    def describe(self, request) -> str:
        return f"completion: {len(request.prompts)} prompt(s) x {request.n}"


def sample_config(
    request: protocol.SamplingRequest, max_new_tokens: int, ignore_eos: bool = False
) -> SampleConfig:
    """How a request samples, as `gpt generate` would (top_p 1 is no top-p)."""
    return SampleConfig(
        num_samples=request.n, max_new_tokens=max_new_tokens, temperature=request.temperature,
        top_k=request.top_k, top_p=None if request.top_p == 1.0 else request.top_p, seed=request.seed,
        stop=request.stops, ignore_eos=ignore_eos,
    )  # fmt: skip


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events whose jobs are cancelled when the response ends, however it ends (even a
    client gone before the first chunk, when the generator never ran)."""

    def __init__(self, content: AsyncIterator[str], jobs: list[Job]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.jobs = jobs

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for job in self.jobs:
                job.cancel()


# ---------------------------------------------------------------------------------------------
# the app


def create_app(
    scheduler: Scheduler, config: ServeConfig, models: dict[str, ServedModel], log: Log | None = None
) -> FastAPI:
    """The FastAPI app for these models (the base first); whoever runs the app starts and stops the
    scheduler's thread."""
    app = FastAPI(title="gpt serve", docs_url=None, redoc_url=None, openapi_url=None)  # nothing from a CDN
    from gptcli.serving.chat_api import ChatCompletions  # here: chat_api builds on this module's Completions

    # past the context the window slides (the scheduler re-prefills a full row), as gpt generate does
    completions = Completions(scheduler, models, config.max_tokens_limit, log)
    chats = ChatCompletions(scheduler, models, config.max_tokens_limit, log)
    page, created, base_id = playground_page(), int(time.time()), next(iter(models))

    def model_body(model: ServedModel) -> dict:  # an adapter names its base as its parent, as vLLM does
        parent = {} if model.adapter is None else {"parent": base_id}
        return {**protocol.model_body(model.id, created), **parent}

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        limits = {"max_batch": scheduler.max_batch, "max_tokens_limit": completions.max_tokens}
        limits["adapters"] = [m.id for m in models.values() if m.adapter is not None]
        note = {"note": ENCDEC_NO_PREFIX_CACHE} if scheduler.encdec else {}
        return {"status": "ok", "model": base_id, **limits, **note, **asdict(scheduler.stats)}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_body(m) for m in models.values()]}

    @app.get("/v1/models/{model}")
    async def one_model(model: str) -> dict:
        if model not in models:
            raise ApiError(404, f"the model {model!r} does not exist", "model", code="model_not_found")
        return model_body(models[model])

    async def respond(handler: Completions, http: Request) -> Response:
        request = handler.parse(await http.body())
        outbox = Outbox()
        jobs = handler.jobs(request, outbox)
        handler.submit(jobs)
        if request.stream:
            return EventStream(handler.stream(request, jobs, outbox), jobs)
        try:
            return JSONResponse(await handler.answer(request, jobs, outbox, http))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the jobs are cancelled

    @app.post("/v1/completions")
    async def complete(http: Request) -> Response:
        return await respond(completions, http)

    @app.post("/v1/chat/completions")
    async def chat(http: Request) -> Response:
        return await respond(chats, http)

    install_error_handlers(app, log)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(
            BearerAuth, key=config.api_key
        )  # outermost: nothing runs before the key is checked
    return app


def install_error_handlers(app: FastAPI, log: Log | None) -> None:
    """Every error in OpenAI's shape; a body that fails validation is a 400, not FastAPI's 422."""

    def reply(request: Request, error: ApiError) -> JSONResponse:
        if log is not None:
            log(f"{request.method} {request.url.path}: {error.status} {error.message}")
        return error.response()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return reply(request, e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        param = next((str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")), None)
        return reply(
            request, ApiError(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param)
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        message = {404: f"no route {request.url.path}"}.get(e.status_code, str(e.detail))
        return reply(request, ApiError(e.status_code, message, code=codes.get(e.status_code)))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        return reply(request, ApiError(500, f"internal error: {type(e).__name__}: {e}"))


# ---------------------------------------------------------------------------------------------
# ASGI middleware: plain ASGI (not BaseHTTPMiddleware), so streams and disconnects pass straight through


async def send_error(send, status: int, message: str, code: str, headers: list | None = None) -> None:
    body = json.dumps(protocol.error_body(message, "invalid_request_error", None, code)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Every HTTP route needs `Authorization: Bearer KEY` (compared in constant time); else 401."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.expected):
                message = "no API key given" if given is None else "incorrect API key"
                message += ": send 'Authorization: Bearer KEY' (the server's --api-key)"
                return await send_error(
                    send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")]
                )
        await self.app(scope, receive, send)


class BodyLimit:
    """A request body over `max_bytes` is a 413: by its Content-Length at once, else while it is read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_error(send, 413, message, "request_too_large")
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, message)  # read inside a route: answered by its handler
            return event

        await self.app(scope, limited, send)
