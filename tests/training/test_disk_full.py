"""Disk full while saving a checkpoint (issue 7): the run stops with one clear line, the previous
checkpoint survives whole, nothing half-written is left where a checkpoint is looked for, and --resume
continues from the previous checkpoint once there is space again.

The full disk is simulated at the lowest level our writers use: the file object that
gptcli.storage.files.atomic_open (os.fdopen) gives every checkpoint writer, gptcli.storage.tensorfile's
included. On the Nth checkpoint, the chosen file takes part of a chunk, then write() fails with ENOSPC
as the kernel reports it.
(save_checkpoint's own failure path is unit-tested in tests/storage/test_checkpoint.py.)
"""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.storage import checkpoint as ckpt
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import SONNETS, assert_one_line_error, run_cli

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="finds the path of an fd through /proc (Linux)"
)


class FullDisk:
    """The `nth` checkpoint's `target` file (while written under its temp name) runs out of space.

    `writes_ok` writes go through first (a safetensors file's header length and header), then half of
    the next one lands on disk and write() raises ENOSPC. Every other file is written normally.
    """

    def __init__(self, target: str, nth: int, writes_ok: int = 0):
        self.target, self.nth, self.writes_ok = target, nth, writes_ok
        self.seen = 0
        self.partial: Path | None = None  # the half-written temp file, at the moment it failed
        self.partial_size = 0

    def install(self, monkeypatch) -> None:
        real_fdopen = os.fdopen

        def fdopen(fd, mode="r", *args, **kwargs):
            fh = real_fdopen(fd, mode, *args, **kwargs)
            return self.wrap(fh, Path(os.readlink(f"/proc/self/fd/{fd}"))) if "w" in mode else fh

        monkeypatch.setattr(os, "fdopen", fdopen)  # gptcli.storage.files.atomic_open's file object

    def wrap(self, fh, path: Path):
        # a checkpoint file being written: checkpoints/.step_N.XXXX.tmp/.<name>.<suffix>
        in_checkpoint = path.parent.parent.name == "checkpoints" and path.parent.name.startswith(".")
        if not (in_checkpoint and path.name.startswith(f".{self.target}.")):
            return fh
        self.seen += 1
        return _RunsOutOfSpace(fh, path, self) if self.seen == self.nth else fh

    @property
    def failed(self) -> bool:
        return self.partial is not None


