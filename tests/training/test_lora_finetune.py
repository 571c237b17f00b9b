"""`gpt finetune --lora` end to end: a small adapter checkpoint that names its base, exact resume
after SIGKILL, a wrong or changed base refused, every command taking an adapter run, two
processes under torchrun training like one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gptcli.loading import load_checkpoint
from gptcli.storage import checkpoint as ckpt
from gptcli.training.run_dir import read_run_config
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.training.test_finetune import FAST, make_base, reverse_task, task_words, write_jsonl
from tests.training.test_trainer import assert_same_weights, final_weights, losses

LORA = ["--lora", "--lora-r", "4", "--lora-targets", "attn,mlp", "--lr", "1e-2"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base") / "base", n_embd=64, block_size=128)


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A LoRA fine-tune of `base`: its run directory."""
    folder = tmp_path_factory.mktemp("lora")
    data = write_jsonl(folder / "chats.jsonl", reverse_task(task_words(3)[:40]))
    args = ["-c", str(base), "--data", str(data), *LORA, "--max-iters", "6", "--eval-interval", "3", *FAST]
    result = run_cli("finetune", *args, "--out", str(folder / "run"))
    assert result.exit_code == 0, result.stderr
    return folder / "run"


def test_an_adapter_checkpoint_holds_the_adapters_and_names_its_base(adapter, base):
    newest = ckpt.list_checkpoints(adapter)[-1]
    config = ckpt.read_config(newest)
    base_checkpoint = ckpt.list_checkpoints(base)[-1]
    assert config["lora"] == {"r": 4, "alpha": 16.0, "dropout": 0.05, "targets": ["attn", "mlp"],
                              "base_precision": "fp32"}  # fmt: skip
    assert config["base"]["path"] == str(base_checkpoint.resolve())
    assert config["base"]["sha256"] == ckpt.checkpoint_digests(base_checkpoint)[ckpt.WEIGHTS]
    weights = load_file(newest / ckpt.WEIGHTS)
    assert all(k.endswith(("lora_A", "lora_B", "rows.new")) for k in weights)
    assert {k for k in weights if k.endswith("rows.new")} == {"transformer.wte.rows.new"}  # the ChatML rows
    assert weights["transformer.wte.rows.new"].shape == (2, 64)
    size, base_size = (newest / ckpt.WEIGHTS).stat().st_size, (base_checkpoint / ckpt.WEIGHTS).stat().st_size
    assert size < 0.2 * base_size
    # the optimizer holds state for the adapters alone
    state = load_file(newest / "train_state.safetensors")
    moments = sum(t.numel() for k, t in state.items() if "exp_avg" in k and "exp_avg_sq" not in k)
    assert moments == sum(t.numel() for t in weights.values())
    # loaded, the base's weights are untouched, and the adapters are on (unmerged)
    model, tokenizer, _ = load_checkpoint(newest)
    plain, _, _ = load_checkpoint(base_checkpoint)
    assert torch.equal(
        model.transformer.h[0].attn.c_attn.base.weight, plain.transformer.h[0].attn.c_attn.weight
    )
    assert model.transformer.h[0].mlp.c_fc.lora_B.abs().max() > 0
    assert tokenizer.vocab_size == plain.config.vocab_size + 2


def test_every_command_takes_an_adapter_run(adapter, tmp_path):
    generated = run_cli("generate", "-c", str(adapter), "-p", "abc", "--max-new-tokens", "5", "--json")
    assert generated.exit_code == 0, generated.stderr
    assert json.loads(generated.stdout)["samples"][0]["tokens"] == 5
    chat = run_cli("chat", "-c", str(adapter), "--max-new-tokens", "5", "--json", input="reverse abc\n")
    assert chat.exit_code == 0 and json.loads(chat.stdout)["completion_tokens"] <= 5, chat.stderr
    evaluated = run_cli("eval", "-c", str(adapter), "--data", str(SONNETS), "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    info = run_cli("info", str(adapter))
    assert info.exit_code == 0 and "LoRA" in info.stdout and "base" in info.stdout, info.stdout
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from gptcli.config import ServeConfig
    from gptcli.generation import Engine
    from gptcli.serving.server import Server

    server = Server(
        Engine.from_checkpoint(adapter, device="cpu"), ServeConfig(checkpoint=adapter, port=0, quiet=True)
    )
    server.start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": "reverse abc"}], max_tokens=5, temperature=0
        )
        assert answer.usage.completion_tokens <= 5
    finally:
        server.stop()


