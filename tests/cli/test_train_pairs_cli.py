"""`gpt train` on prompt/completion pairs: an encoder-decoder (--arch encdec), and the GPT baseline that
renders them with ChatML and learns the replies (--pairs); one-line errors for what cannot train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptcli.chat.template import ChatTemplate, render
from gptcli.loading import load_newest
from gptcli.storage import checkpoint as ckpt
from tests.cli.test_train_cli import metrics
from tests.conftest import assert_one_line_error, run_cli
from tests.training.test_trainer import final_weights

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "4",
        "--log-interval", "1", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def pairs(tmp_path) -> Path:
    """Reversing three letters of a..d: text that has none of ChatML's own characters (user, \\n)."""
    words = [a + b + c for a in "abcd" for b in "abcd" for c in "abcd"]
    lines = [json.dumps({"prompt": w, "completion": w[::-1]}) for w in words]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def gpt_train(*args: str):
    result = run_cli("train", *args)
    assert result.exit_code == 0, result.stderr
    return result


def test_an_encoder_decoder_trains_on_pairs_and_resumes(pairs):
    result = gpt_train("--arch", "encdec", "--n-enc-layer", "2", "--data", str(pairs), "--out", "run", *TINY)
    assert "prompt: " in result.stderr and "\ncompletion:" in result.stderr  # the eval's greedy sample
    newest = ckpt.list_checkpoints(Path("run"))[-1]
    saved = ckpt.read_config(newest)
    assert (saved["model"].arch, saved["model"].n_enc_layer, saved["step"]) == ("encdec", 2, 4)
    assert "chat_template" not in saved
    _, tokenizer, _, _ = load_newest(Path("run"))
    assert tokenizer.kind == "char" and tokenizer.eot_id is not None  # characters of the pairs, + end
    gpt_train("--resume", "run", "--max-iters", "6", "-q")
    assert [r["step"] for r in metrics(Path("run")) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_the_gpt_baseline_renders_pairs_with_chatml_and_carries_the_template(pairs):
    gpt_train("--pairs", "--data", str(pairs), "--out", "gpt", *TINY, "--block-size", "32")
    model, tokenizer, config, _ = load_newest(Path("gpt"))
    assert config["model"].arch == "gpt"
    template = ChatTemplate.from_json(config["chat_template"])
    assert template == ChatTemplate.chatml()
    # the char tokenizer knows the template's own text and tokens, not only the pairs' letters
    prompt = render([{"role": "user", "content": "abc"}], template, tokenizer, add_generation_prompt=True)
    assert tokenizer.decode(prompt.ids) == "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n"
    samples = [r["sample"] for r in metrics(Path("gpt")) if r.get("sample")]
    assert samples and samples[0].startswith("user: ")  # the reply to a held-out pair's prompt


def test_two_processes_train_an_encoder_decoder_like_one(tmp_path, pairs):
    args = ["train", "--arch", "encdec", "--data", str(pairs), *TINY, "--batch-size", "2", "--grad-accum", "2",
            "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, "-m", "gptcli", *args, "--out", "two"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    gpt_train(*args[1:], "--out", "one")
    one, two = ([r["loss"] for r in metrics(Path(d)) if "loss" in r] for d in ("one", "two"))
    assert len(one) == len(two) == 4
    assert all(abs(a - b) <= 1e-5 * a for a, b in zip(one, two)), (one, two)
    a, b = final_weights(Path("one")), final_weights(Path("two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_what_cannot_train_is_a_one_line_error(tmp_path, pairs):
    (tmp_path / "plain.txt").write_text("just some text\n" * 20)
    (tmp_path / "text.jsonl").write_text('{"text": "just some text"}\n' * 20)
    encdec = ["train", "--arch", "encdec", *TINY]
    for data in ("plain.txt", "text.jsonl"):
        result = run_cli(*encdec, "--data", data)
        assert_one_line_error(result, "an encoder-decoder trains on prompt/completion pairs", data)
    result = run_cli(*encdec, "--data", str(pairs), "--block-size", "2")
    assert_one_line_error(result, "every training pair is longer than the context", "block_size 2")
    result = run_cli(*encdec, "--data", str(pairs), "--pairs")
    assert_one_line_error(result, "an encoder-decoder trains on prompt/completion pairs as they are")
    result = run_cli(*encdec, "--data", str(pairs), "--fsdp")
    assert_one_line_error(result, "fsdp")
    result = run_cli("train", "--resume", "somewhere", "--pairs")
    assert_one_line_error(result, "--resume continues a run as it was", "--pairs")
    assert not Path("out").exists()
