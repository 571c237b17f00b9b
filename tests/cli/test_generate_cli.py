"""`gpt generate` as a user runs it: defaults after a run, output modes, and one-line errors."""

import json

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import CharTokenizer
from tests.conftest import assert_one_line_error, run_cli

CHARS = list("\n abcdefghijklmnopqrstuvwxyzé")


def save_run(run_dir, eot=True, seed=0):
    torch.manual_seed(seed)
    tok = CharTokenizer(CHARS, {"<|endoftext|>": len(CHARS)} if eot else {})
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    for step, val in ((1, 3.0), (2, 2.5), (3, 2.9)):
        ckpt.save_checkpoint(
            run_dir / "checkpoints" / f"step_{step:07d}", model, config, tok, {"step": step, "val_loss": val}
        )
    return run_dir


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_read_everything_from_out(in_tmp):
    save_run(in_tmp / "out")
    result = run_cli("generate", "--prompt", "hello", "--max-new-tokens", "20", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("hello") and len(result.stdout) > len("hello")
    assert "step_0000003" in result.stderr  # the newest checkpoint
    assert "step_0000002" in run_cli("generate", "--best", "--max-new-tokens", "2").stderr


def test_json_output_and_reproducible_seeds(in_tmp):
    save_run(in_tmp / "out")
    args = (
        "generate",
        "-p",
        "abc",
        "--json",
        "-n",
        "3",
        "--max-new-tokens",
        "12",
        "--seed",
        "5",
        "--ignore-eos",
    )
    data = json.loads(run_cli(*args).stdout)
    assert data["prompt"] == "abc" and data["prompt_tokens"] == 3 and len(data["samples"]) == 3
    for sample in data["samples"]:
        assert set(sample) == {"text", "ids", "tokens", "finish_reason"}
        assert sample["tokens"] == len(sample["ids"]) == 12 and sample["finish_reason"] == "length"
    assert data["tokens_per_second"] > 0 and data["new_tokens"] == 36
    assert data["compile_seconds"] == 0  # no --compile
    assert json.loads(run_cli(*args).stdout)["samples"] == data["samples"]


def test_streamed_and_plain_output_agree(in_tmp):
    save_run(in_tmp / "out")
    common = ("generate", "-p", "ab", "--max-new-tokens", "25", "--seed", "3", "--ignore-eos")
    streamed = run_cli(*common, "--stream").stdout
    plain = run_cli(*common, "--no-stream").stdout
    assert streamed == plain
    data = json.loads(run_cli(*common, "--json").stdout)
    assert streamed == "ab" + data["samples"][0]["text"] + "\n"
    several = run_cli("generate", "-p", "ab", "-n", "2", "--max-new-tokens", "5", "--seed", "3").stdout
    assert several.count("---------------") == 1


def test_prompt_from_a_file_and_greedy(in_tmp):
    save_run(in_tmp / "out")
    (in_tmp / "prompt.txt").write_text("once upon", encoding="utf-8")
    a = run_cli(
        "generate", "-p", "FILE:prompt.txt", "--temperature", "0", "--max-new-tokens", "10", "--ignore-eos"
    )
    b = run_cli("generate", "-p", "once upon", "--temperature", "0", "--max-new-tokens", "10", "--ignore-eos")
    assert a.exit_code == 0 and a.stdout == b.stdout and a.stdout.startswith("once upon")


def test_stop_string_cuts_the_output(in_tmp):
    save_run(in_tmp / "out")
    data = json.loads(run_cli("generate", "-p", "a", "--max-new-tokens", "200", "--temperature", "2", "--top-k", "3",
                              "--seed", "0", "--stop", "e", "--ignore-eos", "--json").stdout)  # fmt: skip
    sample = data["samples"][0]
    assert "e" not in sample["text"]
    assert sample["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-c", "nowhere"], ["checkpoint not found", "nowhere"]),
        (["-c", "{half}"], ["not a complete checkpoint", "missing tokenizer.json"]),
        (["-c", "{empty_run}"], ["holds no complete checkpoint"]),
        (["-p", "FILE:missing.txt"], ["prompt file not found", "missing.txt"]),
        (["-p", "ABC"], ["does not know", "'A'", "'B'", "'C'"]),
        (["-c", "{no_eot}"], ["prompt is empty", "no <|endoftext|>"]),
        (["--top-k", "0"], ["--top-k", "greater than or equal to 1"]),
        (["--top-p", "0"], ["--top-p", "greater than 0"]),
        (["--top-p", "1.5"], ["--top-p", "less than or equal to 1"]),
        (["--temperature", "-1"], ["temperature"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--num-samples", "0"], ["--num-samples"]),
        (["--stop", ""], ["stop strings must not be empty"]),
        (["--device", "cuda:7"], ["cuda:7"]),
        (["--precision", "fp8"], ["--precision", "'fp8' is not one of"]),
        (["--precision", "fp16", "--device", "cpu"], ["fp16 needs a CUDA GPU"]),
    ],
)
def test_bad_input_gives_one_line_error(in_tmp, args, fragments):
    save_run(in_tmp / "out")
    half = in_tmp / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "model.safetensors").write_bytes(b"")
    (in_tmp / "empty_run" / "checkpoints").mkdir(parents=True)
    save_run(in_tmp / "noeot", eot=False)
    places = {"half": str(half), "empty_run": str(in_tmp / "empty_run"), "no_eot": str(in_tmp / "noeot")}
    result = run_cli("generate", *[a.format(**places) for a in args])
    assert_one_line_error(result, *fragments)


