"""Training: `gptcli.training.trainer.train(TrainConfig)` is what `gpt train` runs.

trainer.py       train() and the Trainer: set-up, train_step, logging, eval + save, the stop decision
run_setup.py     the run's set-up: data, model (fresh, --init-from, resumed), run directory, eval shape
time_budget.py   --max-time for the whole command: when to stop so that the final eval and save fit
inputs.py        the everyday defaults, the tokenizer, the model's shape (fresh, --init-from, --resume)
train_state.py   RunState and what a checkpoint holds for an exact resume (optimizer, RNG states)
checkpointer.py  when a step saves, writing the checkpoint, what a failed save says
validator.py     eval losses on fixed batches, the sample printed at each eval
optimizer.py     AdamW, or Muon for the hidden matrices + AdamW for the rest, stepped as one optimizer
schedule.py      the learning rate at each step: warmup, then cosine or warmup-stable-decay
run_dir.py       the run directory's files: one run at a time (a lock), refusing to mix runs, clearing,
                 pruning, reading config.json
metrics.py       metrics.jsonl records (written here, read by gpt plot)
tensorboard.py   the same records as TensorBoard events (optional extra)
distributed.py   torchrun: process group, DDP/FSDP2 wrapping, gradient sync, gathering for checkpoints
interrupt.py     Ctrl-C, SIGTERM, SIGUSR1: finish the step, save, say how to continue
"""
