"""Training speed: our GPT vs HF transformers' GPT2LMHeadModel on the same batches, in one run.

    python benchmarks/bench_train.py                       # CPU: baby-GPT shape, step time + ratio
    python benchmarks/bench_train.py --full-run            # + nanoGPT's CPU recipe end to end (2000 iters)
    python benchmarks/bench_train.py --device cuda --gpt2  # GPU: GPT-2 124M shape, bf16, flash, compile

Step time: forward + backward + grad clip + fused AdamW step, fp32 on CPU (bf16 autocast on GPU),
for both models with the same shape (learned positions, LayerNorm, tanh GELU, tied embeddings, no
dropout) on the same random batches, alternating step by step; the median over `--steps` steps
after `--warmup` steps.
Target (CPU): ours <= 0.8x HF's step time.

--full-run trains nanoGPT's "baby GPT" CPU recipe on toy_data/shakespeare.txt at character level
(4 layers, 4 heads, 128 wide, block 64, batch 12, lr 1e-3, 2000 iters, no dropout, warmup 100)
with `gptcli.training.trainer.train` and reports wall time, ms/iteration and the final val loss. For scale:
nanoGPT's own run of that recipe takes about 100 s on this 2-core machine and ends at val 1.87 on the
1 MB tiny-Shakespeare.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gptcli.config import ModelConfig, TrainConfig
from gptcli.models import GPT

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "toy_data" / "shakespeare.txt"


def hf_model(config: ModelConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )
    return GPT2LMHeadModel(hf_config)


def fused_adamw(model) -> torch.optim.AdamW:
    """Both sides get fused AdamW: ours picks it in configure_optimizers, and it is HF Trainer's
    default optimizer (adamw_torch_fused) since torch 2.8."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def time_interleaved(runs, batches, warmup: int, device) -> list[list[float]]:
    """Seconds per optimizer step for each (model, step_fn), alternating step by step so that
    machine noise hits all alike."""
    optimizers = [fused_adamw(model) for model, _ in runs]
    times: list[list[float]] = [[] for _ in runs]
    for i, (x, y) in enumerate(batches):
        for (model, step_fn), optimizer, out in zip(runs, optimizers, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = step_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    return times


def bench_step_time(
    config: ModelConfig, batch_size: int, steps: int, warmup: int, device, precision, compile_
):
    torch.manual_seed(0)
    batches = [
        (
            torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device),
            torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device),
        )
        for _ in range(steps + warmup)
    ]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return (
            torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
        )

    ours = GPT(config).to(device).train()
    ours_fwd = torch.compile(ours) if compile_ else ours

    def ours_step(x, y):
        with autocast():
            return ours_fwd(x, y)[1]

    theirs = hf_model(config).to(device).train()
    theirs_fwd = torch.compile(theirs) if compile_ else theirs

    def hf_step(x, y):
        with autocast():
            return theirs_fwd(input_ids=x, labels=y).loss  # HF shifts labels itself: same amount of work

    ours_times, hf_times = time_interleaved([(ours, ours_step), (theirs, hf_step)], batches, warmup, device)
    results = {"ours": statistics.median(ours_times), "hf": statistics.median(hf_times)}
    tokens = batch_size * config.block_size
    peak_memory, mfu = None, None
    if device.type == "cuda":
        from gptcli.runtime import peak_flops

        torch.cuda.reset_peak_memory_stats(device)
        time_interleaved([(ours, ours_step)], batches[:3], warmup=3, device=device)
        peak_memory = torch.cuda.max_memory_allocated(device)  # ours alone: weights, AdamW state, activations
        peak = peak_flops(device)
        mfu = ours.flops_per_token() * tokens / results["ours"] / peak if peak else None
    return {
        "ours_ms": results["ours"] * 1e3,
        "hf_ms": results["hf"] * 1e3,
        "ratio": results["ours"] / results["hf"],
        "ours_tokens_per_s": tokens / results["ours"],
        "hf_tokens_per_s": tokens / results["hf"],
        "ours_params": ours.num_params(non_embedding=False),
        "mfu": mfu,
        "peak_memory_bytes": peak_memory,
    }


def full_run(args) -> dict:
    from gptcli.training.trainer import train

    if not SHAKESPEARE.is_file():
        raise SystemExit("error: toy_data/shakespeare.txt is missing: run `make data`")
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            data=[str(SHAKESPEARE)],
            tokenizer="char",
            data_cache=Path(tmp) / "cache",
            model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
            batch_size=12,
            lr=1e-3,
            max_iters=args.full_iters,
            lr_decay_iters=args.full_iters,
            min_lr=1e-4,
            warmup_iters=100,
            eval_interval=args.full_iters,
            eval_iters=200,
            log_interval=100,
            sample_tokens=0,
            device="cpu",
        )
        start = time.perf_counter()
        summary = train(config, Path(tmp) / "run")
        wall = time.perf_counter() - start
        metrics = [
            json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        ]
    step_rates = [m["tokens_per_sec"] for m in metrics if "tokens_per_sec" in m][1:]
    ms_per_iter = 12 * 64 / statistics.median(step_rates) * 1e3 if step_rates else None
    return {"iters": summary.step, "wall_s": wall, "ms_per_iter": ms_per_iter, "val_loss": summary.val_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpt2", action="store_true", help="GPT-2 124M shape, block 1024, batch 12 (GPU)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--full-run", action="store_true")
    parser.add_argument("--full-iters", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.gpt2:
        config = ModelConfig(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024)
        batch, precision, compile_ = 12, "bf16", True
    else:  # nanoGPT's CPU "baby GPT", character level
        config = ModelConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64)
        batch, precision, compile_ = 12, "fp32", False
    result = {
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": str(device),
        "shape": config.model_dump(include={"n_layer", "n_head", "n_embd", "block_size", "vocab_size"}),
        "batch": batch,
        "precision": precision,
        "step": bench_step_time(config, batch, args.steps, args.warmup, device, precision, compile_),
    }
    if args.full_run:
        result["full_run"] = full_run(args)

    s = result["step"]
    print(f"step time, {result['shape']}, batch {batch}, {precision}, {device}:")
    print(f"  ours {s['ours_ms']:.1f} ms ({s['ours_tokens_per_s']:,.0f} tok/s)")
    print(f"  HF   {s['hf_ms']:.1f} ms ({s['hf_tokens_per_s']:,.0f} tok/s)")
    print(f"  ratio ours/HF = {s['ratio']:.2f} (target <= 0.8)")
    if s["mfu"] is not None:
        print(f"  ours: MFU {s['mfu'] * 100:.1f}% of the detected GPU's bf16 peak")
    if s["peak_memory_bytes"] is not None:
        print(f"  ours: peak GPU memory {s['peak_memory_bytes'] / 2**30:.2f} GiB")
    if "full_run" in result:
        f = result["full_run"]
        print(
            f"baby GPT recipe: {f['iters']} iters in {f['wall_s']:.1f}s wall, {f['ms_per_iter']:.1f} ms/iter, "
            f"val loss {f['val_loss']:.4f}"
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
