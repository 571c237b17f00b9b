"""The train-bench section: benchmarks/bench_train.py --gpt2, GPT-2 124M tokens/s, MFU and peak
memory at batch 12 and at the best batch that fits."""

from typing import Any

from gpucheck.base import REPO, Context, Step, StepRun
from gpucheck.outputs import gib, last_json, pct


def train_bench_steps(ctx: Context, left: float) -> list[Step]:
    script = str(REPO / "benchmarks" / "bench_train.py")
    if ctx.tiny:
        argv = [
            ctx.python,
            script,
            "--device",
            ctx.device,
            *"--steps 2 --warmup 1 --sweep 16 --sweep-steps 1".split(),
        ]
    else:
        # no new batch size starts later than ~50 s before the deadline (a compile plus 25 steps)
        argv = [ctx.python, script, "--device", ctx.device, "--gpt2", "--sweep", "16,24,32"]
        argv += ["--sweep-budget", f"{max(left - 50, 1):.0f}"]

    def check(run: StepRun) -> dict[str, Any]:
        out = last_json(run.output)
        step, best = out["step"], out.get("best")
        return {
            "shape": out["shape"],
            "precision": out["precision"],
            "batch": out["batch"],
            "ours_ms": step["ours_ms"],
            "hf_ms": step["hf_ms"],
            "ratio_vs_hf": step["ratio"],
            "tokens_per_s": step["ours_tokens_per_s"],
            "mfu": step["mfu"],
            "peak_memory_gib": gib(step["peak_memory_bytes"]),
            "sweep": out.get("sweep", []),
            "best_batch": best and best["batch"],
            "best_tokens_per_s": best and best["ours_tokens_per_s"],
            "best_mfu": best and best["mfu"],
            "best_peak_memory_gib": best and gib(best["peak_memory_bytes"]),
        }

    return [Step("bench_train.py" + (" --gpt2" if not ctx.tiny else ""), argv + ["--json"], check)]


def train_bench_summary(f: dict[str, Any]) -> str:
    if "tokens_per_s" not in f:
        return ""
    text = f"batch {f['batch']}: {f['tokens_per_s']:,.0f} tok/s, MFU {pct(f['mfu'])}, {f['ratio_vs_hf']:.2f}x HF's step time"
    if f.get("best_batch") is not None:
        text += (
            f"; best batch {f['best_batch']}: {f['best_tokens_per_s']:,.0f} tok/s, MFU {pct(f['best_mfu'])}"
        )
    return text
