"""The encoder-decoder against the GPT on the same prompt/completion pairs: same parameters, same time.

    python benchmarks/bench_encdec.py              # two tasks, 90 s of training per model: ~10 minutes
    python benchmarks/bench_encdec.py --budget 20  # a quick look
    python benchmarks/bench_encdec.py --json       # + one JSON line per task with every number

Two generated character-level tasks (seeded; the held-out pairs are never trained on):
- reversal: a string of 5-15 lowercase letters -> the string backwards;
- transliteration: 2-4 pseudo-words -> their Cyrillic transliteration (digraphs such as "sh" -> "ш"
  and "ya" -> "я" first, then single letters), so an output character may stand for two input ones.

Each model is trained from scratch with `gpt train` on the same training pairs and char tokenizer:
- the encoder-decoder, `--arch encdec` (the prompt to the encoder, the completion from the decoder);
- the GPT, `--pairs` (each pair a two-message ChatML conversation, loss on the reply and its end
  token only, several pairs packed in a row with attention kept inside each).
Shapes are chosen so the two have about the same parameter count (printed). The time budget is the
same: a short calibration run measures each model's seconds per step, then each trains for
`--budget` seconds' worth of steps (its cosine schedule ends there), with --max-time as a guard.
`gpt eval --exact-match` then gives each one's completion loss (mean cross-entropy per completion
token, its end token included: the same measure for both) and greedy exact match on the held-out pairs.
"""

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPT = [sys.executable, "-m", "gptcli"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TRANSLIT = {  # digraphs first: the longest match wins
    "shch": "щ", "sh": "ш", "ch": "ч", "zh": "ж", "kh": "х", "ts": "ц", "ya": "я", "yu": "ю", "yo": "ё",
    "a": "а", "b": "б", "v": "в", "g": "г", "d": "д", "e": "е", "z": "з", "i": "и", "k": "к", "l": "л",
    "m": "м", "n": "н", "o": "о", "p": "п", "r": "р", "s": "с", "t": "т", "u": "у", "f": "ф", "y": "ы",
}  # fmt: skip
SYLLABLES = [c + v for c in ["b", "v", "d", "k", "l", "m", "n", "p", "r", "s", "t", "z", "sh", "ch", "zh", "kh", "ts"]
             for v in ["a", "e", "i", "o", "u", "ya", "yu"]]  # fmt: skip
SHAPES = {  # about the same parameter count (printed): 2 + 2 blocks with cross-attention vs 5 GPT blocks
    "encdec": "--arch encdec --n-enc-layer 2 --n-layer 2 --block-size 64 --batch-size 32".split(),
    # a GPT row packs 2-3 of these pairs: 8 rows a step train about as many pairs as the 32 above
    "gpt": "--arch gpt --pairs --n-layer 5 --block-size 128 --batch-size 8".split(),
}
COMMON = (
    "--n-head 4 --n-embd 128 --pos-emb rope --dropout 0 --lr 2e-3 --warmup-iters 20 --tokenizer char "
    "--sample-tokens 0 --val-fraction 0.05 --device cpu --seed 1"
).split()


def reversal(rng: random.Random) -> dict:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(5, 15)))
    return {"prompt": word, "completion": word[::-1]}


def transliterate(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        for n in (4, 2, 1):
            if text[i : i + n] in TRANSLIT:
                out.append(TRANSLIT[text[i : i + n]])
                i += n
                break
        else:
            out.append(text[i])  # a space
            i += 1
    return "".join(out)


def transliteration(rng: random.Random) -> dict:
    words = [
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 4))
    ]
    text = " ".join(words)
    return {"prompt": text, "completion": transliterate(text)}


TASKS = {"reversal": reversal, "transliteration": transliteration}


