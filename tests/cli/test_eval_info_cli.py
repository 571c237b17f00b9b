"""`gpt eval` (loss, perplexity, bits per byte) and `gpt info` on checkpoints and run directories."""

import json
import math

import numpy as np
import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import CharTokenizer
from tests.conftest import assert_one_line_error, run_cli

TEXT = "shall i compare thee to a summers day\nthou art more lovely and more temperate\n"


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer(sorted(set(TEXT)), {"<|endoftext|>": len(set(TEXT))})
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    for step, val in ((10, 3.1), (20, 2.9)):
        ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{step:07d}", model, config, tok,
                             {"step": step, "val_loss": val})  # fmt: skip
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path / "run", model, tok


def test_eval_reports_loss_perplexity_and_bits_per_byte(run_dir, tmp_path):
    run, model, tok = run_dir
    result = run_cli("eval", "-c", str(run), "--data", str(tmp_path / "text.txt"), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    ids = tok.encode(TEXT) + [tok.eot_id]  # the document, then end-of-text, as training sees it
    with torch.no_grad():  # the whole text fits one window: the loss is one forward pass
        _, expected = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert data["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert data["perplexity"] == pytest.approx(math.exp(data["loss"]), rel=1e-5)
    # every id but the first is predicted; the bytes are the text's, end-of-text has none
    assert data["tokens"] == len(ids) - 1 and data["bytes"] == len(TEXT.encode()) - 1
    assert data["bits_per_byte"] == pytest.approx(
        data["loss"] * data["tokens"] / math.log(2) / data["bytes"], rel=1e-5
    )
    plain = run_cli("eval", "-c", str(run), "--data", str(tmp_path / "text.txt"))
    header, row = plain.stdout.splitlines()  # a table of one checkpoint
    assert "loss" in header and "bits/byte" in header
    assert f"{data['loss']:.4f}" in row and f"{data['bits_per_byte']:.4f}" in row


def test_eval_windows_cover_every_token_once(run_dir, tmp_path):
    run, _, _ = run_dir
    long_text = tmp_path / "long.txt"
    long_text.write_text(TEXT * 10)  # several windows of 128 tokens, the last one partial
    data = json.loads(
        run_cli("eval", "-c", str(run), "--data", str(long_text), "--json", "--batch-size", "3").stdout
    )
    assert data["tokens"] == len(TEXT) * 10  # + end-of-text - the first, unpredicted, id


def test_eval_reads_any_corpus_format_each_document_then_end_of_text(run_dir, tmp_path):
    from gptcli.evaluate import evaluate_ids

    run, model, tok = run_dir
    docs = [TEXT, TEXT[:40], TEXT[40:]]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    result = run_cli("eval", "-c", str(run), "--data", str(tmp_path / "docs.jsonl"), "--text-field", "body",
                     "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    ids = [i for d in docs for i in tok.encode(d) + [tok.eot_id]]
    expected = evaluate_ids(model, tok, np.array(ids))
    assert data["loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert data["tokens"] == len(ids) - 1 and data["bytes"] == sum(len(d.encode()) for d in docs) - 1
    missing = run_cli("eval", "-c", str(run), "--data", str(tmp_path / "docs.jsonl"))
    assert_one_line_error(missing, "docs.jsonl line 1", 'no "text" field', "--text-field")


def test_info_on_a_run_and_on_a_checkpoint(run_dir):
    run, model, _ = run_dir
    data = json.loads(run_cli("info", str(run), "--json").stdout)
    assert data["checkpoint"].endswith("step_0000020") and data["step"] == 20
    assert data["parameters"] == sum(t.numel() for t in ckpt.model_weights(model).values())
    assert data["run"]["best"] == "step_0000020" and len(data["run"]["checkpoints"]) == 2
    assert set(data["files"]) == {"model.safetensors", "config.json", "tokenizer.json", "checksums.json"}
    text = run_cli("info", str(run / "checkpoints" / "step_0000010")).stdout
    assert "1 layers" in text and "char" in text and "step         10" in text


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["eval", "-c", "{run}", "--data", "{missing}"], ["corpus file not found"]),
        (["eval", "-c", "{run}", "--data", "{one_char}", "--max-tokens", "0"], ["at least 2 are needed"]),
        (["eval", "-c", "{run}", "--data", "{unknown}"], ["does not know", "'Z'"]),
        (["eval", "-c", "{nowhere}", "--data", "{missing}"], ["checkpoint not found"]),
        (["info", "{nowhere}"], ["checkpoint not found"]),
    ],
)
def test_bad_input(run_dir, tmp_path, args, fragments):
    run, _, _ = run_dir
    (tmp_path / "one.txt").write_text("s")
    (tmp_path / "unknown.txt").write_text("Zebra")
    places = {"run": str(run), "missing": str(tmp_path / "missing.txt"), "one_char": str(tmp_path / "one.txt"),
              "unknown": str(tmp_path / "unknown.txt"), "nowhere": str(tmp_path / "nowhere")}  # fmt: skip
    assert_one_line_error(run_cli(*[a.format(**places) for a in args]), *fragments)


JINJA = (
    "{% for message in messages %}{{ '<|user|>' if message['role'] == 'user' else '<|bot|>' }}"
    "{{ message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|bot|>' }}{% endif %}"
)


@pytest.mark.parametrize("kind", ["chatml", "jinja"])
def test_info_shows_a_fine_tunes_chat_template(tmp_path, kind):
    from gptcli.chat.template import ChatTemplate
    from gptcli.tokenizers import with_special_tokens

    template = ChatTemplate.chatml() if kind == "chatml" else ChatTemplate.from_jinja(JINJA)
    base = CharTokenizer(sorted(set(TEXT)), {"<|endoftext|>": len(set(TEXT))})
    tok, _ = with_special_tokens(base, template.special_tokens)
    config = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    path = ckpt.save_checkpoint(tmp_path / "chat", GPT(config), config, tok,
                                {"step": 5, "chat_template": template.to_json()})  # fmt: skip
    data = json.loads(run_cli("info", str(path), "--json").stdout)
    assert data["chat_template"] == template.to_json()  # the whole of it: the Jinja source too
    assert ChatTemplate.from_json(data["chat_template"]) == template
    text = run_cli("info", str(path)).stdout
    chat = next(line for line in text.splitlines() if line.startswith("chat "))
    if kind == "chatml":
        assert (
            chat == "chat         ChatML, special tokens <|im_start|> <|im_end|>, replies end with <|im_end|>"
        )
    else:
        assert chat == (
            f"chat         Jinja ({len(JINJA)} characters), special tokens <|user|> <|bot|> <|end|>, "
            "replies end with <|end|>"
        )


def test_info_on_a_checkpoint_without_a_chat_template_has_no_chat_line(run_dir):
    run, _, _ = run_dir
    assert "chat_template" not in json.loads(run_cli("info", str(run), "--json").stdout)
    assert not any(line.startswith("chat") for line in run_cli("info", str(run)).stdout.splitlines())
