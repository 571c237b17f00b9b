"""Int8 weight-only decoding on a CPU at batch 1: ours int8 vs ours fp32 vs llama.cpp F32 and Q8_0.

    python benchmarks/bench_quant.py                             # ours; llama.cpp where it imports
    PYTHONPATH=.llama-cpp python benchmarks/bench_quant.py       # with the llama.cpp `make gguf-check` builds
    python benchmarks/bench_quant.py --threads 2 --tokens 64 --work /tmp/bq --json

One run, the same weights on every side:
1. Speed: a GPT-2-124M-shaped model (random weights, tied head, 50,257 tokens), batch 1, greedy
   decode steps after a 16-token prompt; ms per token, the best of --repeats runs of --tokens steps,
   the sides interleaved (so a busy machine slows each alike). Ours: Decoder.step + argmax, the
   engine's loop without sampling (fp32 as the Engine lays it out, int8 as quantize_model leaves it),
   eager and compiled (`--compile`: the step compiled whole, on a 64-position view of the cache).
   llama.cpp: Llama.eval([token]) + argmax of its logits, on the `gpt export-gguf` file (f32, q8_0),
   weight repacking off (use_extra_bufts=False: on AMX CPUs repacked Q8_0 matmuls crash).
   Every side gets --threads threads.
2. The bandwidth bound of each: the bytes one step reads (every weight once: the GGUF's tensor bytes
   for llama.cpp) over the read bandwidth measured here (a sum over 1 GiB); a step cannot be faster.
3. Held-out perplexity: fp32, int8 (as `gpt eval --quantize int8` computes it: past KERNEL_MAX_TOKENS
   tokens a window's product dequantizes; and through the decode kernel at every length), F32 and
   Q8_0, on windows of the context over --ppl-tokens held-out tokens, of
   - a small model trained here (once; kept in --work) on toy_data/shakespeare.txt's first 90%,
     held out: its last 10% (`make data` writes the file; without it, toy_data/sonnets.txt);
   - the GPT-2-shaped model: random weights, so its perplexity is a check that nothing breaks, not
     a quality figure.
What could not run (no llama_cpp, no gguf package) is said, not left out silently.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_generate import GPT2_SHAPE, read_bandwidth  # same folder

import gptcli.models.int8 as int8
from gptcli.config import ModelConfig
from gptcli.evaluate import evaluate_ids
from gptcli.generation.cpu_matmul import prepare_for_cpu
from gptcli.generation.decoder import Decoder
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.models.int8 import quantize_model
from gptcli.storage.checkpoint import list_checkpoints, save_checkpoint
from gptcli.tokenizers import BPETokenizer
from gptcli.tokenizers.patterns import GPT2_PATTERN

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_layer=4, n_head=4, n_embd=192, block_size=128)  # the model trained here (~2 min)
SMALL_TRAIN = ["--vocab-size", "1024", "--max-iters", "300", "--batch-size", "8", "--lr", "2e-3"]
PROMPT = list(range(300, 316))  # 16 ids


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's size and split pattern (two-byte merges, <|endoftext|> last): a GGUF export takes it."""
    merges = [(a, b) for a in range(256) for b in range(256)][: GPT2_SHAPE["vocab_size"] - 257]
    return BPETokenizer(merges, pattern=GPT2_PATTERN, special_tokens={"<|endoftext|>": 50256})


def gpt(cmd: list[str]) -> None:
    subprocess.run([str(Path(sys.executable).with_name("gpt")), *cmd, "--quiet"], check=True)


def corpus() -> tuple[str, str]:
    """(train text, held-out text): the first 90% of the corpus and the rest."""
    path = REPO / "toy_data" / "shakespeare.txt"
    if not path.exists():
        print("  (no toy_data/shakespeare.txt: `make data` writes it; using sonnets.txt)", file=sys.stderr)
        path = REPO / "toy_data" / "sonnets.txt"
    text = path.read_text(encoding="utf-8")
    cut = text.index("\n", int(len(text) * 0.9)) + 1
    return text[:cut], text[cut:]


def trained_small(work: Path) -> Path:
    """A small model trained on the corpus's first 90% (gpt2 pattern, so GGUF exports it), made once."""
    run = work / "small-run"
    if list_checkpoints(run):
        return list_checkpoints(run)[-1]
    train_text, _ = corpus()
    (work / "train.txt").write_text(train_text, encoding="utf-8")
    print("  training the small model (once; kept in --work)...", file=sys.stderr, flush=True)
    gpt(["tokenizer", "train", str(work / "train.txt"), "--pattern", "gpt2", *SMALL_TRAIN[:2],
         "--out", str(work / "tok.json")])  # fmt: skip
    shape = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    gpt(["train", "--data", str(work / "train.txt"), "--tokenizer", str(work / "tok.json"), *shape,
         *SMALL_TRAIN[2:], "--device", "cpu", "--eval-interval", "300", "--sample-tokens", "0",
         "--out", str(run)])  # fmt: skip
    return list_checkpoints(run)[-1]


