"""LoRA: `gpt finetune --lora` against a full fine-tune and against HF PEFT, and `gpt serve --adapter`
(4 adapters in one batch) against one merged model served alone; on CPU, a GPT-2-124M-shaped model.

    python benchmarks/bench_lora.py            # 12 layers x 768, vocab 50,257: ~10 minutes on 2 cores
    python benchmarks/bench_lora.py --small    # 2 layers x 128: seconds, a smoke test, not a measurement
    python benchmarks/bench_lora.py --json     # + one JSON line with every number

The model is a random-init HF GPT2LMHeadModel (GPT-2 124M's shape: 12 layers, 12 heads, 768 wide,
1,024 positions, vocabulary 50,257; no dropout) saved with our byte-level BPE (trained on
toy_data/sonnets.txt plus the task's words, then given never-used merges up to 50,257 tokens, so
the embedding and head are GPT-2's size); our base is `import_gpt2` of that folder. The data is
bench_finetune's generated tasks, each conversation exactly --seq + 1 tokens in ChatML (checked:
TRL's/HF's apply_chat_template gives our ids and mask), so every batch is batch x seq on every side.

Training (benchmarks/lora_sides.py, each run a process of its own, the cases alternating --repeats
times): the same batch, sequence, steps, lr (1e-4 constant), grad clip 1.0, fp32, torch threads.
- ours full: `gpt finetune --no-pack` (the library call), every weight trained.
- ours LoRA: the same with `--lora` (r 8, alpha 16, dropout 0.05, c_attn; the 2 added tokens' rows).
- PEFT: HF's GPT2LMHeadModel + peft.get_peft_model (the same r, alpha, dropout, c_attn with
  fan_in_fan_out, trainable_token_indices for the 2 added tokens), stepped by a plain AdamW loop.
Both unpacked: each row one conversation; as every conversation is seq + 1 tokens, no padding.
Step time: (end of the last step - end of the last warm-up step) / timed steps; peak memory: each
process's own VmHWM (the whole process: torch, the model, the optimizer, activations).

Serving (only where `gpt serve --adapter` exists): 4 LoRA runs of the base (the timed runs' adapters,
then 1-step runs with other seeds, lr 1e-3, so B is not zero), served together (`gpt serve -c BASE
--adapter a0=RUN ...`); 16 streaming clients, 4 per adapter, against the first run merged (`gpt
merge-lora`) and served alone, the same 16 requests. Both servers run at once, idle in turn; the
rounds alternate (--serve-rounds); tokens/s = tokens / wall time of a round (bench_serve.summary).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench_finetune import check_same_ids, hf_base, machine, median_range, task_tokenizer
from bench_finetune import run_side as finetune_side
from bench_serve import start_server, stream, summary
from finetune_sides import TASKS, WORDS

SIDES = Path(__file__).resolve().parent / "lora_sides.py"
SHAPES = {  # mode: model, data and run settings
    "default": dict(n_layer=12, n_head=12, n_embd=768, positions=1024, vocab=50257, bpe_vocab=4000,
                    batch=4, seq=256, steps=7, warmup=2, conversations=200, new_tokens=32),
    "small": dict(n_layer=2, n_head=2, n_embd=128, positions=128, vocab=2000, bpe_vocab=1000,
                  batch=4, seq=64, steps=4, warmup=1, conversations=60, new_tokens=8),
}  # fmt: skip
LORA = dict(r=8, alpha=16.0, dropout=0.05, targets=["attn"])
GOALS = {"lora_full_mem": 0.6, "peft_time": 1.0, "peft_mem": 1.0, "serve": 0.7}
ADAPTERS, CLIENTS = 4, 16


# ---- the model, its tokenizer and the data


def padded_tokenizer(tokenizer, vocab: int):
    """`tokenizer` with merges added up to `vocab` tokens (its <|endoftext|> last, as GPT-2's): each
    new token holds a byte that valid UTF-8 text never has, so no text ever uses one."""
    from gptcli.tokenizers import BPETokenizer

    never = [*range(0, 9), *range(14, 32), 127, 0xC0, 0xC1, *range(0xF5, 0x100)]
    needed = vocab - 1 - 256 - len(tokenizer.merges)
    pairs = [(a, b) for a in range(256) for b in range(256) if a in never or b in never]
    extra = pairs[:needed]
    first = 256 + len(tokenizer.merges)  # the id the first pair gets
    extra += [(first + i, c) for i in range(len(pairs)) for c in range(256)][: needed - len(extra)]
    merges = [*tokenizer.merges, *extra]
    return BPETokenizer(merges, tokenizer.pattern, {"<|endoftext|>": 256 + len(merges)})


def exact_conversations(count: int, length: int, tokenizer, template, seed: int) -> list[list[dict]]:
    """`count` single-exchange tasks (bench_finetune's) each exactly `length` tokens in ChatML."""
    from gptcli.chat.template import render

    rng, words_for = random.Random(seed), dict.fromkeys(TASKS, 8)
    out: list[list[dict]] = []
    for _ in range(200 * count):
        task = rng.choice(list(TASKS))
        words = [rng.choice(WORDS) for _ in range(words_for[task])]
        chat = [{"role": "user", "content": f"{task}: {' '.join(words)}"},
                {"role": "assistant", "content": " ".join(TASKS[task](words))}]  # fmt: skip
        n = len(render(chat, template, tokenizer).ids)
        if n == length:
            out.append(chat)
            if len(out) == count:
                return out
        step = 2 if n < length - 8 else 1  # towards the length, then around it
        words_for[task] = max(1, words_for[task] + (step if n < length else -step))
    raise SystemExit(f"could not make {count} conversations of exactly {length} tokens")


def prepare(tmp: Path, shape: dict, seed: int) -> dict:
    """The tokenizer, the HF folder, our imported base and the conversations file."""
    from gptcli.chat.template import ChatTemplate
    from gptcli.tokenizers import with_special_tokens

    tokenizer = padded_tokenizer(task_tokenizer(tmp, shape["bpe_vocab"]), shape["vocab"])
    assert tokenizer.vocab_size == shape["vocab"], tokenizer.vocab_size
    template = ChatTemplate.chatml()
    chat_tokenizer, _ = with_special_tokens(tokenizer, template.special_tokens)
    chats = exact_conversations(shape["conversations"], shape["seq"] + 1, chat_tokenizer, template, seed)
    data = tmp / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    base = hf_base(tmp, tokenizer, shape, shape["positions"], seed)
    check_same_ids(tmp / "hf", chats[:20], template, chat_tokenizer)
    return {"hf": str(tmp / "hf"), "base": str(base), "data": str(data), "conversations": len(chats)}


# ---- training: ours full, ours LoRA, PEFT


def run_side(side: str, job: dict, tmp: Path, name: str) -> dict:
    """One side in its own process (lora_sides.py), measured as bench_finetune's sides are."""
    return finetune_side(side, job, tmp, name, sides=SIDES)


def step_seconds(run: dict, warmup: int, clock: str = "ends") -> float:
    """Mean seconds (of `clock`: "ends" wall, "cpu" this process's CPU) per step after the warm-up."""
    ends = run[clock]
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)


def train_figures(runs: dict[str, list[dict]], warmup: int) -> dict:
    return {
        case: {
            "step_s": median_range([step_seconds(r, warmup) for r in rs]),
            "step_cpu_s": median_range([step_seconds(r, warmup, "cpu") for r in rs]),
            "peak_rss_mb": median_range([r["peak_rss"] / 2**20 for r in rs]),
            "setup_s": median_range([r["setup"] for r in rs]),
            "shapes": sorted({tuple(s) for r in rs for s in r["shapes"]}),
            "trained_per_step": sum(sum(r["trained"]) for r in rs) / sum(len(r["trained"]) for r in rs),
        }
        for case, rs in runs.items()
    }


# ---- serving: 4 adapters in one batch vs one merged model


def gpt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gptcli", *args], check=True, capture_output=True, text=True)


def has_adapter_option() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "gptcli", "serve", "--help"], capture_output=True, text=True, env=WIDE
    )
    return "--adapter" in done.stdout


