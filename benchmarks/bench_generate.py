"""Generation speed: our engine vs HF transformers' `generate` on the same weights, in one run.

    python benchmarks/bench_generate.py                               # CPU, GPT-2 124M shape, fp32 + bf16
    python benchmarks/bench_generate.py --small                       # CPU, a 4-layer model (quick)
    python benchmarks/bench_generate.py --device cuda --batches 1,8,64  # GPU: bf16, CUDA graphs
    python benchmarks/bench_generate.py --cli                         # also through `gpt generate`

Every case generates --new-tokens after a 16-token prompt with top-k 200 sampling (temperature 1,
never stopping early). Tokens/s counts new tokens over all rows / wall time of the whole call
(prefill included), best of --repeats. HF's model is a `GPT2LMHeadModel` holding exactly our random
weights (the four Conv1D weights transposed), with its default dynamic KV cache, cast to the same
dtype as ours (bf16: weights cast once, no autocast, on both sides).

Ours runs eager and with --compile (the fixed-shape decode step through torch.compile; on CUDA,
replayed as a CUDA graph); compilation happens in a warm-up call that is not timed (its seconds
are printed). The memory-bandwidth bound is measured in the same run: the device's read bandwidth
(the best of several sums over a buffer larger than any cache) over the bytes of weights one
decode step reads. At batch 1 a decode step cannot beat it; our fraction of it is printed.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train import hf_model  # same folder

from gptcli.config import ModelConfig, SampleConfig
from gptcli.generation import Engine
from gptcli.models import GPT
from gptcli.runtime import DTYPES
from gptcli.storage.checkpoint import save_checkpoint
from gptcli.tokenizers import BPETokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_SHAPE = dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024)
SMALL_SHAPE = dict(vocab_size=4096, n_layer=4, n_head=4, n_embd=256, block_size=512)
PROMPT = "ABCDEFGHIJKLMNOP" * 2  # 16 tokens: each pair of letters is one merge


def hf_copy(model: GPT):
    """An HF GPT2LMHeadModel with our weights (GPT-2 names; Conv1D weights are stored transposed)."""
    hf = hf_model(model.config.model_copy(update={"vocab_size": model.config.padded_vocab_size}))
    state = {k: (v.t() if k.endswith(CONV1D) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    return hf.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def read_bandwidth(device: torch.device, mbytes: int = 1024, repeats: int = 7) -> float:
    """Bytes/s of reading a buffer far larger than any cache (the best of `repeats` full sums)."""
    buf = torch.ones(mbytes * 2**20 // 4, dtype=torch.float32, device=device)
    buf.sum()  # fault the pages in
    seconds = best_time(lambda: buf.sum(), repeats, device)
    return buf.numel() * 4 / seconds


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter once (a tied matrix once), plus the position table."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def tokenizer_for(vocab_size: int) -> BPETokenizer:
    """A tokenizer of the model's size (two-byte merges): the text is not the point, the speed is."""
    merges = [(a, b) for a in range(256) for b in range(256)][: vocab_size - 256]
    return BPETokenizer(merges, special_tokens={})


def sample_config(batch: int, new_tokens: int) -> SampleConfig:
    return SampleConfig(
        num_samples=batch, max_new_tokens=new_tokens, temperature=1.0, top_k=200, ignore_eos=True, seed=0
    )


def time_ours(engine: Engine, prompt: list[int], config: SampleConfig, repeats: int) -> tuple[float, float]:
    """(best seconds of a call, seconds of the first, untimed, warm-up call: compilation)"""
    t0 = time.perf_counter()
    engine.generate(prompt, config)
    sync(engine.device)
    warmup = time.perf_counter() - t0
    return best_time(lambda: engine.generate(prompt, config), repeats, engine.device), warmup


def time_hf(hf, prompt: list[int], batch: int, new_tokens: int, repeats: int, device) -> float:
    ids = torch.tensor([prompt] * batch, device=device)

    def run():
        with torch.no_grad():
            hf.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, top_k=200, pad_token_id=0,
            )  # fmt: skip

    run()  # warm-up
    return best_time(run, repeats, device)


