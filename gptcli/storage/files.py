"""Files: written atomically, read as JSON, hashed.

An atomic write goes to a temp file in the same directory, is fsynced, and is renamed over the
target, so a crash at any moment leaves either the old file or the new one, never a half-written
file that looks whole. Used for tokenizers, configs, safetensors and checkpoints alike.

    with atomic_open("model.safetensors") as fh:   # renamed into place on exit
        fh.write(data)
    fh.sha256                                        # the hex digest of what was written

Every writer here returns the sha256 of the bytes it wrote, computed as they stream out, which is
what a checkpoint's checksums.json records (gptcli.storage.checksums).
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from gptcli.errors import GptError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or invalid JSON is a one-line GptError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptError(f"missing file: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptError(f"{path}: invalid JSON ({e})") from None


class HashingWriter:
    """A binary file's write() that also feeds a sha256 of everything written."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.hash = hashlib.sha256()
        self.sha256: str | None = None  # the hex digest, once the file is complete

    def write(self, data) -> int:
        self.hash.update(data)
        return self.fh.write(data)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[HashingWriter]:
    """A binary file that appears at `path` only once it is written whole (temp + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            writer = HashingWriter(fh)
            yield writer
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        writer.sha256 = writer.hash.hexdigest()
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` atomically; returns its sha256."""
    with atomic_open(path) as fh:
        fh.write(data)
    return fh.sha256


def atomic_write_text(path: str | Path, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def sha256_file(path: str | Path, h=None):
    """Feed a file's bytes, 4 MiB at a time, into `h` (a new sha256 if None); returns the hash object."""
    h = hashlib.sha256() if h is None else h
    buffer = memoryview(bytearray(4 << 20))  # one buffer, reused: no allocation per block
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            h.update(buffer[:n])
    return h


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # make the rename itself durable; not every platform allows opening a directory
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
