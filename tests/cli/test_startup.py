"""Start-up: help, --version, shell completion and the tokenizer commands never load torch.

Each probe runs the commands through the real entry point (`gptcli.__main__.main`, what the `gpt`
script calls) in a fresh interpreter, and reads back which heavy modules were imported after each
command. Modules only accumulate in a process, so checking after every command names the first
command that pulled one in.
"""

import json
import os
import subprocess
import sys

from tests.cli.test_help import COMMANDS
from tests.conftest import SONNETS

HEAVY = ("torch", "numpy", "safetensors")  # what a command that only talks or tokenizes never needs

PROBE = """
import json, os, sys
from gptcli.__main__ import main
seen = []
for args, env in json.loads(sys.stdin.read()):
    os.environ.update(env)
    sys.argv = ["gpt", *args]
    try:
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            print(f"exit {e.code}: {args}", file=sys.stderr)
            sys.exit(3)
    for key in env:
        del os.environ[key]
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    seen.append([" ".join(args), heavy])
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump(seen, f)
"""


def probe(commands: list[tuple[list[str], dict[str, str]]], tmp_path) -> list[tuple[str, list[str]]]:
    out = tmp_path / "probe.json"
    env = {**os.environ, "PROBE_OUT": str(out), "COLUMNS": "200"}
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [tuple(row) for row in json.loads(out.read_text())]


def assert_light(seen: list[tuple[str, list[str]]]) -> None:
    heavy = [(command, modules) for command, modules in seen if modules]
    assert not heavy, f"first command that imported {heavy[0][1]}: gpt {heavy[0][0]}"


def test_help_and_version_do_not_import_torch(tmp_path):
    commands = [(["--version"], {}), (["--help"], {})]
    commands += [([*path, "--help"], {}) for path, _ in COMMANDS if path]
    seen = probe(commands, tmp_path)
    assert len(seen) == len(commands)
    assert_light(seen)


def test_shell_completion_does_not_import_torch(tmp_path):
    words = "gpt train --n-"
    env = {"_GPT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "2"}
    assert_light(probe([([], env)], tmp_path))


def test_tokenizer_commands_do_not_import_torch(tmp_path):
    tok = str(tmp_path / "tok.json")
    commands = [
        (["tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--out", tok, "-q"], {}),
        (["tokenizer", "encode", "--tokenizer", tok, "To be, or not to be"], {}),
        (["tokenizer", "decode", "--tokenizer", tok, "[84, 111]"], {}),
        (["tokenizer", "info", tok], {}),
        (["tokenizer", "export", tok, "--format", "hf", "--out", str(tmp_path / "hf"), "-q"], {}),
    ]
    assert_light(probe(commands, tmp_path))


def test_the_probe_sees_torch_when_a_command_loads_it(tmp_path):
    """Guards the probe itself: `gpt info` on a checkpoint does load torch, and the probe says so."""
    from tests.cli.test_generate_cli import save_run

    run = save_run(tmp_path / "run")
    seen = probe([(["generate", "--help"], {}), (["info", str(run)], {})], tmp_path)
    assert seen[0][1] == [] and "torch" in seen[1][1]
