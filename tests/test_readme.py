"""Every command and Python example the README and the guides in docs/ show, run as a reader would.

Each page runs in order in its own scratch folder. A guide's reader has done the README's everyday
path first, so a guide's scratch folder starts with the README's commands run.

Only what cannot run here changes: flags appended to each `gpt train` make the run tiny (a flag
given twice takes its last value), the hub name `gpt2` and `path/to/hf/gpt2` become a small local
HF folder (no network), and `toy_data/shakespeare.txt` is the shipped sonnets repeated. Commands
that need GPUs, several machines, a running server, the network or minutes of work are in NOT_RUN
(Python examples in PY_NOT_RUN) with the reason; a command that is neither run nor listed there
fails the test.

The README also has a length limit, and every relative link in the README and the guides must
point at a file (and heading) that exists.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SONNETS, run_cli

transformers = pytest.importorskip("transformers")

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

NOT_RUN = {
    "make test": "CI runs it: it is this test suite",
    "make test-any-cpu": "part of this suite again, with torch's kernels without vector units: CI runs it",
    ".venv/bin/python -m pytest": "part of this test suite",
    "make demo": "minutes of training on the complete works",
    "make bench": "benchmarks take minutes, and a timing is not a test",
    ".venv/bin/python benchmarks/": "a benchmark: minutes, and a timing is not a test",
    "torchrun --standalone --nproc_per_node=8": "needs 8 GPUs",
    "torchrun --nnodes=2": "needs two machines with GPUs",
    "make gpu-wheels": "downloads wheels from a package index",
    "make gpu-check": "needs a GPU",
    "gpt serve": "a server runs until stopped: tests/serving and tests/cli/test_serve.py start it and call it",
    "curl ": "needs the running server: tests/serving/test_api.py sends these requests",
    "llama-completion ": "llama.cpp's tools are not installed here: tests/test_gguf_llama_cpp.py runs the exports",
    "llama-cli ": "llama.cpp's tools are not installed here: tests/test_gguf_llama_cpp.py runs the exports",
    "llama-server ": "llama.cpp's tools are not installed here: tests/test_gguf_llama_cpp.py runs the exports",
    "ollama ": "needs Ollama installed and its server running",
    "make gguf-check": "builds llama.cpp from source (~15 min on 2 cores)",
}
PY_NOT_RUN = {
    "from openai import OpenAI": "needs the running server: tests/serving/test_api.py uses the openai client",
    "from llama_cpp import Llama": "llama-cpp-python is built from source: `make gguf-check` runs llama.cpp on the exports",
}
TINY = ("--n-layer 1 --n-head 2 --n-embd 16 --block-size 32 --batch-size 2 --max-iters 2 --warmup-iters 1 "
        "--eval-interval 2 --eval-iters 1 --log-interval 1 --sample-tokens 4 --device cpu")  # fmt: skip
TINY_RESHAPE = "--n-layer 1 --n-head 2 --n-embd 16 --block-size 32 "  # not for --init-from / --resume
# files a page's commands must have written, beyond exiting 0
EXPECTED = {
    "tokenizers.md": ["hf_tok/tokenizer.json", "tt_tok/tokenizer.tiktoken"],
    "data.md": ["data/web_store/meta.json", "wiki/config.json"],
    "training.md": [
        "out/loss.png",
        "compare.png",
        "ddp/config.json",
        "out_py/config.json",
        "encdec/config.json",
    ],
    "gpt2-and-hf.md": ["finetune_hf/model.safetensors"],
    "fine-tuning.md": [
        "chat/config.json",
        "chat_hf/model.safetensors",
        "chat-merged/config.json",
        "chat-peft/adapter_model.safetensors",
        "chat-peft/base/model.safetensors",
    ],
    "chat.md": ["replies.txt", "turns.jsonl", "conversation.json"],
    "run-elsewhere.md": [
        "model.gguf",
        "model-q8.gguf",
        "chat.gguf",
        "model-f16.gguf",
        "out-int8/model.safetensors",
    ],
}
TINY_FINETUNE = ("--batch-size 2 --max-iters 2 --warmup-iters 1 --eval-interval 2 --eval-iters 1 --log-interval 1 "
                 "--sample-tokens 4 --device cpu")  # fmt: skip
CHATS = [  # docs/fine-tuning.md's example file, one record in each of three formats
    {"messages": [{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}]},
    {"conversations": [{"from": "human", "value": "reverse dog"}, {"from": "gpt", "value": "god"}]},
    {"instruction": "reverse", "input": "stone", "output": "enots"},
]


# ---- reading the pages


def steps(page: Path) -> list[tuple[str, str]]:
    """The page's ```bash lines and ```python blocks, in order: ("bash", command) or ("python", code).
    Bash continuations are joined, comments and blank lines dropped."""
    found = []
    for lang, block in re.findall(r"```(bash|python)\n(.*?)```", page.read_text(), re.S):
        if lang == "python":
            found.append(("python", block))
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(("bash", " ".join(line.split())))
    return found


def not_run_key(kind: str, text: str) -> str | None:
    """The NOT_RUN (PY_NOT_RUN) entry that covers this step: the longest matching prefix (substring)."""
    if kind == "python":
        return next((key for key in PY_NOT_RUN if key in text), None)
    return max((start for start in NOT_RUN if text.startswith(start)), key=len, default=None)


def runnable(page: Path) -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in steps(page) if not not_run_key(kind, text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


# ---- running them


def made_runnable(command: str, hf_folder: Path | None) -> str:
    if hf_folder is not None:
        command = command.replace("gpt load-gpt2 gpt2 ", f"gpt load-gpt2 {hf_folder} ")
        command = command.replace("path/to/hf/gpt2", str(hf_folder))
    if re.search(r"(\bgpt|-m gptcli) train\b", command):
        flags = TINY
        if "--init-from" in command or "--resume" in command:
            flags = flags.replace(TINY_RESHAPE, "")
        elif "--arch lstm" in command:
            flags = flags.replace("--n-head 2 ", "")
        command += " " + flags
    if re.search(r"\bgpt finetune\b", command):
        command += " " + TINY_FINETUNE
    return command


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder holding the files the pages' examples name."""
    sonnets = SONNETS.read_text()
    (tmp_path / "toy_data").mkdir()
    (tmp_path / "toy_data" / "shakespeare.txt").write_text(sonnets * 8)  # > 15,000 lines, as the real one
    (tmp_path / "toy_data" / "sonnets.txt").write_text(sonnets)
    write_datasets(tmp_path / "data", sonnets)
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS * 4))
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
    from gptcli.data.tokenizer_corpus import train_tokenizer
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