def time_cli(
    model: GPT, tokenizer, precision: str, device, batch: int, new_tokens: int, compile: bool
) -> float:
    """tok/s that `gpt generate --json` reports for the same weights (loading not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ckpt", model, model.config, tokenizer)
        cmd = [str(Path(sys.executable).with_name("gpt")), "generate", "--checkpoint", f"{tmp}/ckpt",
               "--prompt", PROMPT, "--num-samples", str(batch),
               "--max-new-tokens", str(new_tokens), "--temperature", "1", "--top-k", "200", "--seed", "0",
               "--ignore-eos", "--device", str(device), "--precision", precision, "--json", "--quiet",
               "--compile" if compile else "--no-compile"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
        return json.loads(out.stdout)["tokens_per_second"]


def bench_precision(base: GPT, precision: str, args, device, prompt) -> list[dict]:
    """Every batch size at one precision: ours eager, ours compiled, HF (and the CLI)."""
    dtype = DTYPES[precision]
    hf = hf_copy(base).to(device=device, dtype=dtype)
    tokenizer = tokenizer_for(base.config.vocab_size)
    engines = {
        "eager": Engine(copy.deepcopy(base).to(device), tokenizer, precision),
        "compiled": Engine(copy.deepcopy(base).to(device), tokenizer, precision, compile=True),
    }
    rows = []
    for batch in args.batches:
        config = sample_config(batch, args.new_tokens)
        tokens = batch * args.new_tokens
        row = {"precision": precision, "batch": batch}
        for name, engine in engines.items():
            seconds, warmup = time_ours(engine, prompt, config, args.repeats)
            row[f"{name}_tok_s"], row[f"{name}_warmup_s"] = tokens / seconds, warmup
        row["hf_tok_s"] = tokens / time_hf(hf, prompt, batch, args.new_tokens, args.repeats, device)
        if args.cli:  # what a user sees: one call (its tok/s leaves out compile_seconds)
            for compile in (False, True):
                key = "cli_compiled_tok_s" if compile else "cli_tok_s"
                row[key] = time_cli(base, tokenizer, precision, device, batch, args.new_tokens, compile)
        row["eager_vs_hf"] = row["eager_tok_s"] / row["hf_tok_s"]
        row["compiled_vs_hf"] = row["compiled_tok_s"] / row["hf_tok_s"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    cli = ""
    if "cli_tok_s" in r:
        cli = f"; gpt generate {r['cli_tok_s']:,.1f}, with --compile {r['cli_compiled_tok_s']:,.1f} (compiling left out)"
    return (
        f"  {r['precision']} batch {r['batch']}: ours {r['eager_tok_s']:,.1f} tok/s eager "
        f"({r['eager_vs_hf']:.2f}x HF), {r['compiled_tok_s']:,.1f} compiled ({r['compiled_vs_hf']:.2f}x HF; "
        f"compile {r['compiled_warmup_s']:.0f}s){cli}; HF generate {r['hf_tok_s']:,.1f} tok/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--small", action="store_true", help="a 4-layer, 256-wide model instead of GPT-2 124M"
    )
    parser.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU, bf16 on CUDA")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--cli", action="store_true", help="also time `gpt generate --compile --json`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    precisions = (args.precisions or ("bf16" if device.type == "cuda" else "fp32,bf16")).split(",")

    config = ModelConfig(**(SMALL_SHAPE if args.small else GPT2_SHAPE))
    torch.manual_seed(0)
    base = GPT(config).eval()
    prompt = tokenizer_for(config.vocab_size).encode(PROMPT)
    bandwidth = read_bandwidth(device)
    shape = config.model_dump(include={"n_layer", "n_head", "n_embd", "block_size", "vocab_size"})
    print(f"generation, {shape}, {device}, {len(prompt)} prompt + {args.new_tokens} new tokens, top-k 200:")
    print(f"  read bandwidth measured now: {bandwidth / 1e9:.1f} GB/s", flush=True)
    results, bounds = [], {}
    for precision in precisions:
        rows = bench_precision(base, precision, args, device, prompt)
        nbytes = weight_bytes(base) * DTYPES[precision].itemsize // 4
        bounds[precision] = {"weight_bytes": nbytes, "bound_tok_s": bandwidth / nbytes}
        for r in rows:
            if r["batch"] == 1:
                best = max(r["eager_tok_s"], r["compiled_tok_s"])
                r["bound_fraction"] = best / bounds[precision]["bound_tok_s"]
                print(
                    f"    {precision} bandwidth bound at batch 1: {bounds[precision]['bound_tok_s']:,.1f} tok/s "
                    f"({nbytes / 1e6:.0f} MB of weights); ours reaches {r['bound_fraction']:.0%} of it"
                )
        results += rows
    if args.json:
        print(json.dumps({"device": str(device), "shape": shape, "read_bandwidth": bandwidth,
                          "bounds": bounds, "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
