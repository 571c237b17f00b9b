"""Chat: a growing conversation's time to first token per turn, cached against re-prefilled; 16 chat clients.

    python benchmarks/bench_chat.py                   # GPT-2 124M-shaped, 10 turns x 2, 16 clients
    python benchmarks/bench_chat.py --small --json    # a tiny model, 3 turns, 4 clients: a smoke run
    python benchmarks/bench_chat.py --turns 10 --clients 0 --repeats 3

The model is random, shaped like GPT-2 124M (12 layers, 12 heads, 768 wide, context 1024; --small:
2 x 64) with GPT-2's 50,257 tokens plus ChatML's two (a two-byte-merge BPE of that size: the text
is not the point, the speed is), saved with the ChatML template as `gpt finetune` leaves a chat
model. Its output layer is its own (untied) and scaled up, as in the tests' chat checkpoint, with
every row zeroed but those of the 52 tokens " a" .. " Z": greedy replies are varied words of one
letter that never end early at <|im_end|> (every reply is exactly --reply-tokens long), and whose
text encodes back to exactly the ids generated, as a real model's text mostly does (a random reply
over the whole vocabulary would not, and each turn would prefill the last reply again).

1. **One conversation, turn by turn.** A system message, then --turns user messages of
   --user-tokens tokens each (seeded words), each answered greedily with --reply-tokens tokens:
   with the defaults the prompt of turn 10 fills most of the context. Every turn is sent four ways,
   one after another on the same history:
   - `gpt serve` with its prefix cache (--cache-mb) and `gpt serve --prefix-cache-mb 0`, two real
     server processes (both `--max-batch` = --clients), each a streamed `POST /v1/chat/completions`
     of the whole conversation (the client keeps the history and sends the cached server's reply
     back, as OpenAI's clients do);
   - `gpt chat`'s ChatSession (its KV cache kept between turns: a turn prefills its new tokens), and
     the same session with its cache forgotten before every turn (`session.cached = []`): the whole
     history prefilled again, as nanochat's chat CLI does. The re-prefilled session is then given
     the cached session's history, so both see the same prompt.
   The sides without a cache generate one token (only their time to first token is measured).
   TTFT: the server's, from sending the request to the first chunk with text; the session's,
   `TurnResult.ttft_s` (from `say` to the first token). With --repeats R the conversation is held R
   times (other words each time) and every figure is the median. Goal: at turn 10, the prefix
   cache's TTFT at most 0.3x the uncached server's.
2. **--clients chat clients at once.** Each client (a thread of this process) holds its own
   conversation of --client-turns turns against the prefix-cached server, all together, then the
   same number of other conversations one at a time. Tokens/s = replies' tokens / wall time from
   the first request to the last token.
"""

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_serve
import torch

from gptcli.chat.session import ChatSession
from gptcli.chat.template import ChatTemplate
from gptcli.config import ModelConfig, SampleConfig
from gptcli.generation import Engine
from gptcli.models import GPT
from gptcli.storage.checkpoint import save_checkpoint
from gptcli.tokenizers import BPETokenizer

GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
SMALL_SHAPE = dict(n_layer=2, n_head=2, n_embd=64, block_size=1024)
VOCAB = 50257  # GPT-2's: 256 bytes + 50,000 two-byte merges + <|endoftext|>; ChatML's two come after
SPECIAL = {"<|endoftext|>": VOCAB - 1, "<|im_start|>": VOCAB, "<|im_end|>": VOCAB + 1}
MODEL = "bench-chat"
SYSTEM = "You are a helpful assistant. Answer briefly."
WORDS = (
    "the model reads every word of a long question about rivers mountains trains and small towns then "
    "writes an answer that explains why the weather changes so quickly near the coast in early spring "
    "and what people there grow eat sell build remember forget during the long cold evenings"
).split()
SETTLE = 0.1  # seconds between the timed calls of a turn
GOAL = (10, 0.3)  # at turn 10 the prefix-cached TTFT is at most 0.3x the uncached one


# ---- the model -----------------------------------------------------------------------------------


