"""`gpt finetune` end to end: exact resume after SIGKILL, a tiny model that learns a generated task
(exact match on held-out prompts, before and after), every kind of base, the loss mask of real
training batches, and one process against two under torchrun."""

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptcli.chat.template import ChatTemplate, render
from gptcli.config import SampleConfig, TokenizerTrainConfig, TrainConfig
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.generation import Engine
from gptcli.loading import load_newest
from gptcli.models import resize_vocab
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import load_tokenizer, with_special_tokens
from gptcli.tokenizers.export import export_tokenizer
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import Trainer, train
from tests.conftest import SONNETS, run_cli
from tests.training.test_trainer import assert_same_weights, final_weights, keep_only_checkpoint, losses

IM_END = "<|im_end|>"
FAST = ["--eval-iters", "1", "--log-interval", "1", "--device", "cpu", "-q"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


def make_base(out: Path, steps: int = 1, tokenizer: str = "char", **model) -> Path:
    """A tiny pre-trained base (a few steps on the sonnets): its run directory."""
    shape = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, dropout=0.0) | model
    config = TrainConfig(
        data=[str(SONNETS)], tokenizer=tokenizer, data_cache=out.parent / "cache", model=shape,
        batch_size=4, max_iters=steps, eval_iters=1, sample_tokens=0, device="cpu",
    )  # fmt: skip
    train(config, out)
    return out


@pytest.fixture(scope="module")
def char_base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "base", block_size=256)  # room for long conversations


def reverse_task(words: list[str], reply: bool = True) -> list[list[dict]]:
    """'reverse abc' -> 'cba', one exchange each."""
    out = []
    for w in words:
        messages = [{"role": "user", "content": f"reverse {w}"}]
        out.append(messages + ([{"role": "assistant", "content": w[::-1]}] if reply else []))
    return out


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    return path


def task_words(length: int, letters: str = "abcdefgh", seed: int = 0) -> list[str]:
    words = ["".join(p) for p in itertools.product(letters, repeat=length)]
    random.Random(seed).shuffle(words)
    return words


def finetune(*args: str) -> None:
    result = run_cli("finetune", *args)
    assert result.exit_code == 0, result.stderr


# ---- 1. exact resume after SIGKILL ------------------------------------------------------------


def test_a_fine_tune_resumed_after_sigkill_equals_an_uninterrupted_one(tmp_path, char_base):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:80]))
    args = [
        "-c", str(char_base), "--data", str(data), "--epochs", "6", "--batch-size", "2", "--lr", "3e-3",
        "--dropout", "0.1", "--eval-interval", "3", "--sample-tokens", "4", *FAST,
    ]  # fmt: skip
    finetune(*args, "--out", str(tmp_path / "full"))
    max_iters = read_run_config(tmp_path / "full").max_iters
    assert max_iters >= 30  # the epochs' steps: enough that the kill lands mid-run

    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "finetune", *args, "--out", "part"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(tmp_path / "part") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # right after its first checkpoint: no chance to save anything
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr
    newest = ckpt.list_checkpoints(tmp_path / "part")[-1]
    assert 0 < ckpt.read_config(newest)["step"] < max_iters, "the kill came too late to test resume"

    result = run_cli("finetune", "--resume", str(tmp_path / "part"), "-q")
    assert result.exit_code == 0, result.stderr
    assert read_run_config(tmp_path / "part").max_iters == max_iters  # the epochs' steps, kept
    got, expected = losses(tmp_path / "part"), losses(tmp_path / "full")
    assert sorted(got) == list(range(1, max_iters + 1))
    assert got == expected  # bit for bit
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))


def test_a_fine_tunes_dropout_is_used_from_its_first_step_and_resume_stays_exact(tmp_path, char_base):
    data = write_jsonl(tmp_path / "chats.jsonl", reverse_task(task_words(3)[:40]))
    args = ["-c", str(char_base), "--data", str(data), "--max-iters", "6", "--batch-size", "4",
            "--eval-interval", "3", "--sample-tokens", "0", *FAST]  # fmt: skip
    for name, dropout in (("off", "0"), ("on", "0.5"), ("part", "0.5")):
        finetune(*args, "--dropout", dropout, "--out", str(tmp_path / name))
    keep_only_checkpoint(tmp_path / "part", "step_0000003")  # as if it had died after step 3
    finetune("--resume", str(tmp_path / "part"), "-q")
    assert losses(tmp_path / "part") == losses(tmp_path / "on")  # the dropout masks restored too
    assert losses(tmp_path / "on")[1] != losses(tmp_path / "off")[1]  # dropout changes the first step


