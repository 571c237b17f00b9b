"""Serving: an OpenAI-compatible HTTP server over one continuously batched engine (`gpt serve`).

scheduler.py      the batch loop in one background thread: slots, admit, choose, hand out, retire, step
prefix_cache.py   keys and values of earlier prompts in blocks, reused by prompts that start alike
protocol.py       OpenAI's completions API as data: the request model, answer / chunk / error bodies
chat_protocol.py  OpenAI's chat completions API as data: messages checked, chat answer / chunk bodies
api.py            the FastAPI app: routes, the scheduler -> handler bridge, errors, API key, body limit
chat_api.py       /v1/chat/completions: messages rendered by the chat template, Completions' machinery
server.py         Server: the app under uvicorn on a bound socket, the scheduler's thread, graceful stop
page.html         the playground at `/` (completion and chat tabs; one self-contained page)

Only scheduler.py and prefix_cache.py work without the `serve` extra (FastAPI, uvicorn): import the
others directly.
"""
