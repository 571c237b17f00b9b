"""Whether a checkpoint, or every checkpoint of a run directory, is intact (`gpt info --verify`).

(What a checkpoint holds, for `gpt info`, needs its tokenizer read: gptcli.loading.describe_checkpoint.)
"""

from pathlib import Path

from gptcli.errors import GptError
from gptcli.storage.checkpoint import is_checkpoint, list_checkpoints, resolve_checkpoint, verify_checkpoint


def verify_run(path: str | Path) -> list[tuple[Path, str]]:
    """(checkpoint, "intact" | "unverified (no checksums)" | "damaged: <why>") for a checkpoint or
    for every checkpoint of a run directory, oldest first."""
    path = Path(path)
    found = [path] if is_checkpoint(path) else list_checkpoints(path)
    if not found:
        resolve_checkpoint(path)  # raises the right one-line error
    results = []
    for directory in found:
        try:
            status = "intact" if verify_checkpoint(directory) else "unverified (no checksums)"
        except GptError as e:
            status = f"damaged: {e}"
        results.append((directory, status))
    return results