WIDE = {**os.environ, "COLUMNS": "200"}


def together(port: int, models: list[str], prompts: list[str], new_tokens: int) -> dict:
    """The clients at once (bench_serve.run_together's barrier), client i asking models[i]."""
    results: list = [None] * len(models)
    barrier = threading.Barrier(len(models))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = stream(port, i, new_tokens, 1.0, models[i], prompts[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(results)


def serving(tmp: Path, prepared: dict, job: dict, lora_runs: list[str], args, shape: dict) -> dict:
    runs = list(lora_runs[:ADAPTERS])
    for i in range(len(runs), ADAPTERS):  # 1-step runs with other seeds: B away from zero
        print(f"  adapter {i} (1 step) ...", file=sys.stderr, flush=True)
        extra = {**job, "lora": LORA, "steps": 1, "lr": 1e-3, "seed": args.seed + 100 + i}
        runs.append(run_side("ours", extra, tmp, f"adapter-{i}")["out"])
    merged = tmp / "merged"
    gpt("merge-lora", runs[0], "--out", str(merged))
    rng = random.Random(args.seed)
    prompts = [f"{rng.choice(list(TASKS))}: {' '.join(rng.sample(WORDS, 6))}" for _ in range(CLIENTS)]
    names = [f"a{i}" for i in range(ADAPTERS)]
    adapter_flags = [f for i, run in enumerate(runs) for f in ("--adapter", f"{names[i]}={run}")]
    servers = {
        "adapters": start_server(prepared["base"], CLIENTS, extra=adapter_flags),
        "merged": start_server(merged, CLIENTS),
    }
    models = {"adapters": [names[i % ADAPTERS] for i in range(CLIENTS)], "merged": ["merged"] * CLIENTS}
    rounds: dict[str, list[dict]] = {"adapters": [], "merged": []}
    try:
        for case, (_, port) in servers.items():  # warm-up: every model once
            for m in dict.fromkeys(models[case]):
                stream(port, 0, 4, 1.0, m, prompts[0])
        for r in range(args.serve_rounds):
            for case, (_, port) in servers.items():
                print(f"  serve {case} round {r} ...", file=sys.stderr, flush=True)
                rounds[case].append(together(port, models[case], prompts, shape["new_tokens"]))
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=60)
    figures = {
        case: {
            "tok_s": median_range([x["tok_s"] for x in rs]),
            "ttft_p50_ms": median_range([x["ttft_p50_ms"] for x in rs]),
            "tpot_p50_ms": median_range([x["tpot_p50_ms"] for x in rs]),
        }
        for case, rs in rounds.items()
    }
    return {"figures": figures, "rounds": args.serve_rounds, "clients": CLIENTS, "adapters": ADAPTERS,
            "new_tokens": shape["new_tokens"]}  # fmt: skip


# ---- the run and its table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 layers x 128: seconds, a smoke test")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: by mode)")
    parser.add_argument("--warmup", type=int, help="first steps left out of the timing (default: by mode)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on each side")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--bf16-base", action="store_true", help="also ours LoRA with --base-precision bf16")
    parser.add_argument("--serve-rounds", type=int, default=3, help="serving rounds of each case (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shape = SHAPES["small" if args.small else "default"]
    steps, warmup = args.steps or shape["steps"], args.warmup or shape["warmup"]
    if steps <= warmup:
        raise SystemExit("error: --steps must be more than --warmup")
    load_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("  preparing ...", file=sys.stderr, flush=True)
        prepared = prepare(tmp, shape, args.seed)
        job = dict(hf=prepared["hf"], base=prepared["base"], data=prepared["data"], batch=shape["batch"],
                   steps=steps, lr=args.lr, threads=args.threads, seed=args.seed, pack=False)  # fmt: skip
        cases = {"ours_full": ("ours", None), "ours_lora": ("ours", LORA), "peft": ("peft", LORA)}
        if args.bf16_base:
            cases["ours_lora_bf16"] = ("ours", {**LORA, "base_precision": "bf16"})
        runs: dict[str, list[dict]] = {case: [] for case in cases}
        for r in range(args.repeats):
            for case, (side, lora) in cases.items():
                print(f"  {case}-{r} ...", file=sys.stderr, flush=True)
                runs[case].append(run_side(side, {**job, "lora": lora}, tmp, f"{case}-{r}"))
        result = {"machine": {**machine(), "peft": runs["peft"][0]["versions"]["peft"]}, "shape": shape,
                  "mode": "small" if args.small else "default", "steps": steps, "warmup": warmup,
                  "repeats": args.repeats, "threads": args.threads, "lr": args.lr,
                  "train": train_figures(runs, warmup),
                  "trainable": {"peft": runs["peft"][0]["trainable"]}}  # fmt: skip
        if args.serve_rounds and not has_adapter_option():
            result["serve"] = None
            print("  gpt serve has no --adapter: serving not measured", file=sys.stderr)
        elif args.serve_rounds:
            lora_runs = [r["out"] for r in runs["ours_lora"]]
            result["serve"] = serving(tmp, prepared, job, lora_runs, args, shape)
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    print_table(result)
    if args.json:
        print(json.dumps(result))


def cell(v, fmt="{:,.2f}") -> str:
    med, lo, hi = v
    return f"{fmt.format(med)} [{fmt.format(lo)}-{fmt.format(hi)}]"


def verdict(ratio: float, goal: float, at_most: bool = True) -> str:
    met = ratio <= goal if at_most else ratio >= goal
    return f"{'<=' if at_most else '>='} {goal}x: {'met' if met else 'NOT met'}"


def print_table(result: dict) -> None:
    m, s, t = result["machine"], result["shape"], result["train"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, {result['threads']} threads; torch {m['torch']}, "
          f"transformers {m['transformers']}, peft {m['peft']}; load average {result['load_average']}")  # fmt: skip
    print(f"model: GPT-2 {s['n_layer']} layers x {s['n_embd']}, vocab {s['vocab']} + 2, {s['positions']} "
          f"positions; batch {s['batch']} x {s['seq']} tokens (unpacked, no padding), {result['steps']} steps "
          f"({result['warmup']} warm-up), fp32 CPU, median of {result['repeats']} [range]")  # fmt: skip
    print(f"{'case':<16}{'step s':>22}{'step CPU-s':>22}{'peak RSS MB':>26}  batch shapes")
    for case, f in t.items():
        print(f"{case:<16}{cell(f['step_s']):>22}{cell(f['step_cpu_s']):>22}"
              f"{cell(f['peak_rss_mb'], '{:,.0f}'):>26}  {f['shapes']}")  # fmt: skip

    def ratio(a: str, b: str, key: str) -> float:
        return t[a][key][0] / t[b][key][0]

    print(f"ours LoRA / ours full: step {ratio('ours_lora', 'ours_full', 'step_s'):.2f}x, "
          f"peak {ratio('ours_lora', 'ours_full', 'peak_rss_mb'):.2f}x "
          f"({verdict(ratio('ours_lora', 'ours_full', 'peak_rss_mb'), GOALS['lora_full_mem'])})")  # fmt: skip
    print(f"ours LoRA / PEFT: step {ratio('ours_lora', 'peft', 'step_s'):.2f}x "
          f"({verdict(ratio('ours_lora', 'peft', 'step_s'), GOALS['peft_time'])}), "
          f"step CPU-s {ratio('ours_lora', 'peft', 'step_cpu_s'):.2f}x, "
          f"peak {ratio('ours_lora', 'peft', 'peak_rss_mb'):.2f}x "
          f"({verdict(ratio('ours_lora', 'peft', 'peak_rss_mb'), GOALS['peft_mem'])})")  # fmt: skip
    if "ours_lora_bf16" in t:
        print(f"ours LoRA, bf16 base / fp32 base: step {ratio('ours_lora_bf16', 'ours_lora', 'step_s'):.2f}x, "
              f"peak {ratio('ours_lora_bf16', 'ours_lora', 'peak_rss_mb'):.2f}x")  # fmt: skip
    serve = result.get("serve")
    if serve is None:
        print("serving: not measured (gpt serve has no --adapter here)" if "serve" in result else "")
        return
    f = serve["figures"]
    print(f"serving: {serve['clients']} streaming clients, {serve['new_tokens']} new tokens each, "
          f"median of {serve['rounds']} rounds [range]")  # fmt: skip
    for case, label in (
        ("adapters", f"{serve['adapters']} adapters, one batch"),
        ("merged", "one merged model"),
    ):
        print(f"  {label:<26} tok/s {cell(f[case]['tok_s'], '{:,.1f}')}, TTFT p50 "
              f"{cell(f[case]['ttft_p50_ms'], '{:,.0f}')} ms, TPOT p50 {cell(f[case]['tpot_p50_ms'], '{:,.1f}')} ms")  # fmt: skip
    r = f["adapters"]["tok_s"][0] / f["merged"]["tok_s"][0]
    print(f"adapters / merged tok/s: {r:.2f}x ({verdict(r, GOALS['serve'], at_most=False)})")


if __name__ == "__main__":
    main()
