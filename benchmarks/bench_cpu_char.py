"""Time to nanoGPT's loss on CPU: `gpt train --config cpu-char` vs nanoGPT's own CPU recipe, same run.

    git clone https://github.com/karpathy/nanoGPT benchmarks/.cache/nanoGPT   # once (train.py, model.py)
    python benchmarks/bench_cpu_char.py --corpus toy_data/shakespeare.txt [--json]
    python benchmarks/bench_cpu_char.py --corpus my_heldout_text.txt

1. nanoGPT: its README's CPU recipe, character level, unchanged:
   `python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
   --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
   --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, on the corpus prepared as its
   data/shakespeare_char/prepare.py does (sorted characters, the first 90% to train.bin, the rest
   to val.bin, uint16, meta.pkl). Its wall time (the whole process) and its final val loss L
   (the eval at step 2000).
2. Ours: `gpt train --config cpu-char --tokenizer char --data CORPUS --target-loss L` in a fresh
   process (our validation split is the same last 10% of the text); its wall time (the whole
   process: start-up, tokenizing, training, every eval and the final save), whether it reached L,
   and at which step.
The ratio is ours / nanoGPT's wall time. Target: at most 0.6x, on a corpus the preset was not tuned on.
"""

import argparse
import json
import os
import pickle  # nanoGPT's meta.pkl format (its input, written for it); gptcli itself never pickles
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NANOGPT = REPO / "benchmarks" / ".cache" / "nanoGPT"
NANOGPT_RECIPE = [
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
    "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]  # fmt: skip


def prepare_nanogpt_data(corpus: Path, data_dir: Path) -> None:
    """What nanoGPT's data/shakespeare_char/prepare.py writes, for any text file."""
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    data_dir.mkdir(parents=True)
    for name, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9) :])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data_dir / f"{name}.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)


def run_nanogpt(nanogpt: Path, corpus: Path, workdir: Path) -> dict:
    work = workdir / "nanogpt"
    shutil.copytree(nanogpt, work, ignore=shutil.ignore_patterns(".git", "data", "out*"))
    prepare_nanogpt_data(corpus, work / "data" / "shakespeare_char")
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "train.py", *NANOGPT_RECIPE], cwd=work, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"error: nanoGPT failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out.stdout)
    step, train_loss, val_loss = evals[-1]
    return {"wall_s": wall, "step": int(step), "train_loss": float(train_loss), "val_loss": float(val_loss)}


def run_ours(corpus: Path, target: float, workdir: Path, extra: list[str]) -> dict:
    gpt = Path(sys.executable).with_name("gpt")
    run = workdir / "ours"
    cmd = [str(gpt), "train", "--config", "cpu-char", "--tokenizer", "char", "--data", str(corpus),
           "--target-loss", str(target), "--out", str(run), "--data-cache", str(workdir / "cache"),
           "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"error: gpt train failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    last = evals[-1]
    return {
        "wall_s": wall,
        "step": last["step"],
        "val_loss": last["val_loss"],
        "elapsed_at_last_eval": last.get("elapsed"),
        "evals": [(r["step"], round(r["val_loss"], 4), r.get("elapsed")) for r in evals],
        "reached": last["val_loss"] <= target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "toy_data" / "shakespeare.txt")
    parser.add_argument("--nanogpt", type=Path, default=NANOGPT, help="a nanoGPT checkout")
    parser.add_argument("--target", type=float, default=None, help="skip nanoGPT; use this val loss")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("extra", nargs="*", help="more `gpt train` flags for our run, after --")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"error: no corpus at {args.corpus} (make data writes toy_data/shakespeare.txt)")
    if args.target is None and not (args.nanogpt / "train.py").is_file():
        raise SystemExit(f"error: no nanoGPT checkout at {args.nanogpt}: see this script's docstring")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = None
        if args.target is None:
            theirs = run_nanogpt(args.nanogpt, args.corpus, Path(tmp))
            print(
                f"nanoGPT: {theirs['wall_s']:.1f} s, {theirs['step']} iters, val loss {theirs['val_loss']:.4f}"
            )
        target = args.target if theirs is None else theirs["val_loss"]
        ours = run_ours(args.corpus, target, Path(tmp), args.extra)
    print(
        f"ours:    {ours['wall_s']:.1f} s, {ours['step']} iters, val loss {ours['val_loss']:.4f} "
        f"({'reached' if ours['reached'] else 'did NOT reach'} {target:.4f})"
    )
    if theirs:
        print(f"ours / nanoGPT wall time: {ours['wall_s'] / theirs['wall_s']:.2f}x (target <= 0.6x)")
    if args.json:
        print(json.dumps({"corpus": str(args.corpus), "target": target, "nanogpt": theirs, "ours": ours}))


if __name__ == "__main__":
    main()
