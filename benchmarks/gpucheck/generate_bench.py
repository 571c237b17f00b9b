"""The generate-bench section: benchmarks/bench_generate.py --batches 1,8,64, decode tok/s eager,
compiled and HF's."""

from typing import Any

from gpucheck.base import REPO, CheckFailed, Context, Step, StepRun
from gpucheck.outputs import last_json


def generate_bench_steps(ctx: Context, left: float) -> list[Step]:
    script = str(REPO / "benchmarks" / "bench_generate.py")
    argv = [ctx.python, script, "--device", ctx.device]
    if ctx.tiny:
        argv += ["--small", "--precisions", "fp32", "--batches", "1", "--new-tokens", "4", "--repeats", "1"]
    else:
        argv += ["--batches", "1,8,64"]

    def check(run: StepRun) -> dict[str, Any]:
        out = last_json(run.output)
        if not out.get("results"):
            raise CheckFailed("bench_generate.py printed no result rows")
        return {
            "shape": out["shape"],
            "read_bandwidth_gb_s": out["read_bandwidth"] / 1e9,
            "bounds": out["bounds"],
            "results": out["results"],
        }

    return [Step("bench_generate.py " + " ".join(argv[3:]), argv + ["--json"], check)]


def generate_row(f: dict[str, Any], precision: str, batch: int) -> dict[str, Any] | None:
    return next(
        (r for r in f.get("results", []) if r["precision"] == precision and r["batch"] == batch), None
    )


def generate_bench_summary(f: dict[str, Any]) -> str:
    rows = f.get("results", [])
    return "; ".join(
        f"{r['precision']} b{r['batch']}: {r['compiled_tok_s']:,.0f} tok/s compiled ({r['compiled_vs_hf']:.2f}x HF)"
        for r in rows
    )