# ---- 2. a generated task, learned -------------------------------------------------------------


def exact_match(model, tokenizer, template: ChatTemplate, words: list[str]) -> float:
    """Greedy replies to 'reverse w' (the template's generation prompt, stopped at its end token)
    that are exactly w reversed and end there."""
    engine = Engine(model, tokenizer)
    right = 0
    for w, prompt in zip(words, reverse_task(words, reply=False)):
        ids = render(prompt, template, tokenizer, add_generation_prompt=True).ids
        settings = SampleConfig(max_new_tokens=len(w) + 2, temperature=0.0, stop=[template.end_token])
        sample = engine.generate(ids, settings).samples[0]
        right += sample.text == w[::-1] and sample.finish_reason == "stop"
    return right / len(words)


def test_a_tiny_model_fine_tuned_on_a_generated_task_beats_its_base_on_held_out_prompts(tmp_path, capsys):
    words = task_words(3)  # 512 three-letter words of a..h: 300 to learn from, 40 never seen
    held_out, learned = words[:40], words[40:340]
    data = write_jsonl(tmp_path / "reverse.jsonl", reverse_task(learned))
    # wide enough to learn it reliably: with n_embd 128 every word order tried (6) reached 1.00 in 135
    # steps; at n_embd 64, 2 heads, some stayed on the plateau of ~1.56 (a letter guessed) for 300+
    base = make_base(tmp_path / "base", n_layer=1, n_head=4, n_embd=128, block_size=128)
    finetune(
        "-c", str(base), "--data", str(data), "--out", str(tmp_path / "ft"), "--lr", "3e-3", "--epochs", "12",
        "--eval-interval", "100000", "--sample-tokens", "0", *FAST,
    )  # fmt: skip
    template = ChatTemplate.chatml()
    # the base as fine-tuning starts from it: its tokenizer given the template's tokens, the model grown
    model, tokenizer, _, _ = load_newest(base)
    tokenizer, _ = with_special_tokens(tokenizer, template.special_tokens)
    before = exact_match(resize_vocab(model, tokenizer.vocab_size), tokenizer, template, held_out)
    model, tokenizer, config, _ = load_newest(tmp_path / "ft")
    assert ChatTemplate.from_json(config["chat_template"]) == template
    after = exact_match(model, tokenizer, template, held_out)
    with capsys.disabled():
        print(f"\nreverse, 40 held-out prompts: exact match {before:.2f} (base) -> {after:.2f} (fine-tuned)")
    assert before <= 0.05
    assert after >= 0.8  # measured: 1.00


# ---- 3. every kind of base --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory) -> Path:
    """A small GPT-2-pattern BPE (300 tokens, <|endoftext|> the last)."""
    tokenizer = train_tokenizer(
        TokenizerTrainConfig(files=[str(SONNETS)], vocab_size=300, pattern="gpt2")
    ).tokenizer
    return tokenizer.save(tmp_path_factory.mktemp("bpe") / "bpe.json")


def gpt2_base(tmp_path: Path, bpe_file: Path) -> Path:
    """A tiny random HF GPT-2 (built locally, no network) with our BPE, through `gpt load-gpt2`."""
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(bpe_file)
    torch.manual_seed(0)
    shape = dict(n_layer=1, n_head=2, n_embd=32, n_positions=64, activation_function="gelu_new")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=tokenizer.vocab_size, **shape))
    model.save_pretrained(tmp_path / "hf")
    export_tokenizer(tokenizer, "hf", tmp_path / "hf")
    result = run_cli("load-gpt2", str(tmp_path / "hf"), "--out", str(tmp_path / "base"), "-q")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "base"


BASES = {
    "char": {},
    "bpe": {"tokenizer": "BPE"},
    "rope": {"pos_emb": "rope"},
    "gqa": {"n_head": 4, "n_kv_head": 2},
    "window": {"window": 8},
    "sinusoidal-rmsnorm": {"pos_emb": "sinusoidal", "norm": "rmsnorm"},
}


