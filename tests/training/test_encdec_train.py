"""Training an encoder-decoder on prompt/completion pairs: padded batches, exact resume, a task learned."""

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from gptcli.config import TrainConfig
from gptcli.data.pairs import start_id
from gptcli.errors import GptError
from gptcli.evaluate_pairs import greedy_encdec
from gptcli.loading import load_newest
from gptcli.models import build_model
from gptcli.storage import checkpoint as ckpt
from gptcli.training.data_source import model_inputs
from gptcli.training.inputs import build_tokenizer
from gptcli.training.pair_data import load_pair_data
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import Trainer, train
from tests.training.test_trainer import assert_same_weights, final_weights, keep_only_checkpoint, losses

TINY = dict(arch="encdec", n_layer=2, n_head=2, n_embd=64, block_size=16, dropout=0.0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


def reverse_words(length: int = 4, letters: str = "abcdef") -> list[str]:
    words = ["".join(p) for p in itertools.product(letters, repeat=length)]
    random.Random(0).shuffle(words)
    return words


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def config_for(data: Path, **options) -> TrainConfig:
    model = TINY | options.pop("model", {})
    settings = dict(batch_size=4, max_iters=8, eval_interval=4, eval_iters=1, sample_tokens=0, device="cpu")
    return TrainConfig(data=[str(data)], tokenizer="char", model=model, **(settings | options))


# ---- batches ----------------------------------------------------------------------------------


def test_a_batch_pads_prompts_and_targets_after_their_tokens(tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", [("abc", "x"), ("a", "xyz"), ("abcdef", "yy")])
    config = config_for(data, val_fraction=0.0)
    tokenizer = build_tokenizer(config)
    assert set("abcdefxyz") <= set(tokenizer.decode(list(range(tokenizer.n_ordinary))))  # the pairs' chars
    eot = start_id(tokenizer)
    rows = load_pair_data(config, tokenizer, []).train
    x, y, inputs = rows.batch([0, 1])
    src, mask = inputs["src"], inputs["src_mask"]
    assert src.shape == mask.shape == (2, 3)  # cut to the longest prompt of the batch
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert tokenizer.decode(src[0].tolist()) == "abc" and tokenizer.decode(src[1, :1].tolist()) == "a"
    assert x.shape == y.shape == (2, 4)  # [eot] + "xyz": the longest target's 4 inputs
    assert x[:, 0].tolist() == [eot, eot]
    assert y[0].tolist() == [*tokenizer.encode("x"), eot, -1, -1]  # padding is never learned
    assert y[1].tolist() == [*tokenizer.encode("xyz"), eot]
    assert x[1, 1:].tolist() == tokenizer.encode("xyz")
    _, _, kwargs = model_inputs((x, y, inputs), lambda t: t)
    assert set(kwargs) == {"src", "src_mask"}


def test_a_padded_batch_gives_each_pair_the_loss_it_has_alone(tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", [("abc", "x"), ("a", "xyz")])
    config = config_for(data, val_fraction=0.0)
    tokenizer = build_tokenizer(config)
    rows = load_pair_data(config, tokenizer, []).train
    model = build_model(config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})).eval()
    x, y, inputs = rows.batch([0, 1])
    logits, _ = model(x, y, **inputs)
    for row in range(2):
        alone_x, alone_y, alone = rows.batch([row])
        alone_logits, _ = model(alone_x, alone_y, **alone)
        n = alone_x.size(1)
        torch.testing.assert_close(logits[row, :n], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_pairs_longer_than_the_context_are_dropped_and_counted(tmp_path):
    pairs = [("ab", "ba")] * 6 + [("abcdefabcdefabcdefab", "x"), ("a", "b" * 16)]  # prompt 20, target 18
    config = config_for(write_pairs(tmp_path / "p.jsonl", pairs), val_fraction=0.0)
    notes: list[str] = []
    data = load_pair_data(config, build_tokenizer(config), notes)
    assert len(data.train) == 6
    assert any(n.startswith("2 of 8 training pairs are longer than the context") for n in notes), notes


def test_every_pair_too_long_is_an_error_naming_the_context(tmp_path):
    config = config_for(write_pairs(tmp_path / "p.jsonl", [("a" * 20, "b")] * 3), val_fraction=0.0)
    with pytest.raises(GptError, match="every training pair is longer than the context.*block_size 16"):
        load_pair_data(config, build_tokenizer(config), [])


@pytest.mark.parametrize("name, text", [("c.txt", "plain text\n"), ("c.jsonl", '{"text": "plain"}\n')])
def test_plain_text_is_refused_for_an_encoder_decoder(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(GptError, match="an encoder-decoder trains on prompt/completion pairs"):
        Trainer(config_for(tmp_path / name), tmp_path / "run")


# ---- the run: checkpoints, resume -------------------------------------------------------------


def test_an_encdec_run_resumed_ends_as_an_uninterrupted_one(tmp_path):
    words = reverse_words(3)[:60]
    data = write_pairs(tmp_path / "p.jsonl", [(w, w[::-1]) for w in words])
    config = config_for(data, model={"dropout": 0.1}, sample_tokens=4)  # dropout: the RNG restored too
    full = train(config, tmp_path / "full")
    assert full.step == 8 and full.val_loss is not None
    train(config, tmp_path / "part")
    keep_only_checkpoint(tmp_path / "part", "step_0000004")
    resumed = train(read_run_config(tmp_path / "part"), tmp_path / "part", resume=True)
    assert resumed.step == 8
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # the same batches, bit for bit
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    saved = ckpt.read_config(ckpt.list_checkpoints(tmp_path / "full")[-1])
    assert saved["model"].arch == "encdec"
    assert "chat_template" not in saved  # not a chat model: the engine must not render prompts
    samples = [json.loads(line).get("sample") for line in (tmp_path / "full/metrics.jsonl").open()]
    assert any(s and s.startswith("prompt: ") and "\ncompletion: " in s for s in samples), samples


# ---- a task, learned --------------------------------------------------------------------------


def exact_match(model, tokenizer, words: list[str]) -> float:
    """Greedy completions (the end token included) that are exactly the word reversed, then the end."""
    end = start_id(tokenizer)
    completions = greedy_encdec(model.eval(), [tokenizer.encode(w) for w in words], [8] * len(words), end)
    return sum(c == [*tokenizer.encode(w[::-1]), end] for c, w in zip(completions, words)) / len(words)


def test_a_tiny_encoder_decoder_learns_to_reverse_held_out_strings(tmp_path, capsys):
    words = reverse_words(4)  # 1296 words of a..f: 600 to learn from, 40 never seen
    held_out, learned = words[:40], words[40:640]
    data = write_pairs(tmp_path / "p.jsonl", [(w, w[::-1]) for w in learned])
    config = config_for(
        data, batch_size=16, max_iters=200, lr=3e-3, warmup_iters=10, eval_interval=100_000, val_fraction=0.0
    )
    trainer = Trainer(config, tmp_path / "run")
    before = exact_match(trainer.raw_model, trainer.tokenizer, held_out)
    trainer.train()
    model, tokenizer, _, _ = load_newest(tmp_path / "run")
    after = exact_match(model, tokenizer, held_out)
    with capsys.disabled():
        print(f"\nencdec reverse, 40 held-out strings: exact match {before:.2f} (untrained) -> {after:.2f}")
    assert before <= 0.05
    assert after >= 0.8  # measured: 1.00 (3 seeds)