def save_chat_model(directory: Path, shape: dict) -> Path:
    """A random chat checkpoint (see the module docstring) -> its folder."""
    torch.manual_seed(0)
    merges = [(a, b) for a in range(256) for b in range(256)][: VOCAB - 1 - 256]
    tokenizer = BPETokenizer(merges, special_tokens=SPECIAL)
    model = GPT(ModelConfig(**shape, vocab_size=VOCAB + 2, tie_weights=False, dropout=0.0))
    letters = [c for c in range(256) if chr(c).isascii() and chr(c).isalpha()]
    speakable = [256 + 256 * ord(" ") + c for c in letters]  # " a" .. " Z": a reply's text encodes back to it
    keep = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)  # (the vocabulary is padded)
    keep[speakable] = True
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.lm_head.weight[~keep] = 0  # their logit is 0: never the greedy pick
    info = {"step": 1, "chat_template": ChatTemplate.chatml().to_json()}
    return save_checkpoint(directory / MODEL, model, model.config, tokenizer, info)


def user_messages(tokenizer, seed: int, count: int, tokens: int) -> list[str]:
    """`count` seeded messages of words, each at least `tokens` tokens long."""
    rng = random.Random(seed)
    messages = []
    for k in range(count):
        text = f"Question {k + 1}:"
        while len(tokenizer.encode(text)) < tokens:
            text += " " + rng.choice(WORDS)
        messages.append(text + "?")
    return messages


# ---- the server and its clients ------------------------------------------------------------------


def start_server(checkpoint: Path, cache_mb: float, max_batch: int) -> tuple[subprocess.Popen, int]:
    extra = ["--prefix-cache-mb", str(cache_mb), "--model-name", MODEL]
    return bench_serve.start_server(checkpoint, max_batch, extra=extra)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=60)


def chat(port: int, messages: list[dict], max_tokens: int, settle: bool = False) -> dict:
    """One streamed, greedy chat completion -> its text, times and usage. settle: first wait SETTLE
    seconds, for what the previous request left (the server retiring its job) to end."""
    if settle:
        time.sleep(SETTLE)
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"/v1/chat/completions answered {response.status}: {response.read().decode()}")
    first = last = None
    text, usage = [], {}
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
                text.append(choice["delta"]["content"])
    connection.close()
    return {
        "start": start,
        "first": first,
        "last": last,
        "text": "".join(text),
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }


# ---- 1. one conversation, turn by turn -------------------------------------------------------------


