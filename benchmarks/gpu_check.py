"""`make gpu-check`: one command that proves the GPU path on one machine and writes one report.

    python3 benchmarks/gpu_check.py --out gpu-report                # every section, on cuda
    python3 benchmarks/gpu_check.py --sections env,cli --out r      # some of them
    python3 benchmarks/gpu_check.py --device cpu --tiny --out r     # the plumbing on CPU, tiny models
    python3 benchmarks/gpu_check.py --dry-run                       # print the commands, run nothing

The sections, always in this order; each runs as subprocesses with a deadline, and the next one
starts whatever the last one did:

    env             torch, CUDA, the GPU, bf16 support, free memory, package versions
    tests           python -m pytest tests/gpu: flash == explicit attention, bf16 and fp16 (GradScaler)
                    training steps, --compile training, KV cache == recomputation, CUDA-graph decode ==
                    eager decode, in fp32 and bf16
    cli             gpt train -> gpt train --resume -> gpt generate --compile --json, on the device
    train-bench     benchmarks/bench_train.py --gpt2: GPT-2 124M tokens/s, MFU and peak memory at batch
                    12 and at the best batch that fits
    generate-bench  benchmarks/bench_generate.py --batches 1,8,64: tok/s eager, compiled and HF
    shakespeare     gpt train --config shakespeare-char --target-loss 1.47 --compile: seconds to val <= 1.47

Deadlines: section i must end by the start + the sum of the budgets of the chosen sections 1..i
(each a share of --budget, 480 s for all six by default; guesses, not yet measured on a GPU), so
time a section leaves unused passes to the next ones and a stuck one cannot eat theirs. A step
past its deadline gets SIGTERM, then SIGKILL.

Writes, after every section: OUT/report.json (everything), OUT/report.md (tables, the targets
beside the figures, the last lines of each failure) and OUT/logs/SECTION.log (each command's whole
output). Exit code 0 when no section failed, 1 otherwise; a missed target is reported, not a
failure. The script itself needs only the standard library, and runs the tool as `python -m
gptcli` with the repository on PYTHONPATH: the package need not be installed.

--tiny (with --device cpu) runs every section's real commands on tiny models, in seconds: the
plumbing and the report, not the figures. torch.compile still traces the graphs (dynamo) but runs
them with its eager backend (TORCH_COMPILE_OVERRIDE_BACKENDS), as C++ code generation would take
minutes on a small CPU. --fail-section NAME (for the tests) puts a command that exits 1 in front of
that section's steps.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SONNETS = REPO / "toy_data" / "sonnets.txt"
SHAKESPEARE = REPO / "toy_data" / "shakespeare.txt"
TAIL_LINES = 40
KILL_GRACE_S = 15  # after SIGTERM (a training run saves its step), before SIGKILL
DEFAULT_BUDGET_S = 480.0
TARGET_LOSS = 1.47
CLI_ITERS, CLI_RESUME_ITERS, CLI_NEW_TOKENS = 60, 90, 50  # on the GPU; --tiny: 6, 9, 10


class CheckFailed(Exception):
    """A step ran but its output is wrong: the section fails with this message."""


class SectionSkipped(Exception):
    """The section does not apply here (CPU only: e.g. the CUDA tests skip themselves)."""


@dataclass
class Context:
    device: str
    tiny: bool
    work: Path
    python: str = sys.executable

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def gpt(self, *args: str) -> list[str]:
        return [self.python, "-m", "gptcli", *args]


@dataclass
class StepRun:
    """What a step's check gets: the command's whole output (stdout and stderr) and its wall time."""

    output: str
    seconds: float


@dataclass
class Step:
    label: str
    argv: list[str]
    check: Callable[[StepRun], dict[str, Any]] = lambda run: {}
    exit_codes: tuple[int, ...] = (0,)  # the exit codes that pass on to `check`


@dataclass
class Section:
    name: str
    title: str
    budget: float  # seconds, before scaling to --budget
    steps: Callable[[Context, float], list[Step]]  # (context, seconds left to the deadline)
    summary: Callable[[dict[str, Any]], str] = lambda figures: ""


@dataclass
class Timer:
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# ---------------------------------------------------------------------------------------------
# output parsing


def last_json(output: str) -> dict[str, Any]:
    """The last line of the output that is a JSON object (what `--json` prints last)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise CheckFailed("no JSON object in the output")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (a last line cut short is skipped), or a CheckFailed."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckFailed(f"{path} was not written")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_figures(run_dir: Path, expect_step: int | None = None) -> dict[str, Any]:
    """A training run's figures from its metrics.jsonl: steps, losses, speed, MFU."""
    records = read_metrics(run_dir)
    logs = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not logs or not evals:
        raise CheckFailed(f"{run_dir}/metrics.jsonl has no log or no eval record")
    step = max(r["step"] for r in logs)
    if expect_step is not None and step != expect_step:
        raise CheckFailed(f"the run stopped at step {step}, not {expect_step}")
    vals = [r["val_loss"] for r in evals if r.get("val_loss") is not None]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise CheckFailed(f"val losses missing or not finite: {vals}")
    rates = sorted(r["tokens_per_sec"] for r in logs[1:] if "tokens_per_sec" in r)  # the first: compile
    mfus = [r["mfu"] for r in logs if r.get("mfu") is not None]
    return {
        "steps": step,
        "val_loss": vals[-1],
        "best_val_loss": min(vals),
        "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "mfu_last": mfus[-1] if mfus else None,
    }


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}"