class _RunsOutOfSpace:
    def __init__(self, fh, path: Path, disk: FullDisk):
        self.fh, self.path, self.disk, self.writes = fh, path, disk, 0

    def write(self, data) -> int:
        if self.writes < self.disk.writes_ok:
            self.writes += 1
            return self.fh.write(data)
        chunk = memoryview(data).cast("B")
        self.fh.write(chunk[: max(1, len(chunk) // 2)])
        self.fh.flush()
        self.disk.partial, self.disk.partial_size = self.path, self.path.stat().st_size
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


# which file runs out of space, and how many of its writes succeed first: the weights (the biggest
# file), the training state (written last: the temp dir then already looks like a complete
# checkpoint), and the checkpoint's config.json (through storage.files rather than storage.tensorfile)
TARGETS = [
    pytest.param(ckpt.WEIGHTS, 2, id="weights"),
    pytest.param(ckpt.STATE_TENSORS, 2, id="train-state"),
    pytest.param(ckpt.CONFIG, 0, id="config"),
]

TINY = [
    "--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
    "--batch-size", "4", "--max-iters", "6", "--eval-interval", "2", "--eval-iters", "1",
    "--sample-tokens", "0", "--log-interval", "1", "--device", "cpu", "--dropout", "0.1", "-q",
]  # fmt: skip


@pytest.fixture
def text(tmp_path, monkeypatch, corpus) -> Path:
    """Run in the tmp dir (out/ and the token cache go there), on 20 kB of sonnets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    return corpus(SONNETS.read_text(encoding="utf-8")[:20_000])


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden ones (temp dirs and files) included


def train_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") != "eval"]


def assert_loadable(checkpoint: Path, step: int) -> None:
    model, _, config = load_checkpoint(checkpoint)  # checks every file, key, shape and value
    assert config["step"] == step
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("target, writes_ok", TARGETS)
def test_disk_full_keeps_the_previous_checkpoint_and_resume_finishes(text, monkeypatch, target, writes_ok):
    disk = FullDisk(target, nth=2, writes_ok=writes_ok)  # checkpoints at steps 2, 4, 6: step 4 fails
    with monkeypatch.context() as patch:
        disk.install(patch)
        result = run_cli("train", "--data", str(text), *TINY)
    assert disk.failed and disk.partial_size > 0, "the fault was not injected"
    assert "step_0000004" in str(disk.partial)

    # one line naming the problem, no traceback, exit 1
    assert_one_line_error(
        result,
        "could not save step_0000004: No space left on device",
        "the previous checkpoint out/checkpoints/step_0000002 is intact",
        "gpt train --resume out",
    )
    assert result.exit_code == 1

    # the step-2 checkpoint is all that is left: no temp dir, no half-written file, nothing to mistake
    out = Path("out")
    assert not disk.partial.exists()
    assert entries(out / "checkpoints") == ["step_0000002"]
    assert entries(out) == ["checkpoints", "config.json", "metrics.jsonl", "tokenizer.json"]
    assert ckpt.resolve_checkpoint(out) == out / "checkpoints" / "step_0000002"
    assert_loadable(ckpt.resolve_checkpoint(out), step=2)

    # space again: --resume continues from step 2 and finishes
    resumed = run_cli("train", "--resume", "out", "-q")
    assert resumed.exit_code == 0, resumed.stderr
    assert entries(out / "checkpoints") == ["step_0000002", "step_0000004", "step_0000006"]
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone once, not logged twice
    assert_loadable(ckpt.resolve_checkpoint(out), step=6)


def test_disk_full_on_the_first_checkpoint_leaves_a_run_that_can_start_over(text, monkeypatch):
    disk = FullDisk(ckpt.WEIGHTS, nth=1, writes_ok=2)
    with monkeypatch.context() as patch:
        disk.install(patch)
        result = run_cli("train", "--data", str(text), *TINY)
    assert disk.failed
    assert_one_line_error(result, "No space left on device", "no checkpoint was saved before it")
    assert entries(Path("out") / "checkpoints") == []
    # nothing to resume, and the message says how to start over; that command then works
    hint = "gpt train --config out/config.json --out out --overwrite"
    assert_one_line_error(run_cli("train", "--resume", "out"), "nothing to resume", hint)
    again = run_cli(*hint.split()[1:], "-q")
    assert again.exit_code == 0, again.stderr
    assert_loadable(ckpt.resolve_checkpoint("out"), step=6)


def tiny_config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        data=[str(SONNETS)], tokenizer="char", data_cache=tmp_path / "cache",
        model=dict(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.1),
        batch_size=4, max_iters=6, warmup_iters=2, eval_interval=2, eval_iters=1, log_interval=1,
        sample_tokens=0, device="cpu",
    )  # fmt: skip


def test_library_raises_enospc_and_resume_reaches_the_uninterrupted_weights(tmp_path, monkeypatch):
    full = train(tiny_config(tmp_path), tmp_path / "full")
    run = tmp_path / "run"
    disk = FullDisk(ckpt.WEIGHTS, nth=3, writes_ok=2)  # the final save, at step 6
    with monkeypatch.context() as patch:
        disk.install(patch)
        with pytest.raises(GptError, match="could not save step_0000006: No space left on device"):
            train(tiny_config(tmp_path), run)
    assert disk.failed
    assert [d.name for d in ckpt.list_checkpoints(run)] == ["step_0000002", "step_0000004"]

    resumed = train(read_run_config(run), run, resume=True)
    assert resumed.step == 6
    # the resumed run is the uninterrupted one, bit for bit (same data order, RNG, optimizer state)
    expected = load_file(full.last_checkpoint / ckpt.WEIGHTS)
    got = load_file(resumed.last_checkpoint / ckpt.WEIGHTS)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_ignores_a_leftover_temp_checkpoint(tmp_path):
    # a save killed mid-way (no chance to clean up) leaves a hidden temp dir; give it a newer step
    # and every file, so only its name tells it apart from a real checkpoint
    run = tmp_path / "run"
    train(tiny_config(tmp_path).model_copy(update={"max_iters": 4}), run)
    folder = run / "checkpoints"
    leftover = folder / ".step_0000004.abc123.tmp"
    (folder / "step_0000004").rename(leftover)
    assert ckpt.is_checkpoint(leftover)
    assert ckpt.resolve_checkpoint(run) == folder / "step_0000002"

    resumed = train(read_run_config(run), run, resume=True)  # from step 2: the temp dir says step 4
    assert any(n.startswith("resumed from") and n.endswith("at step 2") for n in resumed.notes)
    assert resumed.step == 4 and resumed.last_checkpoint == folder / "step_0000004"
    assert not leftover.exists()  # resume cleaned it up