def conversation(ports: tuple[int, int], engine: Engine, users: list[str], reply_tokens: int) -> list[dict]:
    """The conversation held four ways, turn by turn (see the module docstring) -> a row per turn."""
    cached_port, plain_port = ports
    kept = ChatSession(engine, SampleConfig(temperature=0, max_new_tokens=reply_tokens), system=SYSTEM)
    again = ChatSession(engine, SampleConfig(temperature=0, max_new_tokens=1), system=SYSTEM)
    history = [{"role": "system", "content": SYSTEM}]
    rows = []
    for k, text in enumerate(users, 1):
        history.append({"role": "user", "content": text})
        # the side without a cache first: what the other leaves running as it ends cannot slow it
        plain = chat(plain_port, history, 1, settle=True)
        served = chat(cached_port, history, reply_tokens, settle=True)
        history.append({"role": "assistant", "content": served["text"]})
        again.cached = []  # forget the keys and values: the whole history is prefilled
        time.sleep(SETTLE)
        slow = again.say(text)
        slow.text()
        time.sleep(SETTLE)
        turn = kept.say(text)
        turn.text()
        again.messages = [dict(m) for m in kept.messages]
        if (
            slow.result.prompt_tokens != turn.result.prompt_tokens
            or plain["prompt_tokens"] != served["prompt_tokens"]
        ):
            raise SystemExit(f"turn {k}: the two sides' prompts differ")
        rows.append({
            "turn": k,
            "serve_prompt_tokens": served["prompt_tokens"],
            "serve_cached_tokens": served["cached_tokens"],
            "serve_reply_tokens": served["completion_tokens"],
            "serve_ttft_cached_ms": 1000 * (served["first"] - served["start"]),
            "serve_ttft_uncached_ms": 1000 * (plain["first"] - plain["start"]),
            "chat_prompt_tokens": turn.result.prompt_tokens,
            "chat_new_tokens": turn.result.new_prompt_tokens,
            "chat_reply_tokens": turn.result.completion_tokens,
            "chat_ttft_kept_ms": 1000 * turn.result.ttft_s,
            "chat_ttft_reprefill_ms": 1000 * slow.result.ttft_s,
        })  # fmt: skip
    return rows


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Each figure of each turn: its median over the runs; the ratios from those medians."""
    rows = [
        {key: statistics.median(run[i][key] for run in runs) for key in runs[0][i]}
        for i in range(len(runs[0]))
    ]
    for i, r in enumerate(rows):
        r["turn"] = i + 1
    for r in rows:
        r["serve_ratio"] = r["serve_ttft_cached_ms"] / r["serve_ttft_uncached_ms"]
        r["chat_ratio"] = r["chat_ttft_kept_ms"] / r["chat_ttft_reprefill_ms"]
    return rows


def format_turn(r: dict) -> str:
    return (
        f"{r['turn']:>4} | {r['serve_prompt_tokens']:>6,.0f} | {r['serve_cached_tokens']:>6,.0f} | "
        f"{r['serve_ttft_cached_ms']:>7,.0f} | {r['serve_ttft_uncached_ms']:>7,.0f} | "
        f"{r['serve_ratio']:>5.2f}x || {r['chat_prompt_tokens']:>6,.0f} | {r['chat_new_tokens']:>4,.0f} | "
        f"{r['chat_ttft_kept_ms']:>7,.0f} | {r['chat_ttft_reprefill_ms']:>7,.0f} | {r['chat_ratio']:>5.2f}x"
    )


# ---- 2. many clients at once -----------------------------------------------------------------------


def client(port: int, users: list[str], reply_tokens: int) -> list[dict]:
    """One client's conversation, turn after turn -> each request's figures."""
    history, out = [{"role": "system", "content": SYSTEM}], []
    for text in users:
        history.append({"role": "user", "content": text})
        out.append(chat(port, history, reply_tokens))
        history.append({"role": "assistant", "content": out[-1]["text"]})
    return out


def run_together(port: int, conversations: list[list[str]], reply_tokens: int) -> list[dict]:
    results: list = [None] * len(conversations)
    barrier = threading.Barrier(len(conversations))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = client(port, conversations[i], reply_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(conversations))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise SystemExit("a client failed (see above)")
    return [request for r in results for request in r]


def summary(requests: list[dict]) -> dict:
    tokens = sum(r["completion_tokens"] for r in requests)
    wall = max(r["last"] for r in requests) - min(r["start"] for r in requests)
    ttft = sorted(1000 * (r["first"] - r["start"]) for r in requests)
    return {
        "requests": len(requests),
        "tokens": tokens,
        "seconds": wall,
        "tok_s": tokens / wall,
        "ttft_p50_ms": ttft[len(ttft) // 2],
        "ttft_max_ms": ttft[-1],
        "cached_share": sum(r["cached_tokens"] for r in requests) / sum(r["prompt_tokens"] for r in requests),
    }


def many_clients(port: int, tokenizer, clients: int, args) -> dict:
    turns = args.client_turns

    def conversations(first_seed: int) -> list[list[str]]:
        return [user_messages(tokenizer, first_seed + i, turns, args.user_tokens) for i in range(clients)]

    together = summary(run_together(port, conversations(1000), args.reply_tokens))
    alone = summary([req for c in conversations(2000) for req in client(port, c, args.reply_tokens)])
    return {"clients": clients, "turns": turns, "together": together, "one_at_a_time": alone,
            "ratio": together["tok_s"] / alone["tok_s"]}  # fmt: skip


def print_header(shape: dict, turns: int, args) -> None:
    print(
        f"a {shape['n_layer']} x {shape['n_embd']} random chat model, context {shape['block_size']}, vocab "
        f"{VOCAB + 2:,}, cpu, torch threads {torch.get_num_threads()}; {turns} turns of {args.user_tokens} "
        f"+ {args.reply_tokens} tokens, greedy; median of {args.repeats}"
    )
    print("     | gpt serve (/v1/chat/completions, streamed)         || gpt chat (ChatSession)")
    print("turn | prompt | cached | TTFT ms | TTFT ms | ratio  || prompt |  new | TTFT ms | TTFT ms | ratio")
    print("     |        | tokens | cache   | no cache|        ||        |      | kept    | re-fill |")


def print_progress(r: int, repeats: int, last: dict) -> None:
    """To stderr: a conversation's last turn, as soon as it is held."""
    print(
        f"  (conversation {r + 1} of {repeats}: turn {last['turn']}, TTFT ms: gpt serve "
        f"{last['serve_ttft_cached_ms']:,.0f} / {last['serve_ttft_uncached_ms']:,.0f}, gpt chat "
        f"{last['chat_ttft_kept_ms']:,.0f} / {last['chat_ttft_reprefill_ms']:,.0f})",
        file=sys.stderr,
        flush=True,
    )


