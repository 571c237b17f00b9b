"""Fine-tuning: `gpt finetune` (gptcli.training.trainer.train with TrainConfig.chat) vs TRL's SFTTrainer,
on CPU, on the same GPT-2-shaped model, conversations, template, batch, steps and learning rate.

    python benchmarks/bench_finetune.py           # 6 layers x 384, block 256, batch 8: a few minutes on 2 cores
    python benchmarks/bench_finetune.py --small   # 2 layers x 128, block 128, no quality part: ~2 minutes
    python benchmarks/bench_finetune.py --json    # + one JSON line with every number

The model is a random-init HF GPT2LMHeadModel (no dropout), saved with our byte-level BPE tokenizer
(trained here on toy_data/sonnets.txt plus the task's text) in HF's layout; our base is
`gptcli.hf_gpt2.import_gpt2` of that folder, and TRL loads the folder itself. Both sides add
<|im_start|> and <|im_end|> (new embedding rows at the mean of the old ones) and render ChatML:
ours with its renderer, TRL with the same Jinja text plus `{% generation %}` markers, and
`assistant_only_loss=True`, so both train exactly each assistant reply and its <|im_end|>.

Each run is a subprocess of its own (benchmarks/finetune_sides.py): fp32, torch.set_num_threads
equal, the same number of optimizer steps, constant lr, grad clip 1.0, no eval, no saving on TRL's
side (ours saves its one final checkpoint, after the timed steps). Trained tokens per second = the
trained targets (assistant tokens) of the steps after the first `--warmup` divided by the time from
the end of the last warm-up step to the end of the last step. Peak memory: each process's own peak
RSS (VmHWM). Cases run alternately, `--repeats` times; each figure is the median (range in brackets).

- unpacked: ours --no-pack (each row one conversation padded to the block) vs TRL packing=False
  (each row one conversation padded to the longest in the batch).
- packed: ours --pack (best-fit, attention kept inside each conversation) vs TRL packing=True
  (best-fit "bfd", padding-free rows with position_ids); only with --trl-packed.
- default: what each gives with its defaults: ours packed vs TRL unpacked.
- packing gain: ours packed / ours unpacked.

Quality: ours fine-tuned (packed) from the same random-init base on the generated task (repeat,
reverse, sort, first-and-last of 2-6 words) for --quality-steps steps (default 400; --small skips
it unless given: too few steps learn nothing); the base is --small's shape in both modes; exact
match of the greedy reply (stopped at <|im_end|>) on held-out prompts, before and after.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from finetune_sides import CHATML_GENERATION_JINJA, TASKS, WORDS, conversations
from measure import run_measured

REPO = Path(__file__).resolve().parents[1]
SONNETS = REPO / "toy_data" / "sonnets.txt"
SIDES = Path(__file__).resolve().parent / "finetune_sides.py"
SHAPES = {  # mode: model, data and run settings
    "default": dict(n_layer=6, n_head=6, n_embd=384, block=256, vocab=4000, batch=8, steps=12,
                    conversations=2000, max_words=60, max_turns=3, quality_steps=400),
    "small": dict(n_layer=2, n_head=2, n_embd=128, block=128, vocab=1000, batch=8, steps=10,
                  conversations=600, max_words=25, max_turns=2, quality_steps=0),
}  # fmt: skip


def prepare(tmp: Path, shape: dict, seed: int) -> dict:
    """The tokenizer, the HF folder, our imported base and the conversation files."""
    from gptcli.chat.template import ChatTemplate, render
    from gptcli.tokenizers import with_special_tokens

    tokenizer = task_tokenizer(tmp, shape["vocab"])
    template = ChatTemplate.chatml()
    chat_tokenizer, _ = with_special_tokens(tokenizer, template.special_tokens)
    chats = [  # only those that fit a row on both sides (ours drops longer ones, TRL truncates them)
        c for c in conversations(shape["conversations"], seed, shape["max_words"], shape["max_turns"])
        if len(render(c, template, chat_tokenizer).ids) <= shape["block"]
    ]  # fmt: skip
    data = tmp / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    base = hf_base(tmp, tokenizer, shape, shape["block"], seed)
    check_same_ids(tmp / "hf", chats[:20], template, chat_tokenizer)
    return {"hf": str(tmp / "hf"), "base": str(base), "data": str(data), "conversations": chats}


def task_tokenizer(tmp: Path, vocab_size: int):
    """A GPT-2-pattern BPE of `vocab_size` trained on the sonnets and the tasks' words."""
    from gptcli.config import TokenizerTrainConfig
    from gptcli.data.tokenizer_corpus import train_tokenizer

    corpus = tmp / "corpus.txt"
    task_text = "\n".join(f"{t}: {' '.join(WORDS)}" for t in TASKS)
    corpus.write_text(SONNETS.read_text() + ("\n" + task_text) * 20)
    config = TokenizerTrainConfig(files=[str(corpus)], vocab_size=vocab_size, pattern="gpt2")
    return train_tokenizer(config).tokenizer