def stop_reason(output: str) -> str | None:
    """The summary line's reason: 'target_loss', 'max_time', ...; None for max_iters."""
    for line in reversed(output.splitlines()):
        if line.startswith("done"):
            for reason, words in (
                ("target_loss", "--target-loss"),
                ("max_time", "--max-time"),
                ("early_stop", "--early-stop"),
            ):
                if words in line.split(":")[0]:
                    return reason
            return "max_iters"
    return None


# ---------------------------------------------------------------------------------------------
# the sections

ENV_SCRIPT = r"""
import importlib, json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "packages": {}}
for name in ("triton", "transformers", "pydantic", "pydantic_core", "typer", "rich", "tiktoken", "safetensors",
             "numpy", "pytest", "hypothesis"):
    try:
        info["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:
        info["packages"][name] = None
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    major, minor = torch.cuda.get_device_capability()
    info.update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(), capability=f"{major}.{minor}",
                bf16=torch.cuda.is_bf16_supported(), free_gib=round(free / 2**30, 1), total_gib=round(total / 2**30, 1),
                driver=getattr(torch._C, "_cuda_getDriverVersion", lambda: None)())
try:  # needs pydantic: the check names it if it is missing
    from gptcli.runtime import peak_flops
    peak = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else None
    info["peak_bf16_tflops"] = peak and peak / 1e12  # what MFU is measured against (None: not a known GPU)
except Exception as e:
    info["gptcli_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
"""


def env_steps(ctx: Context, left: float) -> list[Step]:
    def check(run: StepRun) -> dict[str, Any]:
        info = last_json(run.output)
        missing = [name for name, version in info["packages"].items() if version is None]
        info["missing_packages"] = missing
        if "pydantic" in missing:
            raise CheckFailed(
                "pydantic is missing: make gpu-wheels where there is a package index, copy .whl/"
            )
        if "gptcli_error" in info:
            raise CheckFailed(f"import gptcli failed: {info['gptcli_error']}")
        if ctx.cuda and not info["cuda_available"]:
            raise CheckFailed(f"--device {ctx.device}: torch sees no CUDA GPU (torch {info['torch']})")
        if ctx.cuda and not info.get("bf16"):
            raise CheckFailed(f"{info.get('gpu')}: no bf16 support")
        return info

    return [Step("torch and the GPU", [ctx.python, "-c", ENV_SCRIPT], check)]


