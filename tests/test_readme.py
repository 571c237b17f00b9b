"""Every shell command the README shows, run in order in a scratch folder, as a reader would type them.

Only what cannot run here changes: flags appended to each `gpt train` make the run tiny (a flag
given twice takes its last value), the hub name `gpt2` and `path/to/hf/gpt2` become a small local
HF folder (no network), and `toy_data/shakespeare.txt` is the shipped sonnets repeated. Commands
that need GPUs, several machines or `make` are in NOT_RUN with the reason; a README command that is
neither run nor listed there fails the test.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SONNETS, run_cli

transformers = pytest.importorskip("transformers")

NOT_RUN = {
    "make test": "CI runs it: it is this test suite",
    "make demo": "minutes of training; its figures are in the README",
    "torchrun --standalone --nproc_per_node=8": "needs 8 GPUs",
    "torchrun --nnodes=2": "needs two machines with GPUs",
    "make gpu-wheels": "downloads wheels from a package index",
    "make gpu-check": "needs a GPU",
    "gpt serve": "a server runs until stopped: tests/serving and tests/cli/test_serve.py start it and call it",
    "curl ": "needs the running server: tests/serving/test_api.py sends these requests",
}
TINY = ("--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 2 --max-iters 2 --warmup-iters 1 "
        "--eval-interval 2 --eval-iters 1 --log-interval 1 --sample-tokens 4 --device cpu")  # fmt: skip
TINY_RESHAPE = "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 "  # not for --init-from / --resume


def readme_commands() -> list[str]:
    """The README's ```bash lines: continuations joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def not_run_reason(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def made_runnable(command: str, hf_folder: Path) -> str:
    command = command.replace("gpt load-gpt2 gpt2 ", f"gpt load-gpt2 {hf_folder} ")
    command = command.replace("path/to/hf/gpt2", str(hf_folder))
    if re.search(r"(\bgpt|-m gptcli) train\b", command):
        flags = TINY
        if "--init-from" in command or "--resume" in command:
            flags = flags.replace(TINY_RESHAPE, "")
        elif "--arch lstm" in command:
            flags = flags.replace("--n-head 2 ", "")
        command += " " + flags
    return command


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder holding the files the README's examples name."""
    sonnets = SONNETS.read_text()
    (tmp_path / "toy_data").mkdir()
    (tmp_path / "toy_data" / "shakespeare.txt").write_text(sonnets * 8)  # > 15,000 lines, as the real one
    (tmp_path / "toy_data" / "sonnets.txt").write_text(sonnets)
    write_datasets(tmp_path / "data", sonnets)
    for name, text in {
        "corpus.txt": sonnets,
        "my_corpus.txt": sonnets,
        "chapter.txt": sonnets[:3000],
        "held_out.txt": sonnets[-5000:],
        "prompt.txt": "Shall I compare thee",
    }.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def write_datasets(folder: Path, text: str) -> None:
    """The sonnets, one per record, as data/web.jsonl (field "text") and data/wiki.parquet ("content")."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    sonnets = [s for s in text.split("\n\n") if s.strip()]
    (folder / "web.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(sonnets))
    )
    pq.write_table(pa.table({"content": sonnets}), folder / "wiki.parquet")


def local_gpt2(folder: Path) -> Path:
    """A small random GPT-2 in HF's layout with a GPT-2-pattern vocabulary of 1000 tokens."""
    from gptcli.config import TokenizerTrainConfig
    from gptcli.tokenizers.train import train_tokenizer
    from tests.test_hf_gpt2 import SHAPES, hf_folder

    tok = train_tokenizer(
        TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=1000, pattern="gpt2")
    ).tokenizer
    hf_folder(folder, tok, SHAPES[1])
    return folder


def run(command: str) -> tuple[int, str]:
    """Plain `gpt ...` lines run in-process (fast); lines with shell syntax or torchrun run in bash."""
    if command.startswith("gpt ") and not re.search(r"[|;>$]", command):
        result = run_cli(*shlex.split(command)[1:])
        return result.exit_code, result.stderr
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stderr


def test_every_readme_command_runs(scratch):
    hf = local_gpt2(scratch / "hf_gpt2")
    commands = readme_commands()
    skipped = {c for c in commands if not_run_reason(c)}
    assert {next(s for s in NOT_RUN if c.startswith(s)) for c in skipped} == set(NOT_RUN), "stale NOT_RUN"
    ran = 0
    for command in commands:
        if command in skipped:
            continue
        code, stderr = run(made_runnable(command, hf))
        assert code == 0 and "Traceback" not in stderr, f"README command failed: {command}\n{stderr}"
        ran += 1
    assert ran >= 30  # the README shows this many runnable commands; a broken parse would find few
    assert (scratch / "out" / "loss.png").is_file() and (scratch / "compare.png").is_file()
    assert (scratch / "finetune_hf" / "model.safetensors").is_file()
