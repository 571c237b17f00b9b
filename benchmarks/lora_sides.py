"""The sides of bench_lora.py, each run in a process of its own (`lora_sides.py ours|peft JOB.json`).

- ours: `gpt finetune` as bench_finetune runs it (finetune_sides.run_ours: the library's train()),
  a full fine-tune or, with job["lora"], `--lora` (r, alpha, dropout, targets c_attn).
- peft: HF's GPT2LMHeadModel from the same folder with peft.get_peft_model (the same r, alpha,
  dropout, c_attn with fan_in_fan_out, the added tokens' rows trainable), trained by a plain loop on
  the same conversations: AdamW at the same lr, grad clip 1.0, the same loss (cross-entropy over the
  assistant tokens of input ids[:-1] against ids[1:]), so the step is PEFT's, not a trainer's.

Each prints one JSON line as finetune_sides does: the end time (wall, CPU) of every step, its
trained tokens, the batch's shape, this process's peak RSS (VmHWM) and versions.
"""

import json
import random
import sys
import time
from pathlib import Path

from finetune_sides import CHATML_GENERATION_JINJA, run_job, run_ours

LORA = dict(r=8, alpha=16.0, dropout=0.05)  # gptcli's LoraConfig defaults (and targets ["attn"])


def run_ours_lora(job: dict) -> dict:
    """finetune_sides.run_ours with its TrainConfig given job["lora"] (None: a full fine-tune)."""
    from gptcli.config import LoraConfig, TrainConfig
    from gptcli.training import chat_data, trainer

    shapes: list[list[int]] = []
    next_step = chat_data.RowSampler.next_step

    def recording_next_step(self, *args, **kwargs):  # run_ours wraps this one to count trained tokens
        batches = next_step(self, *args, **kwargs)
        shapes.append(list(batches[0][0].shape))
        return batches

    chat_data.RowSampler.next_step = recording_next_step
    train = trainer.train

    def train_with_lora(config, *args, **kwargs):
        if job["lora"] is not None:
            lora = LoraConfig(**job["lora"])
            config = TrainConfig.model_validate(
                {**config.model_dump(exclude_unset=True), "lora": lora.model_dump()}
            )
        return train(config, *args, **kwargs)

    trainer.train = train_with_lora
    return {**run_ours(job), "shapes": shapes}


def run_peft(job: dict) -> dict:
    import peft
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(job["hf"])
    base_vocab = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model = transformers.GPT2LMHeadModel.from_pretrained(job["hf"], dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))  # new rows at the mean of the old, as ours
    config = peft.LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=["c_attn"],
        fan_in_fan_out=True,  # GPT-2's Conv1D holds its weight (in, out)
        trainable_token_indices={"wte": list(range(base_vocab, len(tokenizer)))},  # ours trains them too
    )
    model = peft.get_peft_model(model, config)
    model.train()

    rows = []  # (ids[:-1], ids[1:] with the untrained positions at -100) per conversation
    for line in Path(job["data"]).read_text().splitlines():
        rendered = tokenizer.apply_chat_template(
            json.loads(line)["messages"], chat_template=CHATML_GENERATION_JINJA, tokenize=True,
            return_dict=True, return_assistant_tokens_mask=True,
        )  # fmt: skip
        ids, mask = rendered["input_ids"], rendered["assistant_masks"]
        rows.append((ids[:-1], [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]))
    random.Random(job["seed"]).shuffle(rows)

    trained_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained_params, lr=job["lr"], weight_decay=0.0)
    ends: list[float] = []
    cpu: list[float] = []
    trained: list[int] = []
    shapes: list[list[int]] = []
    start = time.perf_counter()
    B = job["batch"]
    for step in range(job["steps"]):
        batch = [rows[(step * B + i) % len(rows)] for i in range(B)]
        width = max(len(x) for x, _ in batch)  # every row is the same length here (bench_lora's data)
        x = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in batch])
        y = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in batch])
        logits = model(input_ids=x).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained_params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
        trained.append(int((y != -100).sum()))
        shapes.append(list(x.shape))
    return {"start": start, "ends": ends, "cpu": cpu, "trained": trained, "shapes": shapes,
            "wall": time.perf_counter() - start, "trainable": sum(p.numel() for p in trained_params)}  # fmt: skip


def main(side: str, job_path: str) -> None:
    run_job(side, job_path, {"ours": run_ours_lora, "peft": run_peft}, {"peft": ("transformers", "peft")})


if __name__ == "__main__":
    main(*sys.argv[1:3])
