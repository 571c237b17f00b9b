"""The run directory: one training run's files, and the rules for starting, restarting and pruning.

    RUN_DIR/config.json          the resolved TrainConfig (pass it back with --config)
    RUN_DIR/tokenizer.json       the tokenizer of the run
    RUN_DIR/metrics.jsonl        one JSON record per log step and per evaluation (gptcli.training.metrics)
    RUN_DIR/checkpoints/step_N/  checkpoints (gptcli.storage.checkpoint): the newest few + the best
    RUN_DIR/tensorboard/         with --tensorboard
    RUN_DIR/.lock                while a run trains there: its PID, under an OS lock (RunDirLock)

config.json and tokenizer.json are written with the first checkpoint, so a run that dies before
it leaves nothing that looks like a run.
"""

import errno
import json
import os
import shutil
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None

from pydantic import ValidationError

from gptcli.config import TrainConfig
from gptcli.errors import GptError, one_line_validation_error
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import atomic_write_json
from gptcli.tokenizers.base import Tokenizer
from gptcli.training.metrics import METRICS
from gptcli.training.tensorboard import TENSORBOARD_DIR

RUN_CONFIG, RUN_TOKENIZER = "config.json", "tokenizer.json"
CHECKPOINTS = ckpt.CHECKPOINTS
LOCK = ".lock"  # hidden: corpus search, checkpoint listing and clear_run_dir all pass it by
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # flock not supported where the run is


class RunDirLock:
    """One run per directory: holds an flock on RUN_DIR/.lock while a run trains there.

        with RunDirLock(run_dir):          # GptError at once if another process holds it
            ...

    The OS drops the lock with the process that holds it (SIGKILL and power loss included), so a
    lock file left behind never blocks the next run: only a live holder does. The file holds the
    holder's PID (and host) for the message, and is removed on release; a directory the lock had to
    create is removed too if nothing else was written to it (a run that could not start leaves no
    trace). With `create=False` (a resume) a missing directory is not created: nothing is locked,
    and the caller's own check reports it.
    """

    def __init__(self, run_dir: Path, create: bool = True):
        self.run_dir, self.path, self.create = Path(run_dir), Path(run_dir) / LOCK, create
        self._fd: int | None = None
        self._made_dir = False
        self.note: str | None = None  # set when the file system cannot lock: the run goes on unlocked

    def acquire(self) -> "RunDirLock":
        if fcntl is None or self._fd is not None:
            return self
        if not self.run_dir.is_dir():
            if not self.create:
                return self
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno in NO_LOCKS:  # a file system without flock: train, but say so
                    self.path.unlink(missing_ok=True)
                    self.note = (
                        f"warning: {self.run_dir} cannot be locked ({e.strerror}): "
                        "nothing stops a second run on it"
                    )
                    return self
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                self._remove_made_dir()
                raise GptError(
                    f"{self.run_dir} is in use by another run ({holder}): wait for it to end or stop it; "
                    "a run directory holds one run at a time"
                ) from None
            # a holder that released between our open and our flock removed the file first: our
            # lock is then on a file nobody else sees, so take the one now at the path instead
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see acquire for why the order matters
            os.close(self._fd)
            self._fd = None
        self._remove_made_dir()

    def _remove_made_dir(self) -> None:
        if self._made_dir:
            try:
                self.run_dir.rmdir()  # only if empty
            except OSError:
                pass
            self._made_dir = False

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'PID 1234' (and ' on HOST' when not this machine) from a lock file's text."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid, _, host = os.read(fd, 256).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        pid = host = ""
    if not pid:
        return "PID unknown"
    return f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse to mix two runs in one directory."""
    if (run_dir / RUN_CONFIG).exists() or (run_dir / CHECKPOINTS).exists():
        raise GptError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, or start over with --overwrite"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run writes (and nothing else: --out may be a folder with other files)."""
    for name in (RUN_CONFIG, METRICS, RUN_TOKENIZER, CHECKPOINTS, TENSORBOARD_DIR):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_files(run_dir: Path, config: TrainConfig, tokenizer: Tokenizer) -> None:
    atomic_write_json(run_dir / RUN_CONFIG, json.loads(config.model_dump_json()))
    tokenizer.save(run_dir / RUN_TOKENIZER)


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """RUN_DIR/config.json as a TrainConfig; a missing or invalid one is a one-line error."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise GptError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return TrainConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise GptError(f"{path}: invalid run config: {one_line_validation_error(e)}") from None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the best by val loss."""
    found = ckpt.list_checkpoints(run_dir)
    if len(found) <= keep:
        return
    best = ckpt.best_checkpoint(found)
    for d in found[:-keep]:
        if d != best:
            shutil.rmtree(d, ignore_errors=True)


def tidy_checkpoints(run_dir: Path) -> None:
    """Clean up after a save that was killed (SIGKILL, power loss) before it could clean up itself.

    A hidden `.step_N.*.tmp` is a checkpoint that never finished: removed. A hidden `.step_N.old`
    with no `step_N` beside it is a complete checkpoint caught between the two renames that
    replace one: put back.
    """
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(".old"):
            original = folder / entry.name[1 : -len(".old")]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            elif ckpt.is_checkpoint(entry):
                entry.rename(original)
