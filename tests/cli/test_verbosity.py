"""--quiet and --verbose mean the same on every command: results alone, or results with detail."""

import json

from gptcli.cli.common import console
from tests.conftest import SONNETS, run_cli

TINY_RUN = ["--data", str(SONNETS), "-t", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2",
            "--eval-iters", "1", "--sample-tokens", "2", "--device", "cpu"]  # fmt: skip


def test_quiet_leaves_only_results_and_verbose_adds_detail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet = run_cli("tokenizer", "train", str(SONNETS), "--vocab-size", "300", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    loud = run_cli("tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--out", "t2.json", "--verbose")
    settings = json.loads(loud.stderr.split("settings: ", 1)[1].splitlines()[0])
    assert settings["vocab_size"] == 300 and "trained bpe tokenizer" in loud.stderr

    plain = run_cli("tokenizer", "encode", "Shall I compare thee")
    verbose = run_cli("tokenizer", "encode", "Shall I compare thee", "-v")
    assert plain.stdout == verbose.stdout and plain.stderr == ""  # detail never touches the output
    assert "20 characters ->" in verbose.stderr and "per token" in verbose.stderr
    assert "tokens ->" in run_cli("tokenizer", "decode", plain.stdout, "-v").stderr

    trained = run_cli("train", *TINY_RUN, "-v")
    assert trained.exit_code == 0, trained.stderr
    settings = json.loads(trained.stderr.split("settings: ", 1)[1].splitlines()[0])
    assert settings["model"]["vocab_size"] > 0 and settings["max_iters"] == 2  # resolved, not the flags
    assert run_cli("train", *TINY_RUN, "--overwrite", "-q").stderr == ""

    for args in (["generate", "--prompt", "Shall", "--max-new-tokens", "3", "--seed", "0"], ["info", "out"]):
        assert run_cli(*args).stderr != ""  # a summary or hint normally
        quiet = run_cli(*args, "-q")
        assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout != ""
    assert (
        '"seed":0'
        in run_cli("generate", "--prompt", "Shall", "--max-new-tokens", "3", "--seed", "0", "-v").stderr
    )


def test_warnings_survive_quiet_and_quiet_does_not_leak_into_the_next_command(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abab abab")  # far too little text for 300 tokens: a warning
    result = run_cli(
        "tokenizer", "train", str(tiny), "--vocab-size", "300", "--out", str(tmp_path / "t.json"), "-q"
    )
    assert result.exit_code == 0 and result.stderr.startswith("warning: the corpus yields only")
    assert console.quiet is True  # set by -q for that command ...
    after = run_cli("tokenizer", "train", str(tiny), "--vocab-size", "300", "--out", str(tmp_path / "u.json"))
    assert "trained bpe tokenizer" in after.stderr  # ... and reset for the next one