# ---- speed


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter and buffer once (a tied table once)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())}
    return sum(seen.values())


def our_step(model: torch.nn.Module, compile: bool = False):
    """() -> seconds per token of --tokens greedy steps after the prompt (Decoder.step + argmax)."""
    decoder = Decoder(model, 1, 256, compile=compile)

    def run(tokens: int) -> float:
        ids = decoder.prefill([PROMPT]).argmax(-1)
        t0 = time.perf_counter()
        for _ in range(tokens):
            ids = decoder.step(ids).argmax(-1)
        return (time.perf_counter() - t0) / tokens

    return run


def llama_model(path: Path, threads: int, n_ctx: int, logits_all: bool = False):
    import llama_cpp

    params = llama_cpp.llama_cpp.llama_model_default_params
    with contextlib.ExitStack() as stack:

        def no_repack():
            p = params()
            p.use_extra_bufts = False  # AMX CPUs: repacked Q8_0 matmuls crash
            return p

        llama_cpp.llama_cpp.llama_model_default_params = no_repack
        stack.callback(setattr, llama_cpp.llama_cpp, "llama_model_default_params", params)
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
            logits_all=logits_all, verbose=False,
        )  # fmt: skip


def llama_step(llm):
    def run(tokens: int) -> float:
        llm.reset()
        llm.eval(PROMPT)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(tokens):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return (time.perf_counter() - t0) / tokens

    return run


def best_interleaved(sides: dict, tokens: int, repeats: int) -> dict[str, float]:
    """name -> the best seconds per token over `repeats` rounds, each round running every side once."""
    for run in sides.values():
        run(4)  # warm-up: first-call costs, pages faulted in
    best = dict.fromkeys(sides, math.inf)
    for _ in range(repeats):
        for name, run in sides.items():
            best[name] = min(best[name], run(tokens))
    return best


# ---- perplexity


def held_out_ids(tokenizer, n: int) -> np.ndarray:
    _, text = corpus()
    return np.asarray(tokenizer.encode_ordinary(text)[: n + 1], dtype=np.int64)


def our_perplexity(model, tokenizer, ids: np.ndarray, kernel_everywhere: bool = False) -> float:
    before = int8.KERNEL_MAX_TOKENS
    int8.KERNEL_MAX_TOKENS = 1 << 30 if kernel_everywhere else before
    try:
        return evaluate_ids(model, tokenizer, ids, batch_size=4).perplexity
    finally:
        int8.KERNEL_MAX_TOKENS = before


