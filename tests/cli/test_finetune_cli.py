"""`gpt finetune`'s command line: its options, --epochs against --max-iters, resuming, and bad input as
one-line errors (no traceback): no base, a bad record (file and line), --skip-bad, conversations
longer than the context, plain text as data, a missing chat template."""

import json
import math
from pathlib import Path

import pytest

from gptcli.chat.template import ChatTemplate
from gptcli.config import TrainConfig
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import load_tokenizer
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import SONNETS, assert_one_line_error, run_cli

FAST = ["--eval-iters", "1", "--eval-interval", "1000", "--sample-tokens", "0", "--device", "cpu"]


def chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


WORDS = ["rose", "summer", "love", "time", "beauty", "heart", "eyes", "night", "day", "sweet"]
CHATS = [chat(f"say {w}", w) for w in WORDS * 2]  # 20: 2 held out (val_fraction 0.1), 18 to train on


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny char base (context 48), trained one step."""
    out = tmp_path_factory.mktemp("base") / "base"
    config = TrainConfig(
        data=[str(SONNETS)], tokenizer="char", data_cache=out.parent / "cache", batch_size=2, max_iters=1,
        model=dict(n_layer=1, n_head=2, n_embd=16, block_size=48), eval_iters=1, sample_tokens=0, device="cpu",
    )  # fmt: skip
    train(config, out)
    return out


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    write("chats.jsonl", CHATS)
    return tmp_path


def write(name: str, records: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    Path(name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Path(name)


def finetune(base: Path, *args: str, data: str = "chats.jsonl"):
    return run_cli("finetune", "-c", str(base), "--data", data, *FAST, *args)


def test_help_lists_the_fine_tuning_options_and_not_those_a_base_fixes():
    result = run_cli("finetune", "--help")
    assert result.exit_code == 0
    text = result.stdout
    for option in ("--checkpoint", "--data", "--format", "--chat-template", "--train-on-prompt", "--no-pack",
                   "--skip-bad", "--epochs", "--max-iters", "--lr", "--resume", "--out", "--val-fraction"):  # fmt: skip
        assert option in text, option
    for option in ("--n-layer", "--block-size", "--tokenizer", "--init-from", "--text-field"):
        assert option not in text, option
    assert "(default: 0.0001)" in text  # --lr: fine-tuning's default, not pre-training's
    assert "(default: lr/10)" in text  # --min-lr follows --lr, as in gpt train
    assert "2000" not in text  # --max-iters: the steps of --epochs unless given


def test_epochs_set_the_steps_and_max_iters_overrides_them(work, base):
    # --no-pack: one row per conversation, so 2 epochs of 18 rows in batches of 4 are 9 steps
    result = finetune(base, "--no-pack", "--epochs", "2", "--batch-size", "4", "--out", "two", "-q")
    assert result.exit_code == 0, result.stderr
    assert read_run_config("two").max_iters == math.ceil(2 * 18 / 4) == 9
    result = finetune(
        base, "--no-pack", "--epochs", "2", "--max-iters", "3", "--batch-size", "4", "--out", "three"
    )
    assert result.exit_code == 0, result.stderr
    assert read_run_config("three").max_iters == 3 and read_run_config("three").chat.epochs is None
    assert "done: 3 steps" in result.stderr
    result = finetune(base, "--no-pack", "--batch-size", "6", "--out", "default", "-q")  # 3 epochs by default
    assert result.exit_code == 0, result.stderr
    assert read_run_config("default").max_iters == 9
    assert_one_line_error(finetune(base, "--epochs", "0"), "--epochs 0", "above 0")  # not the default 3


def test_resume_continues_a_fine_tune_and_takes_no_conversation_options(work, base):
    result = finetune(base, "--max-iters", "2", "--out", "run", "-q")
    assert result.exit_code == 0, result.stderr
    assert_one_line_error(run_cli("finetune", "--resume", "run", "--epochs", "3"), "leave out --epochs")
    other = run_cli("finetune", "--resume", "run", "-c", str(base), "--data", "other.jsonl", "--no-pack")
    assert_one_line_error(
        other, "--resume continues a fine-tune as it was", "--checkpoint, --data, --pack/--no-pack"
    )
    assert_one_line_error(run_cli("finetune", "--resume", "run"), "already at step 2", "--max-iters")
    result = run_cli("finetune", "--resume", "run", "--max-iters", "4", "-q")
    assert result.exit_code == 0, result.stderr
    assert read_run_config("run").max_iters == 4 and read_run_config("run").chat is not None
    result = run_cli("train", "--resume", "run", "--max-iters", "5", "-q")  # gpt train resumes it as well
    assert result.exit_code == 0, result.stderr
    config = read_run_config("run")
    assert config.max_iters == 5 and config.chat is not None
    assert ckpt.read_config(ckpt.list_checkpoints("run")[-1])["chat_template"] == config.chat.template


LLAMA3 = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def test_a_jinja_chat_template_is_trained_with_and_saved(work, base):
    Path("llama.jinja").write_text(LLAMA3, encoding="utf-8")
    result = finetune(base, "--chat-template", "llama.jinja", "--max-iters", "1", "--out", "run", "-q")
    assert result.exit_code == 0, result.stderr
    newest = ckpt.list_checkpoints("run")[-1]
    template = ChatTemplate.from_json(ckpt.read_config(newest)["chat_template"])
    assert template.kind == "jinja" and template.source == LLAMA3 and template.end_token == "<|eot_id|>"
    tokenizer = load_tokenizer(newest / ckpt.TOKENIZER)
    added = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert template.special_tokens == added and set(added) <= set(tokenizer.special_tokens)
    assert (
        tokenizer.vocab_size
        == load_tokenizer(ckpt.list_checkpoints(base)[-1] / ckpt.TOKENIZER).vocab_size + 3
    )


def test_no_base_is_an_error(work):
    assert_one_line_error(run_cli("finetune", "--data", "chats.jsonl"), "--checkpoint")
    assert_one_line_error(
        run_cli("finetune", "-c", "nowhere", "--data", "chats.jsonl", *FAST), "nowhere", "not found"
    )


def test_a_bad_record_names_its_file_and_line(work, base):
    write("bad.jsonl", [CHATS[0], chat("hi", "there"), {"messages": [{"role": "bot", "content": "x"}]}])
    assert_one_line_error(finetune(base, data="bad.jsonl"), "bad.jsonl line 3", "unknown role 'bot'")
    write("bad.jsonl", [CHATS[0], "{not json"])
    assert_one_line_error(finetune(base, data="bad.jsonl"), "bad.jsonl line 2")
    write(
        "bad.jsonl",
        [CHATS[0], {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}],
    )
    assert_one_line_error(finetune(base, data="bad.jsonl"), "bad.jsonl line 2")
    assert not Path("out").exists()  # nothing written


def test_skip_bad_counts_the_bad_records_and_goes_on(work, base):
    bad = [{"messages": [{"role": "bot", "content": "x"}]}, {"prompt": 3, "completion": "x"}, "{not json"]
    write("mixed.jsonl", [*CHATS[:6], *bad, *CHATS[6:]])
    result = finetune(base, "--skip-bad", "--max-iters", "2", "--out", "run", data="mixed.jsonl")
    assert result.exit_code == 0, result.stderr
    assert "3 bad record(s) skipped; first: mixed.jsonl line 7" in result.stderr.replace(str(work) + "/", "")
    assert "done: 2 steps" in result.stderr


def test_conversations_longer_than_the_context_are_dropped_and_counted_and_all_of_them_is_an_error(
    work, base
):
    long = chat("say " + "rose " * 12, "rose")  # more than the base's 48 + 1 tokens
    write("some.jsonl", [*CHATS, long, long])
    result = finetune(base, "--max-iters", "1", "--val-fraction", "0.05", "--out", "some", data="some.jsonl")
    assert result.exit_code == 0, result.stderr
    assert "are longer than the context (49 tokens) and were dropped" in result.stderr
    write("long.jsonl", [long] * 3)
    assert_one_line_error(
        finetune(base, data="long.jsonl"),
        "every training conversation is longer than the context (49 tokens)",
    )


def test_plain_text_as_data_is_an_error(work, base):
    assert_one_line_error(finetune(base, data=str(SONNETS)), "sonnets.txt is a text file", "JSONL")


def test_a_missing_or_bad_chat_template_is_an_error(work, base):
    assert_one_line_error(
        finetune(base, "--chat-template", "nope.jinja"), "chat template not found: nope.jinja"
    )
    Path("broken.jinja").write_text("{% for m in messages %}{{ m['content'] }", encoding="utf-8")
    assert_one_line_error(finetune(base, "--chat-template", "broken.jinja"), "broken.jinja")


def test_a_character_the_char_base_does_not_know_is_an_error_naming_the_record(work, base):
    write("digits.jsonl", [*CHATS, chat("add 2 and 3", "5")])
    assert_one_line_error(finetune(base, data="digits.jsonl"), "digits.jsonl line 21", "'2'")
