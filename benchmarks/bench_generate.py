"""Generation speed: our engine vs HF transformers' `generate` on the same weights, in one run.

    python benchmarks/bench_generate.py                           # CPU, a small model
    python benchmarks/bench_generate.py --device cuda --gpt2      # GPU, GPT-2 124M shape, bf16

Both generate 256 new tokens after a 16-token prompt with top-k 200 sampling (temperature 1,
never stopping early), at batch 1 and batch 8. Tokens/s counts new tokens over all rows,
wall time of the whole call (prefill included), best of `--repeats`. HF's model is a
`GPT2LMHeadModel` holding exactly our random weights (the four Conv1D weights transposed), with its
default dynamic KV cache. Target on CPU: ours >= HF's eager `generate`.

The memory-bandwidth bound printed beside GPU figures is weight bytes / HBM bandwidth: the most
single-sequence tokens/s a decode that reads every weight once per token can reach.
"""

import argparse
import json
import time

import torch
from bench_train import hf_model  # same folder

from gptcli.config import ModelConfig, SampleConfig
from gptcli.generation import Engine
from gptcli.models import GPT
from gptcli.tokenizers import BPETokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def hf_copy(model: GPT):
    """An HF GPT2LMHeadModel with our weights (GPT-2 names; Conv1D weights are stored transposed)."""
    hf = hf_model(model.config.model_copy(update={"vocab_size": model.config.padded_vocab_size}))
    state = {k: (v.t() if k.endswith(CONV1D) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    return hf.eval()


def best_time(fn, repeats: int, *args) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpt2", action="store_true", help="GPT-2 124M shape, bf16 (GPU)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.gpt2:
        config = ModelConfig(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024)
        precision = "bf16"
    else:
        config = ModelConfig(vocab_size=4096, n_layer=4, n_head=4, n_embd=256, block_size=512)
        precision = "fp32"
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    hf = hf_copy(model).to(device)
    # a tokenizer of the model's size (all two-byte merges): the text is not the point, the speed is
    merges = [(a, b) for a in range(256) for b in range(256)][: config.vocab_size - 256]
    tokenizer = BPETokenizer(merges, special_tokens={})
    prompt = torch.randint(0, 256, (16,)).tolist()
    dtype = {"bf16": torch.bfloat16}.get(precision)
    if dtype:
        hf = hf.to(dtype)

    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        sample = SampleConfig(
            num_samples=batch,
            max_new_tokens=args.new_tokens,
            temperature=1.0,
            top_k=200,
            ignore_eos=True,
            seed=0,
        )
        engine = Engine(model, tokenizer, precision)
        ours = best_time(engine.generate, args.repeats, prompt, sample)
        ids = torch.tensor([prompt] * batch, device=device)

        def hf_generate(ids):
            with torch.no_grad():
                hf.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=True, top_k=200, pad_token_id=0,
                )  # fmt: skip

        theirs = best_time(hf_generate, args.repeats, ids)
        tokens = batch * args.new_tokens
        results.append(
            {"batch": batch, "ours_tok_s": tokens / ours, "hf_tok_s": tokens / theirs, "ratio": theirs / ours}
        )

    weight_bytes = sum(p.numel() for p in model.parameters()) * (2 if dtype else 4)
    bound = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bw = next((v for k, v in HBM_BYTES_PER_S.items() if k in name), None)
        bound = bw / weight_bytes if bw else None
    shape = config.model_dump(include={"n_layer", "n_head", "n_embd", "block_size", "vocab_size"})
    print(f"generation, {shape}, {precision}, {device}, 16 prompt + {args.new_tokens} new tokens, top-k 200:")
    for r in results:
        print(
            f"  batch {r['batch']}: ours {r['ours_tok_s']:,.0f} tok/s, HF generate {r['hf_tok_s']:,.0f} tok/s, "
            f"ours/HF = {r['ratio']:.2f}x"
        )
    if bound:
        print(
            f"  memory-bandwidth bound at batch 1: {bound:,.0f} tok/s ({weight_bytes / 1e6:.0f} MB of weights)"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "device": str(device),
                    "shape": shape,
                    "precision": precision,
                    "results": results,
                    "bound": bound,
                }
            )
        )


if __name__ == "__main__":
    main()