@pytest.mark.parametrize("kind", [*BASES, "gpt2"])
def test_fine_tuning_starts_from_every_kind_of_base(tmp_path, kind, bpe_file):
    if kind == "gpt2":
        base = gpt2_base(tmp_path, bpe_file)
    else:
        shape = dict(BASES[kind])
        tokenizer = str(bpe_file) if shape.pop("tokenizer", None) else "char"
        base = make_base(tmp_path / "base", tokenizer=tokenizer, **shape)
    _, base_tokenizer, base_config, _ = load_newest(base)
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"},
         {"role": "assistant", "content": "A rose."}, {"role": "user", "content": "And thee?"},
         {"role": "assistant", "content": "The same."}],
        [{"role": "user", "content": "Shall I compare thee?"}, {"role": "assistant", "content": "To summer."}],
    ] * 4  # fmt: skip
    data = write_jsonl(tmp_path / "chats.jsonl", conversations)
    finetune(
        "-c", str(base), "--data", str(data), "--out", str(tmp_path / "ft"), "--max-iters", "3",
        "--eval-interval", "3", "--sample-tokens", "8", "--batch-size", "2", *FAST,
    )  # fmt: skip
    newest = ckpt.list_checkpoints(tmp_path / "ft")[-1]
    config = ckpt.read_config(newest)
    tokenizer = load_tokenizer(newest / ckpt.TOKENIZER)
    assert tokenizer.kind == base_tokenizer.kind
    assert tokenizer.vocab_size == base_tokenizer.vocab_size + 2  # <|im_start|>, <|im_end|>
    assert {"<|im_start|>", IM_END} <= set(tokenizer.special_tokens)
    assert config["chat_template"] == ChatTemplate.chatml().to_json()
    grown = base_config["model"].model_copy(update={"vocab_size": tokenizer.vocab_size})
    assert config["model"] == grown  # the base's shape, the vocabulary grown
    assert config["step"] == 3 and math.isfinite(config["train_loss"])
    assert all(math.isfinite(v) for v in losses(tmp_path / "ft").values())
    model, tokenizer, _, _ = load_newest(tmp_path / "ft")  # loads and replies
    ids = render(conversations[1][:1], ChatTemplate.chatml(), tokenizer, add_generation_prompt=True).ids
    Engine(model, tokenizer).generate(ids, SampleConfig(max_new_tokens=4, temperature=0.0))


# ---- 4. the loss mask of real training batches ------------------------------------------------

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"},
     {"role": "assistant", "content": "A rose."}, {"role": "user", "content": "And thee?"},
     {"role": "assistant", "content": "The same, my love."}],
    [{"role": "user", "content": "Shall I compare thee?"}, {"role": "assistant", "content": "To summer."}],
    [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Thou art more lovely."},
     {"role": "user", "content": "And more temperate?"}, {"role": "assistant", "content": "Yes."}],
]  # fmt: skip
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]  # a char base knows no digits
MANY = [[*c[:-1], {**c[-1], "content": f"{c[-1]['content']} {n}"}] for n in NUMBERS for c in CONVERSATIONS]


def trainer_for(tmp_path: Path, base: Path, **chat) -> Trainer:
    """The Trainer a fine-tune on MANY would run (set up, not trained): its rows and sampler."""
    data = write_jsonl(tmp_path / "chats.jsonl", MANY)
    config = TrainConfig(
        data=[str(data)], init_from=str(base), chat=chat, batch_size=4, max_iters=1, eval_iters=1,
        sample_tokens=0, device="cpu",
    )  # fmt: skip
    return Trainer(config, tmp_path / "run")


def documents(x: torch.Tensor, y: torch.Tensor, doc_ids: torch.Tensor | None):
    """(inputs, targets) of each conversation in a batch's rows (padding left out)."""
    for row in range(len(x)):
        ids = torch.zeros_like(x[row]) if doc_ids is None else doc_ids[row]
        for doc in ids.unique().tolist():
            at = ids == doc
            if doc_ids is None:
                at &= torch.arange(len(at)) < int((y[row] >= 0).nonzero().max()) + 1  # before the padding
            if (y[row][at] >= 0).any():
                yield x[row][at].tolist(), y[row][at].tolist()


