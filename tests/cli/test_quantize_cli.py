"""`gpt quantize` and `--quantize int8`: an int8 checkpoint (checksummed, about a quarter of the fp32
file) that every command loads, the same model as quantizing at load time, and one-line refusals."""

import importlib.util
import json
import shutil

import pytest

from gptcli.config import ModelConfig
from gptcli.loading import load_checkpoint
from gptcli.models import GPT, LSTM
from gptcli.models.int8 import is_quantized
from gptcli.models.int8_kernel import SETTING, cpu_isa
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.serving.helpers import save_tiny_chat_checkpoint

GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A float checkpoint whose weights are mostly matrices (as a real model's), with a chat template
    (for gpt chat), and its int8 one."""
    folder = tmp_path_factory.mktemp("int8")
    save_tiny_chat_checkpoint(folder / "fp32", block_size=64, n_embd=128, n_head=4)
    result = run_cli("quantize", str(folder / "fp32"), "--out", str(folder / "int8"))
    assert result.exit_code == 0, result.stderr
    assert "int8" in result.stderr and "%" in result.stderr
    return folder


def test_the_int8_checkpoint_is_a_checksummed_quarter_of_the_float_one(runs):
    fp32, int8 = runs / "fp32", runs / "int8"
    assert ckpt.verify_checkpoint(int8)
    config = ckpt.read_config(int8)
    assert config["quantization"]["kind"] == "int8" and config["step"] == 1 and config["chat_template"]
    assert config["quantized_from"]["path"] == str(fp32.resolve())
    assert config["quantized_from"]["sha256"] == ckpt.checkpoint_digests(fp32)[ckpt.WEIGHTS]
    ratio = (int8 / ckpt.WEIGHTS).stat().st_size / (fp32 / ckpt.WEIGHTS).stat().st_size
    assert 0.25 < ratio < 0.3, ratio
    model, _, _ = load_checkpoint(int8)
    assert is_quantized(model)
    info = json.loads(run_cli("info", str(int8), "--json").stdout)
    assert info["quantization"]["kind"] == "int8"
    assert info["parameters"] == json.loads(run_cli("info", str(fp32), "--json").stdout)["parameters"]
    assert run_cli("info", "--verify", str(int8)).exit_code == 0
    assert (
        f"int8, a scale per output row (gpt quantize of {fp32.resolve()})"
        in run_cli("info", str(int8)).stdout
    )


def test_a_damaged_int8_checkpoint_is_a_one_line_error(runs, tmp_path):
    damaged = shutil.copytree(runs / "int8", tmp_path / "damaged")
    with open(damaged / ckpt.WEIGHTS, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\x7f" * 4)
    assert_one_line_error(run_cli("generate", "-c", str(damaged), "-p", "a"), "model.safetensors")


@pytest.mark.skipif(not cpu_isa(), reason="the int8 CPU kernel does not run on this CPU")
def test_compiled_int8_decoding_writes_the_eager_text(runs):
    # our kernel goes into the compiled step as it is; 80 tokens cross the 64-position cache view
    int8, greedy = str(runs / "int8"), ["--temperature", "0", "--max-new-tokens", "80", "--json"]
    eager = run_cli("generate", "-c", int8, "-p", "Once", *greedy)
    compiled = run_cli("generate", "-c", int8, "-p", "Once", *greedy, "--compile")
    assert eager.exit_code == 0 and compiled.exit_code == 0, eager.stderr + compiled.stderr
    assert json.loads(compiled.stdout)["samples"] == json.loads(eager.stdout)["samples"]


def test_compiling_int8_decoding_with_torchs_kernel_is_refused_in_one_line(runs, monkeypatch):
    # Inductor cannot lower torch's CPU int8 kernel, and the dequantize-matmul it compiles is far slower
    monkeypatch.setenv(SETTING, "torch")
    result = run_cli("generate", "-c", str(runs / "int8"), "-p", "a", "--compile", "--max-new-tokens", "2")
    assert_one_line_error(result, "--compile with int8 weights needs the int8 CPU kernel")


def test_every_command_loads_it_and_quantizing_at_load_is_the_same(runs):
    fp32, int8 = str(runs / "fp32"), str(runs / "int8")
    saved = run_cli("generate", "-c", int8, "-p", "Once", *GREEDY, "--json")
    loaded = run_cli("generate", "-c", fp32, "-p", "Once", *GREEDY, "--json", "--quantize", "int8", "-v")
    assert saved.exit_code == 0 and loaded.exit_code == 0, saved.stderr + loaded.stderr
    assert json.loads(saved.stdout)["samples"] == json.loads(loaded.stdout)["samples"]
    assert "int8 weights" in loaded.stderr
    chats = [
        run_cli("chat", "-c", source, *GREEDY, "--json", *extra, input="Hello\n")
        for source, extra in ((int8, []), (fp32, ["--quantize", "int8"]))
    ]
    replies = [json.loads(chat.stdout)["reply"] for chat in chats]
    assert chats[0].exit_code == 0 and replies[0] == replies[1], chats[0].stderr
    rows = []
    for source, extra in ((int8, []), (fp32, ["--quantize", "int8"]), (fp32, [])):
        result = run_cli(
            "eval", "-c", source, "--data", str(SONNETS), "--max-tokens", "300", "--json", *extra
        )
        assert result.exit_code == 0, result.stderr
        rows.append(json.loads(result.stdout))
    assert rows[0]["loss"] == rows[1]["loss"] and rows[0]["quantization"] == "int8"
    assert rows[2]["quantization"] is None and abs(rows[0]["loss"] - rows[2]["loss"]) < 0.01 * rows[2]["loss"]


def test_gpt_serve_answers_from_an_int8_checkpoint(runs):
    pytest.importorskip("fastapi")
    from gptcli.config import ServeConfig
    from gptcli.generation import Engine
    from gptcli.serving.server import Server
    from tests.serving.helpers import post

    engine = Engine.from_checkpoint(runs / "fp32", device="cpu", quantize="int8")
    server = Server(engine, ServeConfig(checkpoint=runs / "fp32", port=0, quiet=True, quantize="int8"))
    assert "int8 weights" in server.banner()
    server.start()
    try:
        body = {"model": "fp32", "prompt": "Once", "max_tokens": 12, "temperature": 0}
        status, answer = post(server.port, "/v1/completions", body)
    finally:
        server.stop()
    assert status == 200, answer
    alone = engine.generate("Once", engine_config(12))
    assert answer["choices"][0]["text"] == alone.samples[0].text


def engine_config(tokens: int):
    from gptcli.config import SampleConfig

    return SampleConfig(max_new_tokens=tokens, temperature=0)


def test_a_lora_run_is_merged_then_quantized(tmp_path):
    from tests.training.test_finetune import FAST, make_base, reverse_task, task_words, write_jsonl

    base = make_base(tmp_path / "base", n_embd=64, block_size=128)
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:20]))
    lora = ["--lora", "--lora-r", "4", "--lora-targets", "attn,mlp", "--lr", "1e-2", "--max-iters", "2"]
    result = run_cli(
        "finetune", "-c", str(base), "--data", str(data), *lora, *FAST, "--out", str(tmp_path / "run")
    )
    assert result.exit_code == 0, result.stderr
    assert run_cli("quantize", str(tmp_path / "run"), "--out", str(tmp_path / "int8")).exit_code == 0
    config = ckpt.read_config(tmp_path / "int8")
    assert "lora" not in config and "base" not in config and config.get("chat_template") is not None
    merged = run_cli("merge-lora", str(tmp_path / "run"), "--out", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.stderr
    args = ("--max-new-tokens", "8", "--temperature", "0", "--json")
    want = run_cli("chat", "-c", str(tmp_path / "merged"), "--quantize", "int8", *args, input="reverse abc\n")
    got = run_cli("chat", "-c", str(tmp_path / "int8"), *args, input="reverse abc\n")
    assert json.loads(got.stdout)["reply"] == json.loads(want.stdout)["reply"]


def test_refusals_are_one_line_errors(runs, tmp_path):
    int8 = str(runs / "int8")
    assert_one_line_error(run_cli("quantize", int8, "--out", str(tmp_path / "x")), "int8 checkpoint already")
    assert_one_line_error(run_cli("quantize", str(runs / "fp32"), "--out", str(runs / "fp32")), "--out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert_one_line_error(
        run_cli("quantize", str(runs / "fp32"), "--out", str(tmp_path / "full")), "not a checkpoint"
    )
    lstm = ModelConfig(arch="lstm", vocab_size=257, n_layer=1, n_embd=16, block_size=16)
    tokenizer = BPETokenizer([], special_tokens={"<|endoftext|>": 256})
    ckpt.save_checkpoint(tmp_path / "lstm", LSTM(lstm), lstm, tokenizer)
    assert_one_line_error(
        run_cli("quantize", str(tmp_path / "lstm"), "--out", str(tmp_path / "l8")), "for the GPT"
    )
    assert_one_line_error(
        run_cli("generate", "-c", str(tmp_path / "lstm"), "--quantize", "int8"), "for the GPT"
    )
    # float weights needed: the exports and training refuse an int8 checkpoint, naming its source
    gpt2 = ModelConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=32)  # tied, as GPT-2
    gpt2_shaped = ckpt.save_checkpoint(tmp_path / "gpt2", GPT(gpt2), gpt2, tokenizer)
    assert run_cli("quantize", str(gpt2_shaped), "--out", str(tmp_path / "gpt2-int8")).exit_code == 0
    source = str(gpt2_shaped.resolve())
    export = run_cli("export-hf", str(tmp_path / "gpt2-int8"), "--out", str(tmp_path / "hf"))
    assert_one_line_error(export, "int8 checkpoint", "gpt export-hf", source)
    if importlib.util.find_spec("gguf") is not None:
        export = run_cli("export-gguf", str(tmp_path / "gpt2-int8"), "--out", str(tmp_path / "m.gguf"))
        assert_one_line_error(export, "int8 checkpoint", "gpt export-gguf", source)
    train = run_cli("train", "--data", str(SONNETS), "--init-from", int8, "--out", str(tmp_path / "t"))
    assert_one_line_error(train, "int8 checkpoint", "--init-from", str((runs / "fp32").resolve()))
    served = run_cli("serve", "-c", int8, "--quantize", "int8", "--adapter", f"a={int8}")
    assert_one_line_error(served, "--adapter", "--quantize")
