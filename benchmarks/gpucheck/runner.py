"""Running the sections: each step a subprocess in its own process group, its output appended to
the section's log, stopped (SIGTERM, then SIGKILL) at the section's deadline; the section's record."""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from gpucheck.base import REPO, CheckFailed, Context, Section, SectionSkipped, Step, StepRun, Timer

TAIL_LINES = 40
KILL_GRACE_S = 15  # after SIGTERM (a training run saves its step), before SIGKILL


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