def test_help():
    result = run_cli("generate", "--help")
    for option in ("--prompt", "--checkpoint", "--num-samples", "--max-new-tokens", "--temperature", "--top-k",
                   "--top-p", "--seed", "--stop", "--stream", "--json", "--best", "--ignore-eos", "--compile"):  # fmt: skip
        assert option in result.stdout, option


@pytest.mark.parametrize("checksums", ["stale", "rewritten"])
def test_a_config_json_with_a_bad_value_is_named_once(in_tmp, checksums):
    """config.json edited by hand ("n_layer": "two"): one line that says what is wrong with it (and,
    when the file no longer matches its checksum, that too), never the same message twice."""
    from gptcli.storage.checksums import read_checksums, write_checksums
    from gptcli.storage.files import sha256_file

    directory = save_run(in_tmp / "run") / "checkpoints" / "step_0000003"
    config = json.loads((directory / "config.json").read_text())
    config["model"]["n_layer"] = "two"
    (directory / "config.json").write_text(json.dumps(config))
    if checksums == "rewritten":  # as saved: the checksum matches, the value is still wrong
        digests = read_checksums(directory) | {
            "config.json": sha256_file(directory / "config.json").hexdigest()
        }
        write_checksums(directory, digests)
    problem = "invalid model config: n_layer: Input should be a valid integer"
    for args in (["generate", "-c", str(directory)], ["info", str(directory)], ["export-hf", str(directory)]):
        result = run_cli(*args)
        assert_one_line_error(result, "config.json", problem)
        assert result.stderr.count("invalid model config") == 1, result.stderr
        if args[0] == "generate":  # it loads the checkpoint, so it checks the checksums too
            assert ("checksum mismatch" in result.stderr) == (checksums == "stale")


def test_a_file_given_as_a_checkpoint_says_what_it_is_and_what_was_expected(in_tmp):
    save_run(in_tmp / "run")
    (in_tmp / "some_file.txt").write_text("not a model")
    expected = ["some_file.txt is a file, not a checkpoint", "checkpoint directory", "run directory"]
    for args in (
        ["generate", "-c", "some_file.txt"],
        ["eval", "-c", "some_file.txt", "-d", "some_file.txt"],
        ["info", "some_file.txt"],
        ["export-hf", "some_file.txt"],
        ["serve", "-c", "some_file.txt"],
    ):
        assert_one_line_error(run_cli(*args), *expected)
    # a file inside a checkpoint: the checkpoint is named
    inside = run_cli("generate", "-c", "run/checkpoints/step_0000003/config.json")
    assert_one_line_error(inside, "is a file", "(the checkpoint it is in: run/checkpoints/step_0000003)")


def test_past_the_context_the_window_slides_and_a_note_says_so(in_tmp):
    """Context 16: 30 new tokens are generated (the window slides), and stderr says so in the words
    gpt serve's answer uses (its context_note); a run that fits says nothing."""
    from gptcli.generation.engine import context_note

    save_run(in_tmp / "out")
    args = ("generate", "-p", "ab", "--max-new-tokens", "30", "--ignore-eos", "--seed", "1")
    expected = context_note(2, 30, 16)
    assert "context of 16" in expected and "sliding" in expected
    plain = run_cli(*args)
    assert plain.exit_code == 0, plain.stderr
    assert f"note: {expected}" in plain.stderr.splitlines()
    data = json.loads(run_cli(*args, "--json").stdout)
    assert data["context_note"] == expected and data["samples"][0]["tokens"] == 30
    long_prompt = json.loads(run_cli("generate", "-p", "abcde" * 5, "--max-new-tokens", "3", "--json").stdout)
    assert (
        long_prompt["context_note"] == context_note(25, 3, 16)
        and "prompt's last 16" in long_prompt["context_note"]
    )
    fits = run_cli("generate", "-p", "ab", "--max-new-tokens", "5", "--ignore-eos", "--json")
    assert "context_note" not in json.loads(fits.stdout) and "note:" not in fits.stderr
    assert "note:" not in run_cli(*args, "--quiet").stderr  # a note, not a warning