def trained_text(tokenizer, targets: list[int]) -> str:
    return tokenizer.decode([t for t in targets if t >= 0])


def replies(conversation: list[dict]) -> str:
    return "".join(m["content"] + IM_END for m in conversation if m["role"] == "assistant")


def training_conversations(trainer: Trainer) -> list[list[dict]]:
    held_out = trainer.data.held_out
    return [c for c in MANY if c not in held_out]


def test_the_trained_targets_of_a_batch_are_exactly_the_assistant_replies_and_end_tokens(tmp_path, char_base):
    trainer = trainer_for(tmp_path, char_base)
    try:
        tokenizer, rows = trainer.tokenizer, trainer.data.train
        conversations = training_conversations(trainer)
        assert rows.packed and len(rows) < len(conversations)  # several conversations a row
        # every row of the epoch: each conversation once, its trained targets exactly its replies
        every = [trained_text(tokenizer, t) for _, t in documents(*rows.batch(list(range(len(rows)))))]
        assert sorted(every) == sorted(replies(c) for c in conversations)
        assert any(text.count(IM_END) == 2 for text in every)  # multi-turn: each reply and its end token
        # a training batch as the trainer draws it: each document a whole rendered conversation
        template = ChatTemplate.chatml()
        rendered = {tokenizer.decode(render(c, template, tokenizer).ids[:-1]): c for c in conversations}
        (batch,) = trainer.sampler.next_step(1)
        assert batch[2] is not None  # doc_ids: attention and positions stay in each conversation
        for inputs, targets in documents(*batch):
            conversation = rendered[tokenizer.decode(inputs)]
            assert trained_text(tokenizer, targets) == replies(conversation)
    finally:
        trainer.close()


def test_train_on_prompt_trains_every_token(tmp_path, char_base):
    trainer = trainer_for(tmp_path, char_base, train_on_prompt=True)
    try:
        tokenizer, rows = trainer.tokenizer, trainer.data.train
        template = ChatTemplate.chatml()
        whole = sorted(
            tokenizer.decode(render(c, template, tokenizer).ids[1:]) for c in training_conversations(trainer)
        )
        docs = list(documents(*rows.batch(list(range(len(rows))))))
        assert all(min(targets) >= 0 for _, targets in docs)  # nothing masked
        assert sorted(trained_text(tokenizer, t) for _, t in docs) == whole
    finally:
        trainer.close()


def test_without_packing_each_row_holds_one_conversation(tmp_path, char_base):
    trainer = trainer_for(tmp_path, char_base, pack=False)
    try:
        tokenizer, rows = trainer.tokenizer, trainer.data.train
        conversations = training_conversations(trainer)
        assert not rows.packed and len(rows) == len(conversations)
        x, y, doc_ids = trainer.sampler.next_step(1)[0]
        assert doc_ids is None and len(x) == 4
        all_rows = rows.batch(list(range(len(rows))))
        assert sorted(trained_text(tokenizer, t) for _, t in documents(*all_rows)) == sorted(
            replies(c) for c in conversations
        )
    finally:
        trainer.close()
    finetune(
        "-c", str(char_base), "--data", str(tmp_path / "chats.jsonl"), "--no-pack", "--max-iters", "2",
        "--eval-interval", "2", "--sample-tokens", "8", "--out", str(tmp_path / "ft"), *FAST,
    )  # fmt: skip
    assert sorted(losses(tmp_path / "ft")) == [1, 2]


# ---- 6. two processes under torchrun train like one -------------------------------------------


def test_two_processes_fine_tune_like_one(tmp_path, char_base):
    data = write_jsonl(tmp_path / "chats.jsonl", MANY)
    args = [
        "finetune", "-c", str(char_base), "--data", str(data), "--max-iters", "4", "--batch-size", "2",
        "--grad-accum", "2", "--eval-interval", "2", "--sample-tokens", "8", *FAST,
    ]  # fmt: skip
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, "-m", "gptcli", *args, "--out", "two"], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    finetune(*args[1:], "--out", str(tmp_path / "one"))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys() == {1, 2, 3, 4}
    assert all(abs(one[s] - two[s]) <= 1e-5 * one[s] for s in one), (one, two)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
