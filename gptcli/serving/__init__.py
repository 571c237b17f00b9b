"""Serving: an OpenAI-compatible HTTP server over one continuously batched engine (`gpt serve`).

scheduler.py  the batch loop in one background thread: slots, admit, choose, hand out, retire, step
protocol.py   OpenAI's completions API as data: the request model, answer / chunk / error bodies
api.py        the FastAPI app: routes, the scheduler -> handler bridge, errors, API key, body limit
server.py     Server: the app under uvicorn on a bound socket, the scheduler's thread, graceful stop
page.html     the playground at `/` (one self-contained page)

Only scheduler.py works without the `serve` extra (FastAPI, uvicorn): import the others directly.
"""