def env_summary(f: dict[str, Any]) -> str:
    if not f:
        return ""
    gpu = (
        f"{f['gpu']} x{f['gpus']}, sm {f['capability']}, {f['free_gib']}/{f['total_gib']} GiB free"
        if f.get("gpu")
        else "no GPU"
    )
    return f"torch {f['torch']} (CUDA {f['cuda_build']}), {gpu}, bf16 {f.get('bf16', False)}"


def tests_steps(ctx: Context, left: float) -> list[Step]:
    def check(run: StepRun) -> dict[str, Any]:
        counts = pytest_counts(run.output)
        if counts["passed"] == 0:
            if ctx.cuda:
                raise CheckFailed(f"no CUDA test ran on --device {ctx.device}: {counts}")
            skipped = [line for line in run.output.splitlines() if line.startswith("SKIPPED")]
            raise SectionSkipped(skipped[0] if skipped else f"no test ran: {counts}")
        return counts

    # pyproject's addopts has -q already: -qq would drop the summary line that says what ran
    argv = [ctx.python, "-m", "pytest", "tests/gpu", *"-o addopts= -q -rfEs -p no:cacheprovider".split()]
    argv += ["-W", "ignore::DeprecationWarning"]
    return [Step("pytest tests/gpu", argv, check, exit_codes=(0, 5))]  # 5: nothing collected


PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s")


def pytest_counts(output: str) -> dict[str, int]:
    """'3 passed, 1 skipped in 4.2s' (pytest's summary line) -> {'passed': 3, 'skipped': 1, ...}."""
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors"), 0)
    for line in reversed(output.splitlines()):
        if match := PYTEST_SUMMARY.match(line.strip()):
            for part in match.group(1).split(", "):
                number, word = part.split(" ")
                word = "errors" if word.startswith("error") else word
                if word in counts:
                    counts[word] = int(number)
            break
    return counts


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


def gib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**30


def train_bench_summary(f: dict[str, Any]) -> str:
    if "tokens_per_s" not in f:
        return ""
    text = f"batch {f['batch']}: {f['tokens_per_s']:,.0f} tok/s, MFU {pct(f['mfu'])}, {f['ratio_vs_hf']:.2f}x HF's step time"
    if f.get("best_batch") is not None:
        text += (
            f"; best batch {f['best_batch']}: {f['best_tokens_per_s']:,.0f} tok/s, MFU {pct(f['best_mfu'])}"
        )
    return text


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


# budgets: guesses for one H100/H200 (not yet measured), mostly torch.compile's compilations
SECTIONS = [
    Section("env", "environment", 15, env_steps, env_summary),
    Section("tests", "CUDA correctness tests (tests/gpu)", 85, tests_steps, lambda f: ", ".join(f"{v} {k}" for k, v in f.items() if v)),
    Section("cli", "CLI end to end: train, resume, generate --compile", 55, cli_steps, cli_summary),
    Section("train-bench", "training speed, GPT-2 124M (bench_train.py --gpt2)", 115, train_bench_steps, train_bench_summary),
    Section("generate-bench", "generation speed (bench_generate.py)", 110, generate_bench_steps, generate_bench_summary),
    Section("shakespeare", f"shakespeare-char preset to val <= {TARGET_LOSS}", 100, shakespeare_steps, shakespeare_summary),
]  # fmt: skip
SECTION_NAMES = [s.name for s in SECTIONS]


