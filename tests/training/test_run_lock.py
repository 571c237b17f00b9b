"""One run per directory: RUN_DIR/.lock is held (flock) while a run trains there. A second `gpt train`
on it fails at once with the holder's PID and touches nothing; the lock dies with its process, so
after a SIGKILL --resume just works."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gptcli.training.run_setup
from gptcli.errors import GptError
from gptcli.storage import checkpoint as ckpt
from gptcli.training.run_dir import LOCK, RunDirLock, check_run_dir_free, clear_run_dir
from tests.conftest import SONNETS, assert_one_line_error, run_cli

TINY = [
    "--data", str(SONNETS), "--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
    "--block-size", "16", "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "1",
    "--log-interval", "1", "--sample-tokens", "0", "--device", "cpu", "--dropout", "0", "-q",
]  # fmt: skip


def test_the_lock_is_exclusive_names_its_holder_and_goes_with_release(tmp_path):
    run = tmp_path / "new" / "run"
    with RunDirLock(run):
        assert (run / LOCK).read_text().split()[0] == str(os.getpid())
        with pytest.raises(GptError, match=rf"run is in use by another run \(PID {os.getpid()}\)"):
            RunDirLock(run).acquire()  # another open file: flock says no, even in one process
        # the lock file is invisible to what lists or clears a run directory
        check_run_dir_free(run)
        clear_run_dir(run)
        assert ckpt.list_checkpoints(run) == [] and (run / LOCK).is_file()
    assert not run.exists()  # made only for the lock, left empty: gone again
    (run / "checkpoints").mkdir(parents=True)
    with RunDirLock(run):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # the lock file goes, the run stays


def test_a_lock_file_left_behind_by_a_dead_run_does_not_block(tmp_path):
    (tmp_path / LOCK).write_text("999999999 elsewhere\n")  # what a SIGKILLed holder leaves
    with RunDirLock(tmp_path) as lock:
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    assert lock._fd is None and not (tmp_path / LOCK).exists()


def test_a_resume_of_a_missing_directory_creates_nothing(tmp_path):
    with RunDirLock(tmp_path / "nowhere", create=False):
        pass
    assert not (tmp_path / "nowhere").exists()


def newest_step(run_dir: Path) -> int:
    found = ckpt.list_checkpoints(run_dir)
    return int(found[-1].name.rsplit("_", 1)[1]) if found else 0


def test_a_second_train_on_a_directory_in_use_fails_at_once_and_after_sigkill_resume_works(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "train", *TINY, "--max-iters", "100000", "--out", "out"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while newest_step(tmp_path / "out") < 5 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1]
        config = (tmp_path / "out" / "config.json").read_bytes()
        saved = newest_step(tmp_path / "out")

        def nothing_may_start(*args, **kwargs):
            raise AssertionError("a second run got past the lock")

        with monkeypatch.context() as m:  # the lock is checked before any data is tokenized or model built
            m.setattr(gptcli.training.run_setup, "prepare_data", nothing_may_start)
            m.setattr(gptcli.training.run_setup, "build_model", nothing_may_start)
            for args in (
                ["--resume", "out"],
                [*TINY, "--out", "out", "--overwrite"],
                [*TINY, "--out", "out"],
            ):
                result = run_cli("train", *args)
                assert_one_line_error(result, "out is in use by another run", f"(PID {first.pid})")

        # the first run is untouched and goes on
        assert first.poll() is None
        assert (tmp_path / "out" / "config.json").read_bytes() == config
        assert newest_step(tmp_path / "out") >= saved
        assert (tmp_path / "out" / LOCK).read_text().split()[0] == str(first.pid)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()

    # the lock died with it (its file stays): --resume takes over where it was saved
    assert (tmp_path / "out" / LOCK).exists()
    step = newest_step(tmp_path / "out")
    resumed = run_cli("train", "--resume", "out", "--max-iters", str(step + 2), "-q")
    assert resumed.exit_code == 0, resumed.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, step + 3))
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_file_system_without_flock_trains_unlocked_and_says_so(tmp_path, monkeypatch):
    import errno

    import gptcli.training.run_dir as run_dir

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_dir.fcntl, "flock", no_locks)
    with RunDirLock(tmp_path / "run") as lock:
        assert lock.note and "cannot be locked (No locks available)" in lock.note
    assert not (tmp_path / "run").exists()