def llama_perplexity(llm, ids: np.ndarray, block_size: int, vocab_size: int) -> float:
    """The same windows as gptcli.evaluate: block_size + 1 ids, each id after the first predicted once."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, block_size):
        window = ids[start : start + block_size + 1].tolist()
        llm.reset()
        llm.eval(window[:-1])
        logits = np.asarray(llm.scores[: len(window) - 1, :vocab_size], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
        count += len(window) - 1
    return math.exp(nll / count)


def quality(name: str, checkpoint: Path, ggufs: dict, tokens: int, threads: int) -> dict:
    fp32, tokenizer, _ = load_checkpoint(checkpoint)
    q8 = quantize_model(load_checkpoint(checkpoint)[0])
    ids = held_out_ids(tokenizer, tokens)
    row = {"model": name, "tokens": len(ids) - 1, "fp32": our_perplexity(fp32, tokenizer, ids)}
    row["int8"] = our_perplexity(q8, tokenizer, ids)
    row["int8_kernel"] = our_perplexity(q8, tokenizer, ids, kernel_everywhere=True)
    for dtype, path in ggufs.items():
        llm = llama_model(path, threads, fp32.config.block_size, logits_all=True)
        row[dtype] = llama_perplexity(llm, ids, fp32.config.block_size, tokenizer.vocab_size)
    cells = [
        f"{k} {v:.3f} ({(v / row['fp32'] - 1) * 100:+.2f}%)"
        for k, v in row.items()
        if k not in ("model", "tokens")
    ]
    print(f"  {name}, {row['tokens']:,} held-out tokens: " + ", ".join(cells), flush=True)
    return row


def export(checkpoint: Path, work: Path, tag: str, dtypes: list[str]) -> dict[str, Path]:
    from gptcli.gguf_export import export_gguf

    return {d: export_gguf(checkpoint, work / f"{tag}-{d}.gguf", dtype=d) for d in dtypes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ppl-tokens", type=int, default=16384, help="held-out tokens, the small model")
    parser.add_argument("--gpt2-ppl-tokens", type=int, default=2048, help="held-out tokens, the GPT-2 shape")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder kept between runs (default: temporary)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skipped = []
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    has_gguf = importlib.util.find_spec("gguf") is not None
    if not has_llama:
        skipped.append("llama.cpp (llama_cpp does not import: `make gguf-check` builds it into .llama-cpp/)")
    elif not has_gguf:
        skipped.append("llama.cpp (no gguf package to export with: pip install -e '.[dev]')")
    dtypes = ["f32", "q8_0"] if has_llama and has_gguf else []

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        print(
            f"int8 decoding, {platform.processor() or platform.machine()}, {args.threads} thread(s), {when}"
        )
        torch.manual_seed(0)
        config = ModelConfig(**GPT2_SHAPE)
        save_checkpoint(work / "gpt2-shape", GPT(config), config, gpt2_tokenizer())
        ggufs = export(work / "gpt2-shape", work, "gpt2-shape", dtypes)

        # 1) + 2) speed and bounds
        fp32, fp32_compiled = (load_checkpoint(work / "gpt2-shape")[0] for _ in range(2))
        q8 = quantize_model(load_checkpoint(work / "gpt2-shape")[0])
        prepare_for_cpu(fp32)  # what the Engine does to an fp32 model on a CPU
        prepare_for_cpu(fp32_compiled, openblas=False)  # and with --compile
        sides = {"ours fp32": our_step(fp32), "ours int8": our_step(q8)}
        sides |= {
            "ours fp32 compiled": our_step(fp32_compiled, True),
            "ours int8 compiled": our_step(q8, True),
        }
        sizes = {name: weight_bytes(fp32 if "fp32" in name else q8) for name in sides}
        for dtype, path in ggufs.items():
            name = f"llama.cpp {dtype.upper()}"
            sides[name] = llama_step(llama_model(path, args.threads, 256))
            sizes[name] = path.stat().st_size
        bandwidth = read_bandwidth(torch.device("cpu"))
        seconds = best_interleaved(sides, args.tokens, args.repeats)
        print(f"  GPT-2-124M shape, batch 1, {args.tokens} steps, best of {args.repeats}; "
              f"read bandwidth {bandwidth / 1e9:.1f} GB/s:")  # fmt: skip
        speed = {}
        for name, s in seconds.items():
            bound = sizes[name] / bandwidth
            speed[name] = {"ms_per_token": s * 1e3, "mb_read": sizes[name] / 1e6, "bound_ms": bound * 1e3}
            print(f"    {name:<18} {s * 1e3:7.2f} ms/token ({1 / s:6.1f} tok/s); reads {sizes[name] / 1e6:5.0f} MB, "
                  f"bound {bound * 1e3:6.2f} ms ({bound / s:.0%} of it)")  # fmt: skip
        ratios = {}
        for tag in ("", " compiled"):  # eager, then --compile
            ratios[f"ours int8{tag} / ours fp32{tag}"] = (f"ours fp32{tag}", f"ours int8{tag}", 1.6)
            if ggufs:
                ratios |= {f"ours fp32{tag} / llama.cpp F32": ("llama.cpp F32", f"ours fp32{tag}", 1.0),
                           f"ours int8{tag} / llama.cpp Q8_0": ("llama.cpp Q8_0", f"ours int8{tag}", 1.0)}  # fmt: skip
        for label, (slow, fast, goal) in ratios.items():
            ratio = seconds[slow] / seconds[fast]
            speed[label] = ratio
            print(f"    {label}: {ratio:.2f}x (goal >= {goal}x)")

        # 3) quality
        print("  held-out perplexity (change from ours fp32):", flush=True)
        small = trained_small(work)
        small_ggufs = export(small, work, "small", dtypes)
        rows = [quality("small trained", small, small_ggufs, args.ppl_tokens, args.threads)]
        shape = quality(
            "GPT-2-124M shape, random", work / "gpt2-shape", ggufs, args.gpt2_ppl_tokens, args.threads
        )
        rows.append(shape)
    for line in skipped:
        print(f"  skipped: {line}")
    if args.json:
        out = {"threads": args.threads, "date": when, "bandwidth_gb_s": bandwidth / 1e9, "speed": speed,
               "perplexity": rows, "skipped": skipped}  # fmt: skip
        print(json.dumps(out))


if __name__ == "__main__":
    main()