# ---------------------------------------------------------------------------------------------
# targets: reported beside the figures, never a failure


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def targets(sections: dict[str, dict[str, Any]], tiny: bool) -> list[dict[str, Any]]:
    """One row per target whose section ran: what, target, measured (text), met (True/False/None)."""
    rows: list[dict[str, Any]] = []

    def add(section: str, what: str, target: str, value: Any, measured: str, met: bool | None):
        """met: None where nothing was measured, and always with --tiny (not the shapes the targets are for)."""
        rows.append(dict(section=section, what=what, target=target, value=value, measured=measured,
                         met=None if tiny else met))  # fmt: skip

    f = sections.get("train-bench", {}).get("figures")  # {} when the section failed: no row
    if f:
        mfu, best = f.get("mfu"), f.get("best_mfu")
        add("train-bench", f"124M MFU, batch {f['batch']}", ">= 50%", mfu, pct(mfu), at_least(mfu, 0.50))
        add(
            "train-bench",
            f"124M MFU, best batch ({f['best_batch']})",
            ">= 55%",
            best,
            pct(best),
            at_least(best, 0.55),
        )
        ratio = f["ratio_vs_hf"]
        add("train-bench", f"step time, ours / HF GPT2LMHeadModel, batch {f['batch']}", "<= 0.75x (the CPU target)",
            ratio, f"{ratio:.2f}x", ratio <= 0.75)  # fmt: skip
    f = sections.get("generate-bench", {}).get("figures")
    if f:
        for batch, floor in ((1, 3000), (64, 50000)):
            row = generate_row(f, "bf16", batch)
            best = row and max(row["eager_tok_s"], row["compiled_tok_s"])
            add("generate-bench", f"decode tok/s, bf16, batch {batch} (best of eager, compiled)", f">= {floor:,}",
                best, "n/a" if best is None else f"{best:,.0f}", at_least(best, floor))  # fmt: skip
        for row in f.get("results", []):
            ratio = row["compiled_vs_hf"]
            add("generate-bench", f"compiled / HF generate, {row['precision']} batch {row['batch']}", ">= 1x",
                ratio, f"{ratio:.2f}x (eager {row['eager_vs_hf']:.2f}x)", ratio >= 1.0)  # fmt: skip
    f = sections.get("shakespeare", {}).get("figures")
    if f:
        seconds = f["seconds_to_target"]
        measured = (
            f"{seconds:.1f} s"
            if f["reached"]
            else f"not reached in {f['steps']} steps (best val {f['best_val_loss']:.4f})"
        )
        add("shakespeare", f"shakespeare-char, seconds to val <= {TARGET_LOSS}", "<= 25 s", seconds, measured,
            f["reached"] and seconds <= 25)  # fmt: skip
    return rows


def at_least(value: float | None, floor: float) -> bool | None:
    return None if value is None else value >= floor


# ---------------------------------------------------------------------------------------------
# running


