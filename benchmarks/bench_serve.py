"""Serving throughput: N concurrent streaming clients against `gpt serve`, vs the same requests one at a time.

    python benchmarks/bench_serve.py                          # CPU, 1 / 4 / 16 / 64 clients (a few minutes)
    python benchmarks/bench_serve.py --clients 1,16 --temperature 0 --json
    python benchmarks/bench_serve.py --threads 1              # the server's torch threads (OMP_NUM_THREADS)

The server is a real `gpt serve` process (`--max-batch` = the most clients, `-q`) on a random
GPT-2-shaped small model: 4 layers, 4 heads, 256 wide, context 256, GPT-2's vocabulary size 50,257
(--vocab; a two-byte-merge BPE of that size: the text is not the point, the speed is). Every request is a
streamed `/v1/completions` of --new-tokens tokens (ignore_eos; --temperature 1 with top-k 200 and
its own seed, or 0: greedy) after a 16-token prompt. Clients are threads of this process reading the server-sent events.

For each number of clients N: N requests sent together, then the same N requests one at a time.
Total tokens/s = tokens generated / wall time from the first request sent to the last token
received. Time to first token (TTFT) is per request, from sending it to its first text chunk;
time per output token (TPOT) is (last chunk - first chunk) / (tokens - 1). p50 / p99 are over the
N requests (nearest rank). The target: 16 clients give at least 4x the tokens/s of one at a time.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from gptcli.config import ModelConfig
from gptcli.models import GPT
from gptcli.storage.checkpoint import save_checkpoint
from gptcli.tokenizers import BPETokenizer

SHAPE = dict(vocab_size=50257, n_layer=4, n_head=4, n_embd=256, block_size=256)
PROMPT = "ABCDEFGHIJKLMNOP" * 2  # 16 tokens: each pair of letters is one merge
TARGET = (16, 4.0)  # 16 clients: at least 4x the tokens/s of one at a time


def save_model(directory: Path, shape: dict) -> Path:
    torch.manual_seed(0)
    merges = [(a, b) for a in range(256) for b in range(256)][: shape["vocab_size"] - 256]
    model = GPT(ModelConfig(**shape))
    return save_checkpoint(
        directory / "bench-serve", model, model.config, BPETokenizer(merges, special_tokens={})
    )


def start_server(
    checkpoint: Path, max_batch: int, threads: int | None = None, extra: list[str] = ()
) -> tuple[subprocess.Popen, int]:
    """`gpt serve` on a free port (extra: more of its options) -> (the process, its port)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    command = [sys.executable, "-m", "gptcli", "serve", "-c", str(checkpoint), "--port", "0",
               "--max-batch", str(max_batch), "--device", "cpu", "-q", *extra]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    banner = server.stderr.readline()
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", banner)
    if not found:
        server.kill()
        raise SystemExit(f"gpt serve did not start: {banner}{server.stderr.read()}")
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its pipe from filling
    return server, int(found.group(1))


def stream(
    port: int,
    seed: int,
    new_tokens: int,
    temperature: float,
    model: str = "bench-serve",
    prompt: str = PROMPT,
) -> dict:
    """One streamed completion -> its start, first and last chunk times and its token count."""
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": temperature,
            "top_k": 200, "seed": seed, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"model {model}: HTTP {response.status}: {response.read()[:300]!r}")
    first = last = None
    tokens = 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"]:
            last = time.perf_counter()
            first = first or last
    connection.close()
    return {"start": start, "first": first, "last": last, "tokens": tokens}


def run_together(port: int, seeds: list[int], new_tokens: int, temperature: float) -> list[dict]:
    results: list = [None] * len(seeds)
    barrier = threading.Barrier(len(seeds))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = stream(port, seeds[i], new_tokens, temperature)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(results: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in results)
    wall = max(r["last"] for r in results) - min(r["start"] for r in results)
    ttft = [r["first"] - r["start"] for r in results]
    tpot = [(r["last"] - r["first"]) / max(1, r["tokens"] - 1) for r in results]
    return {
        "tokens": tokens,
        "seconds": wall,
        "tok_s": tokens / wall,
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "tpot_p50_ms": 1000 * percentile(tpot, 50),
        "tpot_p99_ms": 1000 * percentile(tpot, 99),
    }


def bench(port: int, clients: int, new_tokens: int, temperature: float) -> dict:
    seeds = list(range(clients))
    together = summary(run_together(port, seeds, new_tokens, temperature))
    alone = summary([stream(port, seed, new_tokens, temperature) for seed in seeds])
    return {
        "clients": clients,
        "together": together,
        "one_at_a_time": alone,
        "ratio": together["tok_s"] / alone["tok_s"],
    }


def format_row(r: dict) -> str:
    t, a = r["together"], r["one_at_a_time"]
    return (
        f"{r['clients']:>7} | {t['tok_s']:>9,.0f} | {a['tok_s']:>13,.0f} | {r['ratio']:>5.2f}x | "
        f"{t['ttft_p50_ms']:>7,.0f} / {t['ttft_p99_ms']:<7,.0f} | {t['tpot_p50_ms']:>6,.1f} / {t['tpot_p99_ms']:<6,.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16,64", help="concurrent clients per case")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (no per-request draw)")
    parser.add_argument("--vocab", type=int, default=SHAPE["vocab_size"], help="the model's vocabulary size")
    parser.add_argument(
        "--threads", type=int, default=None, help="the server's torch threads (default: torch's)"
    )
    parser.add_argument("--json", action="store_true", help="also one JSON line with every number")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    shape = {**SHAPE, "vocab_size": args.vocab}
    with tempfile.TemporaryDirectory() as tmp:
        server, port = start_server(save_model(Path(tmp), shape), max(counts), args.threads)
        try:
            stream(port, 0, 8, args.temperature)  # warm-up
            sampling = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-k 200"
            print(f"gpt serve, {shape}, cpu, threads {args.threads or 'default'}, {len(PROMPT) // 2} prompt + "
                  f"{args.new_tokens} new tokens per request, {sampling}, streamed:")  # fmt: skip
            print("clients | tok/s      | one at a time | ratio  | TTFT p50 / p99 ms | TPOT p50 / p99 ms")
            rows = []
            for n in counts:
                rows.append(bench(port, n, args.new_tokens, args.temperature))
                print(format_row(rows[-1]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    met = [r["ratio"] >= TARGET[1] for r in rows if r["clients"] == TARGET[0]]
    if met:
        print(
            f"target: {TARGET[0]} clients >= {TARGET[1]:.0f}x one at a time: {'met' if met[0] else 'MISSED'}"
        )
    if args.json:
        settings = {
            "shape": shape,
            "threads": args.threads,
            "new_tokens": args.new_tokens,
            "temperature": args.temperature,
        }
        print(json.dumps({**settings, "results": rows}))


if __name__ == "__main__":
    main()
