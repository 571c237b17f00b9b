"""safetensors files, written and read one tensor at a time.

The format is simple: 8 bytes (little-endian u64) of header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
bytes. `safetensors.torch.save_file` first turns every tensor into a `bytes` copy, and reading
through its mmap keeps every page it touched resident, so either way a big model costs two copies
of its weights in memory. Here a tensor is written straight from its own memory, and read straight
into its destination (`read_into`), so converting GPT-2 XL needs about one copy. Files written here
are ordinary safetensors files (the `safetensors` package reads them, and the tests check that).
"""

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from gptcli.errors import GptError
from gptcli.storage.files import atomic_open

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 << 20


def bytes_of(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without copying."""
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
):
    """Write tensors to `path` atomically (temp file + fsync + rename), streaming each one; -> its sha256."""
    path = Path(path)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in NAMES:
            raise GptError(f"cannot save {name}: dtype {t.dtype} is not supported by safetensors")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with atomic_open(path) as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for t in tensors.values():
            fh.write(bytes_of(t))
    return fh.sha256


class SafetensorsReader:
    """Reads a safetensors file's header, then single tensors on demand (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise GptError(f"missing file: {self.path}")
        self.file = open(self.path, "rb")
        try:
            self.entries = self._read_header()
        except BaseException:
            self.file.close()
            raise

    def _read_header(self) -> dict[str, dict]:
        size = self.path.stat().st_size
        head = self.file.read(8)
        if len(head) < 8:
            raise self._corrupt("shorter than a header")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise self._corrupt("header size out of range")
        raw = self.file.read(n)
        self.header_bytes = head + raw  # what precedes the tensor data, for hashing the whole file
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._corrupt("header is not JSON") from None
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        for name, e in header.items():
            try:
                begin, end = e["data_offsets"]
                dtype = DTYPES[e["dtype"]]
                numel = 1
                for d in e["shape"]:
                    numel *= int(d)
            except (KeyError, TypeError, ValueError):
                raise self._corrupt(f"bad header entry for {name}") from None
            if end - begin != numel * torch.empty(0, dtype=dtype).element_size() or begin < 0:
                raise self._corrupt(f"{name}: size does not match its shape")
            if self.data_start + end > size:
                raise self._corrupt(f"{name} lies past the end of the file (truncated?)")
        return header

    def _corrupt(self, why: str) -> GptError:
        return GptError(f"{self.path}: corrupt or truncated safetensors file ({why})")

    def keys(self) -> list[str]:
        return list(self.entries)

    def in_file_order(self) -> list[str]:
        return sorted(self.entries, key=lambda name: self.entries[name]["data_offsets"][0])

    def is_packed(self) -> bool:
        """True when the tensors fill the data section end to end in file order (as ours and HF's do),
        so the header followed by each tensor's bytes is the whole file."""
        end = 0
        for name in self.in_file_order():
            begin, stop = self.entries[name]["data_offsets"]
            if begin != end:
                return False
            end = stop
        return self.data_start + end == self.path.stat().st_size

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Fill a contiguous CPU tensor of the same shape and dtype with `name`, with no temporary copy."""
        if not out.is_contiguous() or out.device.type != "cpu" or out.dtype != self.dtype(name):
            raise ValueError("read_into needs a contiguous CPU tensor of the file's dtype")
        if tuple(out.shape) != self.shape(name):
            raise ValueError(f"{name}: shape {self.shape(name)} does not fit {tuple(out.shape)}")
        begin, end = self.entries[name]["data_offsets"]
        self.file.seek(self.data_start + begin)
        if end > begin and self.file.readinto(bytes_of(out)) != end - begin:
            raise self._corrupt(f"{name} is cut short")

    def get(self, name: str) -> torch.Tensor:
        out = torch.empty(self.shape(name), dtype=self.dtype(name))
        self.read_into(name, out)
        return out

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.entries:
            yield name, self.get(name)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a file (for small files: optimizer state, tests)."""
    with SafetensorsReader(path) as reader:
        return dict(reader.items())
