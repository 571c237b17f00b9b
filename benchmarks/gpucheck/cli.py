"""The cli section: `gpt train`, then `gpt train --resume`, then `gpt generate --compile --json` on
the device, each output checked (the steps reached, the checkpoints written, the tokens asked for)."""

from typing import Any

from gpucheck.base import SONNETS, CheckFailed, Context, Step, StepRun
from gpucheck.outputs import checkpoint_dir, last_json, run_figures

CLI_ITERS, CLI_RESUME_ITERS, CLI_NEW_TOKENS = 60, 90, 50  # on the GPU; --tiny: 6, 9, 10


def cli_steps(ctx: Context, left: float) -> list[Step]:
    run = ctx.work / "cli-run"
    if ctx.tiny:
        iters, resume_iters, tokens = 6, 9, 10
        shape = "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4".split()
        evals = "--eval-interval 3 --eval-iters 1 --log-interval 1 --sample-tokens 8".split()
    else:
        iters, resume_iters, tokens = CLI_ITERS, CLI_RESUME_ITERS, CLI_NEW_TOKENS
        shape = "--n-layer 2 --n-head 4 --n-embd 128 --block-size 128 --batch-size 16".split()
        evals = "--eval-interval 30 --eval-iters 5 --log-interval 10 --sample-tokens 40".split()

    def trained(run_: StepRun) -> dict[str, Any]:
        figures = run_figures(run, expect_step=iters)
        for step in range(iters // 2, iters + 1, iters // 2):
            if not checkpoint_dir(run, step).is_dir():
                raise CheckFailed(f"no checkpoint {checkpoint_dir(run, step)}")
        return {f"train_{k}": v for k, v in figures.items()}

    def resumed(run_: StepRun) -> dict[str, Any]:
        if "resumed from" not in run_.output:
            raise CheckFailed("no 'resumed from ...' line: the run did not resume")
        figures = run_figures(run, expect_step=resume_iters)
        if not checkpoint_dir(run, resume_iters).is_dir():
            raise CheckFailed(f"no checkpoint {checkpoint_dir(run, resume_iters)}")
        return {f"resume_{k}": v for k, v in figures.items()}

    def generated(run_: StepRun) -> dict[str, Any]:
        out = last_json(run_.output)
        sample = out["samples"][0]
        if out["new_tokens"] != tokens or sample["tokens"] != tokens or len(sample["ids"]) != tokens:
            raise CheckFailed(
                f"asked for {tokens} tokens, got new_tokens={out['new_tokens']}, sample {sample}"
            )
        if not out["checkpoint"].endswith(checkpoint_dir(run, resume_iters).name):
            raise CheckFailed(f"generated from {out['checkpoint']}, not the resumed run's last checkpoint")
        return {
            "generate_tokens": sample["tokens"],
            "generate_seconds": out["seconds"],  # the first call: compilation included
            "generate_tokens_per_s": out["tokens_per_second"],
        }

    device = ["--device", ctx.device]
    train = ctx.gpt("train", "--tokenizer", "char", "--data", str(SONNETS), *device, "--max-iters", str(iters),
                    *shape, *evals, "--out", str(run))  # fmt: skip
    resume = ctx.gpt("train", "--resume", str(run), "--max-iters", str(resume_iters))
    generate = ctx.gpt("generate", "--checkpoint", str(run), *device, "--compile", "--max-new-tokens", str(tokens),
                       "--json", "--ignore-eos", "--seed", "0", "--prompt", "ROMEO:", "--quiet")  # fmt: skip
    return [
        Step(f"gpt train ({iters} steps)", train, trained),
        Step(f"gpt train --resume (to {resume_iters})", resume, resumed),
        Step(f"gpt generate --compile ({tokens} tokens)", generate, generated),
    ]


def cli_summary(f: dict[str, Any]) -> str:
    if "generate_tokens" not in f:
        return ""
    return (
        f"train {f['train_steps']} steps (val {f['train_val_loss']:.3f}), resumed to {f['resume_steps']} "
        f"(val {f['resume_val_loss']:.3f}), generated {f['generate_tokens']} tokens"
    )