def write_pairs(path: Path, task, n: int, rng: random.Random, exclude: set[str]) -> set[str]:
    prompts, rows = set(), []
    while len(rows) < n:
        pair = task(rng)
        if pair["prompt"] in exclude or pair["prompt"] in prompts:
            continue  # held-out prompts are never trained on
        prompts.add(pair["prompt"])
        rows.append(json.dumps(pair, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return prompts


def gpt(*args: str, cwd: Path) -> str:
    done = subprocess.run([*GPT, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gpt {' '.join(args[:3])} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def seconds_per_step(run: Path) -> float:
    """From a calibration run's metrics.jsonl: the time between its 5th and last logged steps."""
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "kind" not in r]
    first, last = logs[0], logs[-1]
    return (last["elapsed"] - first["elapsed"]) / (last["step"] - first["step"])


def train(name: str, data: Path, work: Path, budget: float) -> dict:
    """Calibrate, then train for `budget` seconds' worth of steps; the run directory and its figures."""
    args = [*SHAPES[name], *COMMON, "--data", str(data), "--eval-iters", "5"]
    calibration = work / f"{name}-calibrate"
    gpt("train", *args, "--max-iters", "25", "--log-interval", "5", "--eval-interval", "1000",
        "--out", str(calibration), "--overwrite", "--quiet", cwd=work)  # fmt: skip
    step = seconds_per_step(calibration)
    steps = max(50, int(budget / step))
    run = work / name
    gpt("train", *args, "--max-iters", str(steps), "--log-interval", "25", "--eval-interval", str(steps),
        "--max-time", str(int(budget * 1.5 + 30)), "--out", str(run), "--overwrite", "--quiet", cwd=work)  # fmt: skip
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "kind" not in r]
    first, last = steps[0], steps[-1]
    # the training loop's time: its logged span, extended to step 0 at the span's pace (set-up left out)
    loop = (last["elapsed"] - first["elapsed"]) * last["step"] / max(1, last["step"] - first["step"])
    return {"run": run, "seconds_per_step": round(step, 4), "steps": last["step"],
            "train_seconds": round(loop, 1)}  # fmt: skip


def evaluate(runs: dict[str, dict], heldout: Path, work: Path) -> None:
    out = gpt("eval", *(a for r in runs.values() for a in ("-c", str(r["run"]))), "--data", str(heldout),
              "--exact-match", "--device", "cpu", "--json", cwd=work)  # fmt: skip
    for name, line in zip(runs, out.strip().splitlines()):
        row = json.loads(line)
        runs[name].update(parameters=row["parameters"], loss=row["loss"], exact_match=row["exact_match"])


def run_task(task: str, args, work: Path) -> dict:
    rng = random.Random(args.seed)
    heldout, train_pairs = work / f"{task}-heldout.jsonl", work / f"{task}-train.jsonl"
    held = write_pairs(heldout, TASKS[task], args.heldout, rng, set())
    write_pairs(train_pairs, TASKS[task], args.pairs, rng, held)
    runs = {name: train(name, train_pairs, work, args.budget) for name in SHAPES}
    evaluate(runs, heldout, work)
    return {"task": task, **{n: {k: v for k, v in r.items() if k != "run"} for n, r in runs.items()}}


def show(result: dict) -> None:
    print(f"\n{result['task']}")
    print(f"{'model':<8} {'params':>8} {'steps':>6} {'train s':>8} {'loss':>7} {'exact match':>12}")
    for name in SHAPES:
        r = result[name]
        print(f"{name:<8} {r['parameters'] / 1e6:>7.2f}M {r['steps']:>6} {r['train_seconds']:>8.1f} "
              f"{r['loss']:>7.4f} {r['exact_match']:>11.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="Training seconds per model (default 90).")
    parser.add_argument("--pairs", type=int, default=8000, help="Training pairs per task.")
    parser.add_argument("--heldout", type=int, default=500, help="Held-out pairs per task.")
    parser.add_argument("--tasks", default="reversal,transliteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{datetime.date.today()}, budget {args.budget:g} s per model")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            result = run_task(task, args, Path(tmp))
            show(result)
            if args.json:
                print(json.dumps(result))


if __name__ == "__main__":
    main()