def print_clients(many: dict) -> None:
    print(f"\n{many['clients']} chat clients at once, {many['turns']} turns each, prefix cache on:")
    print("              | tok/s | TTFT p50 / max ms | cached prompt share")
    for name, s in (("together", many["together"]), ("one at a time", many["one_at_a_time"])):
        print(
            f"{name:>13} | {s['tok_s']:>5,.1f} | {s['ttft_p50_ms']:>6,.0f} / {s['ttft_max_ms']:<7,.0f}  | "
            f"{s['cached_share']:.0%}"
        )
    print(f"ratio: {many['ratio']:.2f}x the tokens/s of one at a time")


# ---- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 2 x 64 model, 3 turns, 4 clients: seconds")
    parser.add_argument(
        "--turns", type=int, default=None, help="turns of the conversation (default 10; --small 3)"
    )
    parser.add_argument("--user-tokens", type=int, default=36, help="tokens per user message")
    parser.add_argument("--reply-tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument(
        "--repeats", type=int, default=2, help="conversations held; each figure is the median"
    )
    parser.add_argument(
        "--clients", type=int, default=None, help="chat clients at once (default 16; --small 4; 0: skip)"
    )
    parser.add_argument("--client-turns", type=int, default=2, help="turns of each client's conversation")
    parser.add_argument("--cache-mb", type=float, default=1024, help="the cached server's --prefix-cache-mb")
    parser.add_argument("--json", action="store_true", help="also one JSON line with every number")
    args = parser.parse_args()
    turns = args.turns or (3 if args.small else 10)
    clients = args.clients if args.clients is not None else (4 if args.small else 16)
    shape = SMALL_SHAPE if args.small else GPT2_SHAPE
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_chat_model(Path(tmp), shape)
        engine = Engine.from_checkpoint(checkpoint, "cpu")
        servers = [
            start_server(checkpoint, args.cache_mb, max(1, clients)),
            start_server(checkpoint, 0, max(1, clients)),
        ]
        try:
            ports = (servers[0][1], servers[1][1])
            warm = user_messages(engine.tokenizer, 99, 1, args.user_tokens)
            for port in ports:
                chat(port, [{"role": "user", "content": warm[0]}], 2)
            ChatSession(engine, SampleConfig(temperature=0, max_new_tokens=2)).say(warm[0]).text()

            print_header(shape, turns, args)
            runs = []
            for r in range(args.repeats):
                users = user_messages(engine.tokenizer, r, turns, args.user_tokens)
                runs.append(conversation(ports, engine, users, args.reply_tokens))
                print_progress(r, args.repeats, runs[-1][-1])
            rows = median_rows(runs)
            for row in rows:
                print(format_turn(row), flush=True)
            last = rows[-1]
            if last["turn"] == GOAL[0]:
                met = "met" if last["serve_ratio"] <= GOAL[1] else "MISSED"
                print(f"goal: at turn {GOAL[0]} the prefix cache's TTFT <= {GOAL[1]}x the uncached one's: "
                      f"{last['serve_ratio']:.3f}x, {met}")  # fmt: skip
            many = many_clients(ports[0], engine.tokenizer, clients, args) if clients else None
            if many:
                print_clients(many)
        finally:
            for server, _ in servers:
                stop_server(server)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        settings = {"shape": shape, "vocab_size": VOCAB + 2, "turns": turns, "user_tokens": args.user_tokens,
                    "reply_tokens": args.reply_tokens, "repeats": args.repeats, "cache_mb": args.cache_mb,
                    "threads": torch.get_num_threads()}  # fmt: skip
        print(json.dumps({**settings, "turns_table": rows, "runs": runs, "clients": many}))


if __name__ == "__main__":
    main()