def hf_base(tmp: Path, tokenizer, shape: dict, positions: int, seed: int) -> Path:
    """A random-init HF GPT2LMHeadModel of `shape` with `tokenizer` in tmp/hf, and our import of it
    (tmp/base): the same weights on both sides."""
    import torch
    import transformers

    from gptcli.hf_gpt2 import import_gpt2
    from gptcli.tokenizers.export import export_tokenizer

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=positions, n_embd=shape["n_embd"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id,
    )  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp / "hf")
    export_tokenizer(tokenizer, "hf", tmp / "hf")
    return import_gpt2(tmp / "hf", tmp / "base")


def check_same_ids(hf_dir: Path, chats: list[list[dict]], template, tokenizer) -> None:
    """TRL's tokenizer (as finetune_sides.run_trl sets it up) gives our ids and our trained tokens."""
    import transformers

    from gptcli.chat.template import render

    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    for c in chats:
        ours = render(c, template, tokenizer)
        theirs = hf.apply_chat_template(c, chat_template=CHATML_GENERATION_JINJA, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)  # fmt: skip
        if theirs["input_ids"] != ours.ids or theirs["assistant_masks"] != [int(t) for t in ours.trained]:
            raise SystemExit(f"TRL's ids or mask differ from ours for {c}")


def tokens_per_second(run: dict, warmup: int, clock: str = "ends") -> float:
    """Trained tokens of the steps after the warm-up per second of `clock`: "ends" (wall) or "cpu"."""
    ends, trained = run[clock], run["trained"]
    return sum(trained[warmup:]) / (ends[-1] - ends[warmup - 1])


