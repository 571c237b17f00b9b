"""Converting and loading a GPT-2 124M-shaped model: time and peak memory, ours vs HF transformers.

    python benchmarks/bench_load_gpt2.py [--size gpt2] [--json]

A random GPT2LMHeadModel of GPT-2's shape (124M parameters, fp32) is saved locally with
`save_pretrained` (model.safetensors) together with a GPT-2-layout vocabulary. Then, each in a fresh
subprocess:

- convert: `import_gpt2(folder, out)` (what `gpt load-gpt2 FOLDER` runs): HF folder -> our checkpoint;
- load: `load_checkpoint(out)` (what `gpt generate` runs first), every file checked against its
  checksum (the weights hashed in a background thread while they are read);
- load unverified: the same checkpoint with its checksums.json removed (as one written before
  checksums existed), so the ratio of the two is what checking costs (target: <= 1.10x);
- HF: `GPT2LMHeadModel.from_pretrained(folder)`, the peer.

The loads run --repeat times each (alternating), and the median time is reported.

Each subprocess reports its peak RSS (VmHWM) and its RSS after the imports (torch, transformers)
and after building and running a tiny model (which loads torch's CPU kernels and the modules a
first model build imports lazily, ~75 MB whatever the model's size), so the figure that is about
the weights is peak minus that baseline. Target: <= 1.2x the size of the weights.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024)}

CHILD = r"""
import json, sys, time
import torch, transformers
from gptcli import hf_gpt2
from gptcli.loading import load_checkpoint
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
# warm-up before the baseline: torch's CPU kernels and the modules a first model build imports
# lazily (~75 MB, whatever the model's size); then only what scales with the model is counted
from gptcli.config import ModelConfig
from gptcli.models import GPT
tiny = ModelConfig(vocab_size=64, n_layer=1, n_head=1, n_embd=8, block_size=8)
GPT.empty(tiny)(torch.zeros(1, 8, dtype=torch.long)), GPT(tiny)
base = rss("VmRSS:")
t0 = time.perf_counter()
what, folder, out = sys.argv[1:4]
if what == "convert":
    hf_gpt2.import_gpt2(folder, out)
elif what == "load":
    load_checkpoint(out)
elif what == "load-unverified":
    load_checkpoint(out, warn=lambda message: None)
else:
    transformers.GPT2LMHeadModel.from_pretrained(folder)
print(json.dumps({"seconds": time.perf_counter() - t0, "base": base, "peak": rss("VmHWM:")}))
"""


def make_folder(folder: Path, size: str) -> int:
    """A random GPT-2-shaped HF folder; returns the bytes of its weights."""
    import torch
    import transformers

    from gptcli.tokenizers import BPETokenizer
    from gptcli.tokenizers.export import export_tokenizer
    from gptcli.tokenizers.patterns import GPT2_PATTERN

    n_layer, n_head, n_embd = SIZES[size]
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    # a vocabulary of GPT-2's size: 50000 two-byte merges + <|endoftext|> = 50257 ids
    merges = [(a, b) for a in range(256) for b in range(256)][: 50257 - 257]
    export_tokenizer(BPETokenizer(merges, GPT2_PATTERN, {"<|endoftext|>": 50256}, kind="gpt2"), "hf", folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_child(what: str, folder: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(folder), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def unverified_copy(checkpoint: Path, to: Path) -> Path:
    """The checkpoint as one written before checksums existed: no checksums.json, version 1."""
    shutil.copytree(checkpoint, to)
    (to / "checksums.json").unlink()
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, "version": 1}))
    return to


def median_of(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "all_seconds": [round(r["seconds"], 3) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2", choices=sorted(SIZES))
    parser.add_argument("--repeat", type=int, default=5, help="runs of each load (median reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "hf", Path(tmp) / "ours"
        weight_bytes = make_folder(folder, args.size)
        results = {"convert": run_child("convert", folder, out)}
        unverified = unverified_copy(out, Path(tmp) / "unverified")
        loads: dict[str, list[dict]] = {"load": [], "load-unverified": []}
        for _ in range(args.repeat):  # alternating, so both see the same machine
            loads["load"].append(run_child("load", folder, out))
            loads["load-unverified"].append(run_child("load-unverified", folder, unverified))
        results |= {what: median_of(runs) for what, runs in loads.items()}
        results["hf"] = run_child("hf", folder, out)
    print(f"{args.size}: {weight_bytes / 1e6:.0f} MB of fp32 weights")
    cost = results["load"]["seconds"] / results["load-unverified"]["seconds"]
    print(f"  checking checksums costs {cost:.3f}x the unverified load time (target <= 1.10x)")
    for what, r in results.items():
        used = r["peak"] - r["base"]
        label = {
            "convert": "ours, convert HF -> checkpoint",
            "load": "ours, load checkpoint (verified)",
            "load-unverified": "ours, load without checksums",
            "hf": "HF from_pretrained",
        }
        print(
            f"  {label[what]:<32} {r['seconds']:6.2f} s  peak RSS {r['peak'] / 1e6:6.0f} MB, "
            f"above the imports {used / 1e6:6.0f} MB = {used / weight_bytes:.2f}x the weights"
        )
    if args.json:
        print(json.dumps({"size": args.size, "weight_bytes": weight_bytes, **results}))


if __name__ == "__main__":
    main()
