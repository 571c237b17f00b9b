"""`gpt data show`: each conversation as fine-tuning renders it, trained tokens marked; --json gives
exactly the renderer's ids and mask; a fine-tuned checkpoint's own template is used; bad input is a
one-line error."""

import io
import json
import re

import pytest
from rich.console import Console

from gptcli.chat.show import OPEN, TRAINED_STYLE, highlighted, plain, trained_pieces
from gptcli.chat.template import ChatTemplate, render
from gptcli.cli.data import print_rendered
from gptcli.tokenizers import load_tokenizer, with_special_tokens
from tests.conftest import SONNETS, assert_one_line_error, run_cli

CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_start|> café"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"},
                  {"role": "assistant", "content": "No, thanks."}]},
    {"instruction": "Add", "input": "2 and 3", "output": "5"},
    {"conversations": [{"from": "human", "value": "Name a flower"}, {"from": "gpt", "value": "Rose"}]},
]  # fmt: skip
LLAMA3 = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A tmp cwd with a BPE tokenizer (tokenizer.json, no chat tokens) and chats.jsonl."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("tokenizer", "train", str(SONNETS), "--vocab-size", "300", "--quiet")
    assert result.exit_code == 0, result.stderr
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS), encoding="utf-8")
    return tmp_path


def chat_tokenizer(template=ChatTemplate.chatml()):
    tok, _ = with_special_tokens(load_tokenizer("tokenizer.json"), template.special_tokens)
    return tok


def show(*args: str):
    return run_cli("data", "show", "chats.jsonl", *args)


def test_json_gives_the_renderers_ids_mask_and_text(workdir):
    result = show("--tokenizer", "tokenizer.json", "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    tok = chat_tokenizer()
    from gptcli.chat.formats import to_messages

    assert len(lines) == 3
    for n, (line, record) in enumerate(zip(lines, CHATS), 1):
        expected = render(to_messages(record), ChatTemplate.chatml(), tok)
        assert line["ids"] == expected.ids and line["trained"] == expected.trained
        assert line["text"] == tok.decode(expected.ids) and line["record"].endswith(f"chats.jsonl line {n}")
    trained = [i for i, t in zip(lines[0]["ids"], lines[0]["trained"]) if t]
    assert tok.decode(trained) == "Hello!<|im_end|>No, thanks.<|im_end|>"
    assert lines[0]["ids"].count(tok.special_tokens["<|im_start|>"]) == 5  # the user's text stays text


def test_piped_text_marks_the_trained_spans(workdir):
    result = show("--tokenizer", "tokenizer.json", "--limit", "2")
    assert result.exit_code == 0, result.stderr
    assert "chats.jsonl line 1: " in result.stdout and "chats.jsonl line 3" not in result.stdout  # --limit
    assert (
        "<|im_start|>user\nHi <|im_start|> café<|im_end|>\n<|im_start|>assistant\n[[Hello!<|im_end|>]]\n"
        "<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n[[No, thanks.<|im_end|>]]\n"
    ) in result.stdout
    assert (
        "<|im_start|>user\nAdd\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n[[5<|im_end|>]]\n"
        in result.stdout
    )
    everything = show("--tokenizer", "tokenizer.json", "--train-on-prompt", "--limit", "1")
    assert "\n[[<|im_start|>system\nBe brief." in everything.stdout and everything.stdout.count(OPEN) == 1


def test_a_terminal_shows_the_trained_tokens_highlighted(workdir):
    tok = chat_tokenizer()
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rendered = render(conversation, ChatTemplate.chatml(), tok)
    pieces = trained_pieces(rendered, tok)
    assert pieces == [
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>", True),
        ("\n", False),
    ]
    text = highlighted(pieces)
    assert [(text.plain[s.start : s.end], s.style) for s in text.spans] == [
        ("Hello!<|im_end|>", TRAINED_STYLE)
    ]
    assert plain(pieces) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello!<|im_end|>]]\n"
    screen = io.StringIO()
    print_rendered(
        Console(file=screen, force_terminal=True, color_system="standard"), "x line 1", rendered, tok
    )
    shown = screen.getvalue()
    assert "\x1b[" in shown and "[[" not in re.sub("\x1b\\[[0-9;]*m", "", shown)
    assert f"--- x line 1: {len(rendered.ids)} tokens, {rendered.n_trained} trained" in shown
    before = shown[: shown.index("Hello!")]
    assert before.endswith("m") and "\x1b[" in before[-20:]  # a style starts right before the reply


def test_a_fine_tuned_checkpoint_renders_with_its_saved_template(workdir):
    import torch

    from gptcli.config import ModelConfig
    from gptcli.storage.checkpoint import save_checkpoint

    template = ChatTemplate.from_jinja(LLAMA3)
    tok = chat_tokenizer(template)
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=4, block_size=8)
    info = {"chat_template": template.to_json()}
    save_checkpoint(workdir / "run" / "checkpoints" / "step_000001", {"w": torch.zeros(1)}, config, tok, info)
    result = show("--checkpoint", "run", "--json", "--limit", "1")
    assert result.exit_code == 0, result.stderr
    [line] = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["text"].startswith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    trained = [i for i, t in zip(line["ids"], line["trained"]) if t]
    assert tok.decode(trained) == "Hello!<|eot_id|>No, thanks.<|eot_id|>"
    (workdir / "t.jinja").write_text(LLAMA3)  # the same template from a file, on the base tokenizer
    from_file = show("--tokenizer", "tokenizer.json", "--chat-template", "t.jinja", "--json", "--limit", "1")
    assert json.loads(from_file.stdout) == line


def test_bad_input_is_a_one_line_error(workdir):
    (workdir / "bad.jsonl").write_text(
        json.dumps(CHATS[1]) + "\n" + '{"messages": [{"role": "bot", "content": "x"}]}\n'
    )
    (workdir / "notes.txt").write_text("plain text\n")
    assert_one_line_error(run_cli("data", "show", "chats.jsonl"), "give either --checkpoint or --tokenizer")
    bad = run_cli("data", "show", "bad.jsonl", "-t", "tokenizer.json", "--json")
    assert_one_line_error(
        bad, "bad.jsonl line 2: message 1: unknown role 'bot' (expected system, user or assistant)"
    )
    assert len(bad.stdout.splitlines()) == 1  # the good record before it was shown
    skipped = run_cli("data", "show", "bad.jsonl", "-t", "tokenizer.json", "--skip-bad", "--json")
    assert skipped.exit_code == 0 and len(skipped.stdout.splitlines()) == 1
    assert "warning: 1 bad record(s) skipped; first: " in skipped.stderr
    assert_one_line_error(
        run_cli("data", "show", "notes.txt", "-t", "tokenizer.json"), "notes.txt is a text file"
    )
    assert_one_line_error(run_cli("data", "show", "chats.jsonl", "-t", "missing.json"), "tokenizer not found")
    assert_one_line_error(run_cli("data", "show", "missing.jsonl", "-t", "tokenizer.json"), "not found")
    wrong_format = run_cli("data", "show", "chats.jsonl", "-t", "tokenizer.json", "--format", "alpaca")
    assert_one_line_error(wrong_format, 'chats.jsonl line 1: no "instruction" field')
    bad_option = run_cli("data", "show", "chats.jsonl", "-t", "tokenizer.json", "--format", "chatml")
    assert_one_line_error(bad_option, "--format")
    assert bad_option.exit_code == 2
    assert_one_line_error(
        run_cli("data", "show", "chats.jsonl", "-t", "tokenizer.json", "--chat-template", "none.jinja"),
        "chat template not found: none.jinja",
    )