def run_side(side: str, job: dict, tmp: Path, name: str, sides: Path = SIDES) -> dict:
    """One side of a job in its own process (the `sides` script: finetune_sides.py, lora_sides.py),
    measured: its result, its wall time and tree's peak RSS, and its run directory (`out`)."""
    job = {**job, "out": str(tmp / f"run-{name}")}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(job))
    measured = run_measured([sys.executable, str(sides), side, str(path)], capture=True, quiet=True)
    result = json.loads(measured.out.strip().splitlines()[-1])
    result.update(wall=measured.seconds, tree_peak_rss=measured.peak_rss, out=job["out"])
    if len(result["ends"]) != job["steps"]:
        raise SystemExit(f"{side} ran {len(result['ends'])} steps, not {job['steps']}")
    return result


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def exact_match(checkpoint: Path | str, prompts: list[tuple[str, str]], base: bool) -> float:
    """The share of prompts whose greedy reply (stopped at <|im_end|>) is exactly the answer."""
    from gptcli.chat.template import ChatTemplate, render
    from gptcli.config import SampleConfig
    from gptcli.generation import Engine
    from gptcli.loading import load_newest
    from gptcli.models import resize_vocab
    from gptcli.tokenizers import with_special_tokens

    model, tokenizer, _, _ = load_newest(checkpoint)
    template = ChatTemplate.chatml()
    if base:  # as the fine-tune starts: the template's tokens added, their rows at the mean
        tokenizer, _ = with_special_tokens(tokenizer, template.special_tokens)
        resize_vocab(model, tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    settings = SampleConfig(max_new_tokens=48, temperature=0.0, stop=[template.end_token])
    hits = 0
    for prompt, answer in prompts:
        ids = render(
            [{"role": "user", "content": prompt}], template, tokenizer, add_generation_prompt=True
        ).ids
        hits += engine.generate(ids, settings).samples[0].text.strip() == answer
    return hits / len(prompts)


def quality(tmp: Path, prepared: dict, args) -> dict:
    """Ours fine-tuned on the task from the random-init base of --small's shape (prepared here in the
    default mode); exact match before and after."""
    import random

    from finetune_sides import exchange

    shape = SHAPES["small"]
    if not args.small:
        (tmp / "quality").mkdir()
        prepared, tmp = prepare(tmp / "quality", shape, args.seed), tmp / "quality"

    chats = conversations(args.quality_conversations, args.seed + 1, 6, 1, min_words=2)
    data = tmp / "task.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    seen = {c[0]["content"] for c in chats}
    rng, held_out = random.Random(args.seed + 2), []
    while len(held_out) < args.quality_prompts:
        prompt, answer = exchange(rng, 2, 6)
        if prompt not in seen:
            held_out.append((prompt, answer))
            seen.add(prompt)
    job = dict(base=prepared["base"], data=str(data), batch=shape["batch"], steps=args.quality_steps,
               lr=args.quality_lr, threads=args.threads, seed=args.seed, pack=True)  # fmt: skip
    run = run_side("ours", job, tmp, "quality")
    after = exact_match(tmp / "run-quality", held_out, base=False)
    before = exact_match(prepared["base"], held_out, base=True)
    return {"before": before, "after": after, "steps": args.quality_steps, "train_seconds": run["wall"],
            "conversations": len(chats), "held_out": len(held_out), "shape": shape}  # fmt: skip


def machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="2 layers x 128, block 128, no quality part: ~2 minutes"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: by mode)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side and case, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on each side")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--trl-packed", action="store_true", help="also compare both sides packed")
    parser.add_argument("--quality-steps", type=int, help="steps of the quality fine-tune (0: skip it)")
    parser.add_argument("--quality-lr", type=float, default=2e-3)
    parser.add_argument("--quality-conversations", type=int, default=3000)
    parser.add_argument("--quality-prompts", type=int, help="held-out prompts (default: 100, --small 50)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shape = SHAPES["small" if args.small else "default"]
    steps = args.steps or shape["steps"]
    if steps <= args.warmup:
        raise SystemExit("error: --steps must be more than --warmup")
    args.quality_steps = shape["quality_steps"] if args.quality_steps is None else args.quality_steps
    args.quality_prompts = args.quality_prompts or (50 if args.small else 100)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepared = prepare(tmp, shape, args.seed)
        job = dict(hf=prepared["hf"], base=prepared["base"], data=prepared["data"], batch=shape["batch"],
                   block=shape["block"], steps=steps, lr=args.lr, threads=args.threads, seed=args.seed)  # fmt: skip
        cases = [("ours", False), ("trl", False), ("ours", True)] + (
            [("trl", True)] if args.trl_packed else []
        )
        runs: dict[tuple[str, bool], list[dict]] = {case: [] for case in cases}
        for r in range(args.repeats):
            for side, pack in cases:
                name = f"{side}-{'pack' if pack else 'nopack'}-{r}"
                print(f"  {name} ...", file=sys.stderr, flush=True)
                runs[side, pack].append(run_side(side, {**job, "pack": pack}, tmp, name))
        figures = {
            f"{side}_{'packed' if pack else 'unpacked'}": {
                "tokens_per_s": median_range([tokens_per_second(r, args.warmup) for r in rs]),
                "tokens_per_cpu_s": median_range([tokens_per_second(r, args.warmup, "cpu") for r in rs]),
                "peak_rss_mb": median_range([r["peak_rss"] / 2**20 for r in rs]),
                "setup_s": median_range([r["setup"] for r in rs]),
                "wall_s": median_range([r["wall"] for r in rs]),
                "trained_per_step": sum(sum(r["trained"]) for r in rs) / sum(len(r["trained"]) for r in rs),
            }
            for (side, pack), rs in runs.items()
        }
        result = {"machine": machine(), "mode": "small" if args.small else "default", "shape": shape,
                  "steps": steps, "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                  "figures": figures}  # fmt: skip
        if args.quality_steps:
            print("  quality ...", file=sys.stderr, flush=True)
            result["quality"] = quality(tmp, prepared, args)
    print_table(result, args)
    if args.json:
        print(json.dumps(result))


def print_table(result: dict, args) -> None:
    m, s, f = result["machine"], result["shape"], result["figures"]
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, {result['threads']} threads; torch {m['torch']}, "
          f"transformers {m['transformers']}, trl {m['trl']}")  # fmt: skip
    print(f"model: GPT-2 {s['n_layer']} layers x {s['n_embd']}, vocab {s['vocab']} + 2, block {s['block']}; "
          f"batch {s['batch']}, {result['steps']} steps ({result['warmup']} warm-up), fp32 CPU, "
          f"median of {result['repeats']} [range]; TRL: assistant_only_loss")  # fmt: skip

    def cell(v, fmt="{:,.0f}"):
        med, lo, hi = v
        return f"{fmt.format(med)} [{fmt.format(lo)}-{fmt.format(hi)}]"

    rows = [
        ("unpacked", "ours_unpacked", "trl_unpacked"),
        ("default (ours packed)", "ours_packed", "trl_unpacked"),
    ]
    if "trl_packed" in f:
        rows.append(("packed", "ours_packed", "trl_packed"))
    print(f"{'comparison':<24}{'ours':>26}{'TRL':>26}{'ours/TRL':>10}  goal")
    for label, ours, theirs in rows:
        tps = f[ours]["tokens_per_s"][0] / f[theirs]["tokens_per_s"][0]
        print(f"{label + ' tok/s':<24}{cell(f[ours]['tokens_per_s']):>26}{cell(f[theirs]['tokens_per_s']):>26}"
              f"{tps:>9.2f}x  >= 1.5x {'met' if tps >= 1.5 else 'NOT met'}")  # fmt: skip
        cpu = f[ours]["tokens_per_cpu_s"][0] / f[theirs]["tokens_per_cpu_s"][0]
        print(f"{label + ' tok/CPU-s':<24}{cell(f[ours]['tokens_per_cpu_s']):>26}"
              f"{cell(f[theirs]['tokens_per_cpu_s']):>26}{cpu:>9.2f}x")  # fmt: skip
        mem = f[ours]["peak_rss_mb"][0] / f[theirs]["peak_rss_mb"][0]
        print(f"{label + ' peak MB':<24}{cell(f[ours]['peak_rss_mb']):>26}{cell(f[theirs]['peak_rss_mb']):>26}"
              f"{mem:>9.2f}x  <= 1.0x {'met' if mem <= 1.0 else 'NOT met'}")  # fmt: skip
    gain = f["ours_packed"]["tokens_per_s"][0] / f["ours_unpacked"]["tokens_per_s"][0]
    print(f"packing gain (ours packed / ours unpacked, trained tok/s): {gain:.2f}x")
    for key in f:
        print(f"  {key}: {f[key]['trained_per_step']:.0f} trained tokens/step, setup {f[key]['setup_s'][0]:.1f}s, "
              f"wall {f[key]['wall_s'][0]:.1f}s")  # fmt: skip
    if "quality" in result:
        q = result["quality"]
        print(f"quality (ours, packed, {q['steps']} steps, lr {args.quality_lr:g}, {q['conversations']} "
              f"conversations, {q['train_seconds']:.0f}s): exact match on {q['held_out']} held-out prompts "
              f"{q['before']:.0%} before -> {q['after']:.0%} after")  # fmt: skip


if __name__ == "__main__":
    main()
