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

import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# gpucheck/ sits beside this script: Python finds it when the script runs by path
from gpucheck.base import Context, Timer
from gpucheck.options import parse_args
from gpucheck.report import summarize, write_report
from gpucheck.runner import child_env, git_commit, progress, run_section, shown
from gpucheck.sections import SECTIONS
from gpucheck.targets import targets


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