def run_step(
    argv: list[str], timeout: float, log: Path, env: dict[str, str]
) -> tuple[int | None, StepRun, bool]:
    """Run one command (its own process group) with its output appended to `log`; past `timeout`
    SIGTERM then SIGKILL. -> (exit code, output and seconds, timed out)."""
    with log.open("a", encoding="utf-8") as f:
        f.write(f"\n$ {shlex.join(argv)}\n")
        f.flush()
        offset = f.tell()
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            stop_group(proc)
        except BaseException:  # Ctrl-C: take the step down with us
            stop_group(proc)
            raise
        seconds = time.monotonic() - started
    with log.open("r", encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        output = f.read()
    return proc.returncode, StepRun(output, seconds), timed_out


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (it and its compile workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def shown(argv: list[str]) -> str:
    """A command as a shell line, an inline script (python -c) shortened to its first line."""
    return shlex.join(f"{a.strip().splitlines()[0]} ..." if "\n" in a else a for a in argv)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_section(
    section: Section, ctx: Context, deadline: float, out: Path, env, fail: bool, clock: Timer
) -> dict:
    """Every step of one section, in order, up to the first that fails; the section's record."""
    log = out / "logs" / f"{section.name}.log"
    log.write_text(f"# {section.name}: {section.title}\n", encoding="utf-8")
    left = deadline - time.monotonic()
    try:
        steps = section.steps(ctx, left)
    except Exception as e:  # a bug here must not cost the other sections
        steps = [Step("build the commands", [ctx.python, "-c", f"import sys; sys.exit({repr(repr(e))})"])]
    if fail:
        simulated = "import sys; print('gpu_check --fail-section: a simulated failure'); sys.exit(1)"
        steps.insert(0, Step("simulated failure (--fail-section)", [ctx.python, "-c", simulated]))
    record: dict[str, Any] = dict(name=section.name, title=section.title, status="pass", seconds=0.0,
                                  time_left_s=round(left, 1), figures={}, steps=[], note=None, tail=None,
                                  log=str(log.relative_to(out)))  # fmt: skip
    started = time.monotonic()
    for step in steps:
        left = deadline - time.monotonic()
        if left < 1:
            record.update(status="fail", note=f"out of time before '{step.label}'")
            break
        progress(clock, f"{section.name}: {step.label} ({left:.0f} s left)")
        code, run, timed_out = run_step(step.argv, left, log, env)
        record["steps"].append(dict(label=step.label, command=shown(step.argv), exit_code=code,
                                    seconds=round(run.seconds, 2), timed_out=timed_out))  # fmt: skip
        if timed_out:
            record.update(
                status="fail", note=f"'{step.label}' passed the section's deadline ({run.seconds:.0f} s)"
            )
        elif code not in step.exit_codes:
            record.update(status="fail", note=f"'{step.label}' exited with {code}")
        else:
            try:
                record["figures"].update(step.check(run))
                continue
            except SectionSkipped as e:
                record.update(status="skip", note=str(e))
                break
            except (CheckFailed, KeyError, TypeError, ValueError) as e:
                kind = "" if isinstance(e, CheckFailed) else f"unexpected output ({type(e).__name__}): "
                record.update(status="fail", note=f"'{step.label}': {kind}{e}")
        record["tail"] = tail(run.output)
        break
    record["seconds"] = round(time.monotonic() - started, 2)
    return record


def summarize(record: dict[str, Any]) -> str:
    """A section's line in the report: its key figures, or why it did not pass."""
    if record["status"] != "pass":
        return record["note"] or ""
    section = next(s for s in SECTIONS if s.name == record["name"])
    try:
        return section.summary(record["figures"])
    except (KeyError, TypeError, ValueError) as e:
        return f"(figures in report.json; no summary: {type(e).__name__}: {e})"


def progress(clock: Timer, message: str) -> None:
    print(f"[{clock.elapsed():6.1f}s] {message}", flush=True)


def child_env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)])  # after /tmp/site: gptcli is not installed
    env.update(
        PYTHONUNBUFFERED="1",
        GPTCLI_CACHE_DIR=str(ctx.work / "cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        COLUMNS="160",
    )
    if ctx.tiny:
        env.update(TORCH_COMPILE_OVERRIDE_BACKENDS=">=0:eager", OMP_NUM_THREADS="1")
    return env


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# the report


def write_report(report: dict[str, Any], out: Path) -> None:
    """report.json and report.md, each written whole to a temp file and renamed into place."""
    try:
        md = markdown(report)
    except Exception as e:  # a figure of an unexpected shape must not cost the report: report.json has all
        md = f"# GPU check\n\nreport.md could not be drawn ({type(e).__name__}: {e}); see report.json.\n"
    for name, text in (("report.json", json.dumps(report, indent=2) + "\n"), ("report.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    sections = report["sections"]
    failed = [s["name"] for s in sections if s["status"] == "fail"]
    verdict = "FAIL" if failed else ("PASS" if report["finished"] else "RUNNING")
    lines = [
        f"# GPU check: {verdict}",
        "",
        f"- {report['started']} to {report['finished'] or '(still running)'}, {report['seconds']:.0f} s; "
        f"host {report['host']}, commit {report['commit'] or 'unknown'}",
        f"- command: `{report['command']}`",
        f"- device {report['device']}; {env_summary(report['env'])}"
        if report["env"]
        else f"- device {report['device']}",
        f"- exit code {report['exit_code']}: 0 only when no section failed ({', '.join(failed) or 'none did'}); "
        "a missed target is reported here, not a failure",
    ]
    if report["tiny"]:
        lines.append(
            "- **--tiny**: tiny models, torch.compile on its eager backend: this proves the plumbing, "
            "its figures are not measurements of anything"
        )
    lines += [
        "",
        "## Sections",
        "",
        "| section | status | seconds | s left at its start | result |",
        "|---|---|---|---|---|",
    ]
    for s in sections:
        result = summarize(s)
        lines.append(
            f"| {s['name']} | **{s['status']}** | {s['seconds']:.1f} | {s['time_left_s']:.0f} | {cell(result)} |"
        )
    if report["targets"]:
        lines += ["", "## Targets", "", "| what | target | measured | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
            lines.append(f"| {cell(t['what'])} | {cell(t['target'])} | {cell(t['measured'])} | {met} |")
    lines += benchmark_tables(sections)
    for s in sections:
        if s["tail"]:
            lines += [
                "",
                f"## {s['name']}: {s['note']}",
                "",
                f"Last lines (all of it: `{s['log']}`):",
                "",
                "```",
                s["tail"],
                "```",
            ]
    return "\n".join(lines) + "\n"


def shape_text(shape: dict[str, int]) -> str:
    return (
        f"{shape['n_layer']} layers, {shape['n_head']} heads, {shape['n_embd']} wide, "
        f"block {shape['block_size']}, vocab {shape['vocab_size']}"
    )


def benchmark_tables(sections: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    f = next((s["figures"] for s in sections if s["name"] == "train-bench" and s["figures"]), None)
    if f:
        lines += ["", f"## Training, {shape_text(f['shape'])}, {f['precision']}", "",
                  "| batch | ms / step | tokens/s | MFU | peak memory |", "|---|---|---|---|---|"]  # fmt: skip
        rows = [{"batch": f["batch"], "ours_ms": f["ours_ms"], "ours_tokens_per_s": f["tokens_per_s"],
                 "mfu": f["mfu"], "peak": f["peak_memory_gib"]}]  # fmt: skip
        rows += [{**r, "peak": gib(r.get("peak_memory_bytes"))} for r in f["sweep"]]
        for r in rows:
            if "ours_ms" not in r:
                lines.append(
                    f"| {r['batch']} | {'out of memory' if r.get('oom') else r.get('skipped', '?')} | | | |"
                )
                continue
            peak = "n/a" if r["peak"] is None else f"{r['peak']:.2f} GiB"
            lines.append(
                f"| {r['batch']} | {r['ours_ms']:.1f} | {r['ours_tokens_per_s']:,.0f} | {pct(r['mfu'])} | {peak} |"
            )
        lines.append(f"\nBatch {f['batch']} beside HF's GPT2LMHeadModel: {f['ours_ms']:.1f} vs {f['hf_ms']:.1f} ms "
                     f"({f['ratio_vs_hf']:.2f}x); its peak memory was taken with HF's weights still held.")  # fmt: skip
    f = next((s["figures"] for s in sections if s["name"] == "generate-bench" and s["figures"]), None)
    if f:
        lines += ["", f"## Generation, {shape_text(f['shape'])}, read bandwidth {f['read_bandwidth_gb_s']:,.0f} GB/s", "",
                  "| precision | batch | eager tok/s | compiled tok/s | HF tok/s | eager / HF | compiled / HF | of the bandwidth bound |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in f["results"]:
            bound = pct(r.get("bound_fraction")) if "bound_fraction" in r else ""
            lines.append(f"| {r['precision']} | {r['batch']} | {r['eager_tok_s']:,.0f} | {r['compiled_tok_s']:,.0f} | "
                         f"{r['hf_tok_s']:,.0f} | {r['eager_vs_hf']:.2f}x | {r['compiled_vs_hf']:.2f}x | {bound} |")  # fmt: skip
    return lines


# ---------------------------------------------------------------------------------------------
# the command line


def parse_sections(text: str) -> list[str]:
    if text == "all":
        return list(SECTION_NAMES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(map(repr, unknown)) or repr(text)}: choose from {', '.join(SECTION_NAMES)} or all"
        )
    return [name for name in SECTION_NAMES if name in names]  # always in the canonical order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Prove the GPU path (sections below, in order) and write OUT/report.json and OUT/report.md.",
        epilog="sections: " + "; ".join(f"{s.name} ({s.title})" for s in SECTIONS),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("gpu-report"), help="report folder (default: gpu-report)"
    )
    parser.add_argument("--sections", type=parse_sections, default=list(SECTION_NAMES),
                        help=f"comma-separated, from {','.join(SECTION_NAMES)} (default: all)")  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="tiny models: the plumbing in seconds (CPU, CI)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for all six sections, each its share (default: {DEFAULT_BUDGET_S:g})")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for runs and caches (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each section's commands and run nothing"
    )
    parser.add_argument("--fail-section", choices=SECTION_NAMES, default=None,
                        help="for the tests: a command that exits 1 runs first in this section")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.device.startswith("cpu") and not args.tiny and not args.dry_run:
        parser.error("--device cpu runs only with --tiny (the GPU shapes would take hours on a CPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    chosen = [s for s in SECTIONS if s.name in args.sections]
    scale = args.budget / sum(s.budget for s in SECTIONS)  # a section gets its share, chosen alone or not
    if args.dry_run:
        ctx = Context(args.device, args.tiny, args.work or Path("WORK"))
        for s in chosen:
            print(f"# {s.name}: {s.title} (budget {s.budget * scale:.0f} s)")
            for step in s.steps(ctx, s.budget * scale):
                print(shown(step.argv))
        return 0

    clock = Timer()
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.device, args.tiny, work)
    env = child_env(ctx)
    report: dict[str, Any] = dict(
        tool="benchmarks/gpu_check.py", command=shlex.join(["python3", "benchmarks/gpu_check.py", *argv]),
        started=datetime.now(UTC).isoformat(timespec="seconds"), finished=None, seconds=0.0,
        host=platform.node(), commit=git_commit(), device=args.device, tiny=args.tiny, budget_s=args.budget,
        gating="sections only: exit code 0 when no section failed; missed targets are reported, not failures",
        exit_code=None, env={}, sections=[], targets=[],
    )  # fmt: skip
    progress(
        clock, f"gpu check: {', '.join(s.name for s in chosen)} on {args.device}; logs in {out / 'logs'}"
    )
    deadline = time.monotonic()
    try:
        for s in chosen:
            deadline += s.budget * scale
            record = run_section(s, ctx, deadline, out, env, s.name == args.fail_section, clock)
            report["sections"].append(record)
            if s.name == "env":
                report["env"] = record["figures"]
            progress(clock, f"{s.name}: {record['status']} ({record['seconds']:.1f} s) {summarize(record)}")
            report["seconds"] = round(clock.elapsed(), 1)
            try:
                report["targets"] = targets({r["name"]: r for r in report["sections"]}, args.tiny)
            except (KeyError, TypeError, ValueError) as e:
                report["targets_error"] = f"{type(e).__name__}: {e}"
            write_report(report, out)
    except KeyboardInterrupt:
        report["interrupted"] = True
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r["name"] for r in report["sections"] if r["status"] == "fail"]
    report["exit_code"] = 130 if report.get("interrupted") else (1 if failed else 0)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["seconds"] = round(clock.elapsed(), 1)
    write_report(report, out)
    verdict = f"FAIL ({', '.join(failed)})" if failed else "PASS"
    progress(clock, f"gpu check: {verdict}; report: {out / 'report.md'} and {out / 'report.json'}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
