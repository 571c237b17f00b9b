"""Shared test helpers: small corpora written to tmp dirs, and running the CLI in-process."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gptcli.cli import app

REPO = Path(__file__).resolve().parents[1]
SONNETS = REPO / "toy_data" / "sonnets.txt"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every model in the tests is tiny: threads gain nothing, and lose a lot when processes share cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | None = None) -> CliResult:
    """Run `gpt ARGS...` in-process, as the console script would (our error handling included)."""
    result = CliRunner().invoke(app, list(args), input=input, prog_name="gpt")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback means a bug: fail loudly
    return CliResult(result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """Bad input: non-zero exit, a single `error: ...` line on stderr naming the problem, no traceback."""
    assert result.exit_code != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def corpus(tmp_path: Path):
    """Write a text file into the test's tmp dir: corpus("text", name="a.txt") -> Path."""

    def write(text: str | bytes, name: str = "corpus.txt") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write
