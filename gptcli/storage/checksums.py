"""checksums.json: the sha256 of every file of a checkpoint, recorded when it is written, checked on load.

    {"format": "gptcli.checksums", "version": 1, "algorithm": "sha256",
     "files": {"model.safetensors": "9f2c...", "config.json": "...", "tokenizer.json": "...", ...}}

The digests are computed while the files stream out (gptcli.storage.files.HashingWriter), and
checked before a file is used. The big weights file is hashed in a worker thread from the tensors
just read into memory (`StreamHash`), so checking costs little more than the read itself. A file whose bytes differ
from what was recorded is a one-line `DamagedCheckpoint` error naming the file: a flipped bit in
the tensor data of a safetensors file parses fine, and only this catches it. Checkpoints written
before checksums existed (format version 1) have no manifest; they load with a warning.
"""

import hashlib
import hmac
import queue
import threading
from pathlib import Path

from gptcli.errors import GptError
from gptcli.storage.files import atomic_write_json, read_json, sha256_file

CHECKSUMS = "checksums.json"
FORMAT = "gptcli.checksums"


class DamagedCheckpoint(GptError):
    """A checkpoint file whose bytes are not what was saved (or whose manifest is unreadable)."""


def write_checksums(directory: Path, digests: dict[str, str]) -> None:
    atomic_write_json(
        directory / CHECKSUMS, {"format": FORMAT, "version": 1, "algorithm": "sha256", "files": digests}
    )


def read_checksums(directory: Path) -> dict[str, str]:
    """The recorded digests; a missing or malformed manifest is a DamagedCheckpoint."""
    path = directory / CHECKSUMS
    if not path.is_file():
        raise DamagedCheckpoint(f"{directory}: missing {CHECKSUMS} (its files cannot be verified)")
    try:
        manifest = read_json(path)
    except GptError as e:
        raise DamagedCheckpoint(str(e)) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("algorithm") != "sha256"
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        raise DamagedCheckpoint(f"{path}: not a gptcli checksum manifest")
    return files


def check_digest(path: Path, digests: dict[str, str], actual: str) -> None:
    expected = digests.get(path.name)
    if expected is None:
        raise DamagedCheckpoint(f"{path}: no checksum recorded for it in {CHECKSUMS}")
    if not hmac.compare_digest(expected.lower(), actual):
        raise DamagedCheckpoint(f"{path}: checksum mismatch: the file is damaged (not what was saved)")


def verify_file(path: Path, digests: dict[str, str]) -> None:
    """Hash the file now and compare (for the small files, read whole before they are used)."""
    if not path.is_file():
        raise DamagedCheckpoint(f"missing file: {path}")
    check_digest(path, digests, sha256_file(path).hexdigest())


class StreamHash:
    """sha256 of bytes fed in order from the caller's thread, computed in a worker thread.

        hasher = StreamHash()
        hasher.feed(header); hasher.feed(tensor_bytes) ...   # returns at once
        digest = hasher.result()                               # waits for the worker

    hashlib releases the GIL on large buffers, so loading goes on while the worker hashes what
    was just read, from memory, with no second read of the file.
    """

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.hash = hashlib.sha256()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            self.hash.update(data)

    def feed(self, data) -> None:
        self.queue.put(data)

    def result(self) -> str:
        self.queue.put(None)
        self.thread.join()
        return self.hash.hexdigest()
