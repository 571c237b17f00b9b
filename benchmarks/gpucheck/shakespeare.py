"""The shakespeare section: the shakespeare-char preset with --target-loss and --compile, and how many
seconds it takes to reach val <= TARGET_LOSS."""

from typing import Any

from gpucheck.base import REPO, SHAKESPEARE, SONNETS, Context, Step, StepRun
from gpucheck.outputs import read_metrics, run_figures, stop_reason

TARGET_LOSS = 1.47


def shakespeare_steps(ctx: Context, left: float) -> list[Step]:
    run = ctx.work / "shakespeare"
    data = SONNETS if ctx.tiny else SHAKESPEARE
    if not data.is_file():
        message = f"error: {data.relative_to(REPO)} is missing: run `make data` and copy it along"
        return [Step("corpus", [ctx.python, "-c", f"import sys; sys.exit({message!r})"])]
    argv = ctx.gpt("train", "--config", "shakespeare-char", "--data", str(data), "--tokenizer", "char",
                   "--device", ctx.device, "--target-loss", str(TARGET_LOSS), "--out", str(run), "--compile")  # fmt: skip
    if ctx.tiny:
        argv += "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --max-iters 4".split()
        argv += "--eval-interval 2 --eval-iters 1 --sample-tokens 0".split()
    else:  # ends in time (final eval and checkpoint included) whether or not it reaches the target
        argv += ["--max-time", f"{max(left - 20, 10):.0f}s"]

    def check(run_: StepRun) -> dict[str, Any]:
        figures = run_figures(run)
        evals = [r for r in read_metrics(run) if r.get("kind") == "eval" and r.get("val_loss") is not None]
        first = next((r for r in evals if r["val_loss"] <= TARGET_LOSS), None)
        return {
            **figures,
            "target_loss": TARGET_LOSS,
            "reached": first is not None,
            "step_at_target": first and first["step"],
            "seconds_to_target": first and first["elapsed"],  # since the command started (metrics.jsonl)
            "stop_reason": stop_reason(run_.output),
            "wall_s": run_.seconds,
        }

    return [Step("gpt train --config shakespeare-char", argv, check)]


def shakespeare_summary(f: dict[str, Any]) -> str:
    if "steps" not in f:
        return ""
    reached = (
        f"val <= {f['target_loss']} at step {f['step_at_target']}, {f['seconds_to_target']:.1f} s"
        if f["reached"]
        else f"val {f['target_loss']} not reached"
    )
    return f"{reached}; {f['steps']} steps, final val {f['val_loss']:.4f}, {f['wall_s']:.1f} s wall"