def run_page(page: Path, hf_folder: Path | None) -> int:
    """Run the page's runnable steps in order in the current folder; how many ran."""
    ran = 0
    for kind, text in runnable(page):
        where = f"{page.relative_to(REPO)}"
        if kind == "python":
            try:
                exec(compile(text, where, "exec"), {"__name__": "__readme__"})
            except Exception as e:  # noqa: BLE001 - any failure of a shown example fails the test
                pytest.fail(f"{where}: Python example failed: {type(e).__name__}: {e}\n{text}")
        else:
            code, stderr = run(made_runnable(text, hf_folder))
            assert code == 0 and "Traceback" not in stderr, f"{where}: command failed: {text}\n{stderr}"
        ran += 1
    return ran


# ---- the tests

RUN_PAGES = [p for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_every_command_runs(page, scratch):
    hf = local_gpt2(scratch / "hf_gpt2") if any("load-gpt2" in text for _, text in runnable(page)) else None
    if page != README:
        run_page(README, hf)  # where the guide's reader starts: the everyday path done
    assert run_page(page, hf) > 0
    for name in EXPECTED.get(page.name, []):
        assert (scratch / name).exists(), f"{page.name}: its commands should have written {name}"


def test_every_command_is_run_or_explained():
    shown = [(kind, text) for page in PAGES for kind, text in steps(page)]
    used = {not_run_key(kind, text) for kind, text in shown} - {None}
    assert used == set(NOT_RUN) | set(PY_NOT_RUN), "stale NOT_RUN / PY_NOT_RUN entries"
    ran = [step for step in shown if not not_run_key(*step)]
    assert len(ran) >= 40  # the pages show this many runnable steps; a broken parse would find few
    assert set(EXPECTED) <= {p.name for p in RUN_PAGES}


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into a guide in docs/"


def test_readme_links_every_guide():
    linked = {
        (REPO / link.split("#")[0]).resolve() for link in relative_links(README) if link.startswith("docs/")
    }
    assert linked, "README.md links no guide in docs/"
    for target in linked:
        assert target.is_file(), f"README.md links {target.relative_to(REPO)}, which does not exist"
    guides = {p.resolve() for p in (REPO / "docs").glob("*.md")}
    assert guides <= linked, f"guides the README does not link: {sorted(p.name for p in guides - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_resolve(page):
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link {link}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: link {link}: no such heading in {target.name}"
