"""The two sides of bench_finetune.py, each run in a process of its own (`bench_finetune.py --side
ours|trl JOB.json`), and what both share: the generated conversations and the ChatML template.

Each side trains `steps` optimizer steps and records, at the end of every step, the time (wall and
this process's CPU time) and the
number of trained targets (assistant tokens whose loss counts) that the step's batch held; it
prints one JSON line: those lists, its own peak RSS (VmHWM) and the versions it ran with.
"""

import json
import random
import sys
import time
from pathlib import Path

# ChatML as gptcli.chat.template.CHATML_JINJA writes it, the same text, with TRL's `{% generation %}`
# markers around what our mask trains: each assistant message's content and its <|im_end|>.
CHATML_GENERATION_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORDS = (
    "apple river stone cloud tiger lamp green seven honey paper window silver ocean mirror candle forest "
    "pepper rocket violet winter castle garden marble orange pencil rabbit saddle thunder velvet yellow"
).split()
TASKS = {  # instruction -> the answer's words
    "Repeat the words": lambda w: w,
    "Reverse the words": lambda w: w[::-1],
    "Sort the words": sorted,
    "Say the first and last word": lambda w: [w[0], w[-1]],
}


def exchange(rng: random.Random, min_words: int, max_words: int) -> tuple[str, str]:
    task = rng.choice(list(TASKS))
    words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
    return f"{task}: {' '.join(words)}", " ".join(TASKS[task](words))


def conversations(
    n: int, seed: int, max_words: int, max_turns: int = 1, min_words: int = 1
) -> list[list[dict]]:
    """n deterministic conversations of 1..max_turns exchanges, each an instruction over
    min_words..max_words words and its exact answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, max_turns)):
            prompt, answer = exchange(rng, min_words, max_words)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        out.append(messages)
    return out


def peak_rss_bytes() -> int:
    """This process's own RSS high-water mark (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_ours(job: dict) -> dict:
    """`gpt finetune` as the library runs it: train(TrainConfig(init_from=BASE, chat=...))."""
    import torch

    from gptcli.config import TrainConfig
    from gptcli.training import chat_data
    from gptcli.training.trainer import train

    torch.set_num_threads(job["threads"])
    trained: list[int] = []  # each step's trained targets, counted as the sampler hands them out
    next_step = chat_data.RowSampler.next_step

    def counting_next_step(self, *args, **kwargs):
        batches = next_step(self, *args, **kwargs)
        trained.append(sum(int((y >= 0).sum()) for _, y, _ in batches))
        return batches

    chat_data.RowSampler.next_step = counting_next_step
    ends: list[float] = []

    cpu: list[float] = []

    def report(event, data):
        if event == "step":
            ends.append(time.perf_counter())
            cpu.append(time.process_time())

    config = TrainConfig(
        data=[job["data"]],
        init_from=job["base"],
        chat={"pack": job["pack"], "epochs": None},
        max_iters=job["steps"],
        batch_size=job["batch"],
        lr=job["lr"],
        min_lr=job["lr"],
        warmup_iters=0,
        weight_decay=0.0,
        val_fraction=0.0,
        eval_interval=job["steps"],
        eval_iters=1,
        sample_tokens=0,
        log_interval=1,
        device="cpu",
        precision="fp32",
        seed=job["seed"],
    )
    start = time.perf_counter()
    train(config, job["out"], report=report)
    return {"start": start, "ends": ends, "cpu": cpu, "trained": trained, "wall": time.perf_counter() - start}


def run_trl(job: dict) -> dict:
    """TRL's SFTTrainer on the same model (the HF folder our base was imported from), conversations,
    template, batch, steps and learning rate: assistant_only_loss, no eval, no saving, fp32 on CPU."""
    import torch
    import transformers
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(job["threads"])
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(job["hf"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_GENERATION_JINJA
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"  # ours pads with it too (masked out on both sides)
    model = transformers.GPT2LMHeadModel.from_pretrained(job["hf"], dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))  # new rows at the mean of the old, as ours
    dataset = load_dataset("json", data_files=job["data"], split="train")
    args = SFTConfig(
        output_dir=job["out"],
        per_device_train_batch_size=job["batch"],
        gradient_accumulation_steps=1,
        max_steps=job["steps"],
        learning_rate=job["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=job["block"],  # every conversation fits (bench_finetune.prepare keeps those that do)
        packing=job["pack"],
        assistant_only_loss=True,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=job["seed"],
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trained: list[int] = []
    pending = [0]
    compute_loss = trainer.compute_loss

    def counting_compute_loss(model, inputs, *args, **kwargs):  # the batch the step trains on
        pending[0] += int((inputs["labels"][:, 1:] != -100).sum())  # HF shifts the labels by one
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = counting_compute_loss
    ends: list[float] = []
    cpu: list[float] = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            cpu.append(time.process_time())
            trained.append(pending[0])
            pending[0] = 0

    trainer.add_callback(StepTimes())
    start = time.perf_counter()
    trainer.train()
    return {"start": start, "ends": ends, "cpu": cpu, "trained": trained, "wall": time.perf_counter() - start}


def run_job(side: str, job_path: str, runners: dict, libraries: dict[str, tuple[str, ...]]) -> None:
    """Run `side` (runners[side]) on the job file and print its result as one JSON line: its timings,
    set-up time, peak memory and the versions of torch and of the side's own libraries."""
    import importlib

    job = json.loads(Path(job_path).read_text())
    t0 = time.perf_counter()
    result = runners[side](job)
    import torch

    versions = {"torch": torch.__version__}
    versions.update({name: importlib.import_module(name).__version__ for name in libraries.get(side, ())})
    result.update(side=side, setup=result["start"] - t0, peak_rss=peak_rss_bytes(), versions=versions)
    print(json.dumps(result))


def main(side: str, job_path: str) -> None:
    run_job(side, job_path, {"ours": run_ours, "trl": run_trl}, {"trl": ("transformers", "trl")})


if __name__ == "__main__":
    main(*sys.argv[1:3])
