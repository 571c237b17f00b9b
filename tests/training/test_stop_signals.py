"""SIGTERM and SIGUSR1, what batch schedulers send before a kill, stop a run like a first Ctrl-C: the
step under way is finished and saved, one line says which signal stopped it and how to continue,
the exit code is 128 + the signal's number, and --resume then goes on with every step logged once.
Under torchrun every rank stops at the same step, whether the signal reached all ranks or one."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptcli.storage import checkpoint as ckpt
from gptcli.training.interrupt import STOP_SIGNALS, StopOnInterrupt, TrainingInterrupted, exit_code
from gptcli.training.time_budget import EvalShape, TimeBudget
from gptcli.training.trainer import Trainer
from tests.conftest import SONNETS, run_cli

TINY = [
    "--data", str(SONNETS), "--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
    "--block-size", "16", "--batch-size", "4", "--eval-interval", "100000", "--eval-iters", "1",
    "--log-interval", "1", "--sample-tokens", "0", "--device", "cpu", "--dropout", "0", "-q",
]  # fmt: skip
FOREVER = ["--max-iters", "100000"]  # a run that only a signal ends


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in the tmp dir with the token cache there too (for the in-process resumes)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


def start(tmp_path: Path, *args: str, procs: int = 1) -> subprocess.Popen:
    """`gpt ARGS` in the background, as a user (or a scheduler) starts it; torchrun for procs > 1."""
    launch = [sys.executable, "-m", "gptcli"]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        launch += ["-m", "gptcli"]
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*launch, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl's log records, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in records if "loss" in r]


def wait_for_steps(run_dir: Path, proc: subprocess.Popen, n: int = 3, timeout: float = 120) -> None:
    """Until the run has logged n steps (it is inside the training loop, its handlers installed)."""
    deadline = time.time() + timeout
    while len(logged_steps(run_dir)) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before training: {proc.communicate()[1]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the run logged no steps in time")
        time.sleep(0.05)


def stop_lines(stderr: str, sig: signal.Signals, run: str) -> list[int]:
    """The steps named by `error: stopped by SIG at step N; saved ...; continue with ...` lines."""
    pattern = (
        rf"error: stopped by {sig.name} at step (\d+); saved {run}/checkpoints/step_(\d+); "
        rf"continue with: gpt train --resume {run}"
    )
    found = [re.fullmatch(pattern, line) for line in stderr.splitlines() if line.startswith("error:")]
    assert found and all(found), stderr
    assert all(int(m[1]) == int(m[2]) for m in found), stderr  # the checkpoint is of that very step
    return [int(m[1]) for m in found]


def assert_saved_at(run_dir: Path, step: int) -> None:
    newest = ckpt.list_checkpoints(run_dir)[-1]
    assert newest.name == f"step_{step:07d}"
    assert ckpt.read_config(newest)["step"] == step
    assert json.loads((newest / ckpt.STATE_JSON).read_text())["step"] == step


def resume_to(run: str, steps: int) -> None:
    """Resume in this process (quicker than a new one) up to `steps`; every step is then logged once."""
    result = run_cli("train", "--resume", run, "--max-iters", str(steps), "-q")
    assert result.exit_code == 0, result.stderr
    assert logged_steps(Path(run)) == list(range(1, steps + 1))


def test_exit_codes_are_128_plus_the_signal_number():
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143
    assert exit_code(signal.SIGUSR1) == 128 + signal.SIGUSR1  # 138 on Linux
    assert TrainingInterrupted("x").exit_code == 130  # Ctrl-C, as before
    assert TrainingInterrupted("x", signal.SIGTERM).exit_code == 143


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_saves_the_current_step_and_resume_finishes(tmp_path, sig):
    proc = start(tmp_path, "train", *TINY, *FOREVER, "--out", "out")
    wait_for_steps(tmp_path / "out", proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr  # 143 for SIGTERM
    assert len(stderr.strip().splitlines()) == 1, stderr  # -q: the one line and nothing else
    (step,) = stop_lines(stderr, sig, "out")
    assert_saved_at(tmp_path / "out", step)
    assert [d.name for d in ckpt.list_checkpoints(tmp_path / "out")] == [f"step_{step:07d}"]
    assert logged_steps(tmp_path / "out") == list(range(1, step + 1))  # no step lost, none after it
    assert not (tmp_path / "out" / ".lock").exists()  # the run directory was released
    resume_to("out", step + 3)


def test_stop_signals_are_handled_in_the_main_thread_and_restored():
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    with StopOnInterrupt() as interrupt:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # a repeat (e.g. torchrun forwarding one we also got): no change
        signal.raise_signal(signal.SIGUSR1)
        assert interrupt.received == [signal.SIGTERM, signal.SIGUSR1]
        assert interrupt.flags() == [False, True, True]  # SIGINT, SIGTERM, SIGUSR1
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C while already stopping: stop at once
            signal.raise_signal(signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


class FakeWorld:
    """Two ranks: `any` ORs this rank's flags with the other rank's (what all_reduce MAX does)."""

    enabled = True

    def __init__(self, other: list[bool]):
        self.other, self.calls = other, 0

    def any(self, *flags: bool) -> list[bool]:
        self.calls += 1
        return [a or b for a, b in zip(flags, self.other)]


def stop_decision(interrupt: StopOnInterrupt, other: list[bool], step: int, log_interval: int = 5):
    """Trainer.stop_reason on one rank of two, without building a run."""
    config = SimpleNamespace(log_interval=log_interval, max_iters=1000, eval_interval=1000)
    config.eval_iters, config.sample_tokens = 1, 0
    trainer = SimpleNamespace(config=config, world=FakeWorld(other))
    trainer.budget = TimeBudget(None, time.time(), EvalShape(2, 1, 1, 8, 0))  # no --max-time
    trainer.state = SimpleNamespace(step=step, saved_step=-1)
    trainer.is_log_step = lambda: Trainer.is_log_step(trainer)
    trainer.steps_to_next_check = lambda: Trainer.steps_to_next_check(trainer)
    return Trainer.stop_reason(trainer, interrupt), trainer.world.calls


def test_ranks_agree_on_a_stop_that_reached_only_one_of_them():
    quiet, signalled = StopOnInterrupt(), StopOnInterrupt()
    signalled.received.append(signal.SIGUSR1)
    other_got_usr1 = [False, False, True, False]  # SIGINT, SIGTERM, SIGUSR1, max_time
    nothing = [False] * 4
    # between log steps nobody stops (and nothing is exchanged), whoever got the signal
    assert stop_decision(signalled, nothing, step=3) == (None, 0)
    assert stop_decision(quiet, other_got_usr1, step=3) == (None, 0)
    # at a log step both ranks stop, named alike: the rank that got it and the one that did not
    assert stop_decision(signalled, nothing, step=5) == ("SIGUSR1", 1)
    assert stop_decision(quiet, other_got_usr1, step=5) == ("SIGUSR1", 1)
    assert stop_decision(quiet, nothing, step=5) == (None, 1)
    # different signals on different ranks: the same name everywhere (Ctrl-C, then SIGTERM, then SIGUSR1)
    assert stop_decision(signalled, [False, True, False, False], step=5) == ("SIGTERM", 1)


def torchrun_workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of a torchrun launcher's worker processes (Linux: /proc)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        ranks = {}
        for pid in children:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = [v.split(b"=", 1)[1] for v in env if v.startswith(b"RANK=")]
            if rank:
                ranks[int(rank[0])] = int(pid)
        if len(ranks) == 2:
            return ranks
        time.sleep(0.1)
    pytest.fail("torchrun's workers not found")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc")
def test_under_torchrun_all_ranks_stop_at_one_step_and_rank_0_saves(tmp_path):
    grad_accum = ["--grad-accum", "2"]
    # SLURM signals each process itself: here SIGUSR1 reaches rank 1 alone, and both still stop
    proc = start(tmp_path, "train", *TINY, *grad_accum, *FOREVER, "--out", "out", procs=2)
    wait_for_steps(tmp_path / "out", proc)
    os.kill(torchrun_workers(proc)[1], signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    steps = stop_lines(stderr, signal.SIGUSR1, "out")
    assert len(steps) == 2 and steps[0] == steps[1], stderr  # each rank says so, at the same step
    assert_saved_at(tmp_path / "out", steps[0])
    assert logged_steps(tmp_path / "out") == list(range(1, steps[0] + 1))

    # resumed under torchrun, then SIGTERM to the launcher, which forwards it to every worker
    proc = start(tmp_path, "train", "--resume", "out", *FOREVER, procs=2)
    wait_for_steps(tmp_path / "out", proc, n=steps[0] + 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    again = stop_lines(stderr, signal.SIGTERM, "out")
    assert len(again) == 2 and again[0] == again[1] > steps[0], stderr
    assert_saved_at(tmp_path / "out", again[0])
    assert not (tmp_path / "out" / ".lock").exists()
    resume_to("out", again[0] + 2)  # and on, in one process: every step logged once