def test_a_changed_or_missing_base_is_a_one_line_error_naming_both_hashes(tmp_path, base, adapter):
    import shutil

    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    copy = tmp_path / "adapter"
    shutil.copytree(ckpt.list_checkpoints(adapter)[-1], copy)
    config = json.loads((copy / ckpt.CONFIG).read_text())
    # point the adapter at another base: a different model saved at the path it names
    other = make_base(tmp_path / "other", steps=2, n_embd=64, block_size=128)
    config["base"]["path"] = str(ckpt.list_checkpoints(other)[-1].resolve())
    rewrite_config(copy, config)
    result = run_cli("generate", "-c", str(copy), "-p", "a", "--max-new-tokens", "2")
    expected = config["base"]["sha256"]
    actual = ckpt.checkpoint_digests(ckpt.list_checkpoints(other)[-1])[ckpt.WEIGHTS]
    assert_one_line_error(result, "a LoRA adapter of another base", expected, actual)
    config["base"]["path"] = str(tmp_path / "nowhere")
    rewrite_config(copy, config)
    assert_one_line_error(run_cli("chat", "-c", str(copy), input="hi\n"), "whose base", "is not there")
    # fine-tuning on top of an adapter asks for a merge first
    data = write_jsonl(tmp_path / "c.jsonl", reverse_task(task_words(3)[:8]))
    again = run_cli("finetune", "-c", str(copy), "--data", str(data), "--max-iters", "1", *FAST[:-1])
    assert_one_line_error(again, "is a LoRA adapter", "merge")


def rewrite_config(directory, config) -> None:
    """config.json edited, with its checksum updated (a consistent checkpoint, just another base)."""
    from gptcli.storage.checksums import read_checksums, write_checksums
    from gptcli.storage.files import sha256_file

    (directory / ckpt.CONFIG).write_text(json.dumps(config))
    digests = read_checksums(directory)
    digests[ckpt.CONFIG] = sha256_file(directory / ckpt.CONFIG).hexdigest()
    write_checksums(directory, digests)


def test_a_lora_fine_tune_resumed_after_sigkill_equals_an_uninterrupted_one(tmp_path, base):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:80]))
    args = ["-c", str(base), "--data", str(data), *LORA, "--epochs", "4", "--batch-size", "2",
            "--eval-interval", "3", "--sample-tokens", "4", *FAST]  # fmt: skip
    result = run_cli("finetune", *args, "--out", str(tmp_path / "full"))
    assert result.exit_code == 0, result.stderr
    max_iters = read_run_config(tmp_path / "full").max_iters
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gptcli", "finetune", *args, "--out", "part"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(tmp_path / "part") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert 0 < ckpt.read_config(ckpt.list_checkpoints(tmp_path / "part")[-1])["step"] < max_iters
    resumed = run_cli("finetune", "--resume", str(tmp_path / "part"), "-q")
    assert resumed.exit_code == 0, resumed.stderr
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # bit for bit
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))


def test_lora_options_need_lora_and_resume_takes_none(tmp_path, base, adapter):
    data = write_jsonl(tmp_path / "c.jsonl", reverse_task(task_words(3)[:8]))
    no_lora = run_cli("finetune", "-c", str(base), "--data", str(data), "--lora-r", "4")
    assert no_lora.exit_code == 2 and "--lora-r sets up LoRA: add --lora" in no_lora.stderr
    bad = run_cli("finetune", "-c", str(base), "--data", str(data), "--lora", "--lora-targets", "attn,ffn")
    assert bad.exit_code == 2 and "--lora-targets" in bad.stderr
    resume = run_cli("finetune", "--resume", str(adapter), "--lora")
    assert_one_line_error(resume, "leave out --lora")


def test_two_processes_fine_tune_an_adapter_like_one(tmp_path, base):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:40]))
    # no LoRA dropout: one process draws the masks of both micro-batches, two draw one each
    args = ["finetune", "-c", str(base), "--data", str(data), *LORA, "--lora-dropout", "0", "--max-iters", "3",
            "--batch-size", "2",
            "--grad-accum", "2", "--eval-interval", "3", "--sample-tokens", "0", *FAST]  # fmt: skip
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run([*torchrun, "-m", "gptcli", *args, "--out", "two"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr
    one = run_cli(*args[:], "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() == {1, 2, 3} and all(abs(a[s] - b[s]) <= 1e-5 * a[s] for s in a), (a, b)
    x, y = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert x.keys() == y.keys() and all(k.endswith(("lora_A", "lora_B", "rows.new")) for k in x)
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-5, rtol=1e-4)
