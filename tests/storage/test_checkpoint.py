"""Checkpoint directories: bit-exact round trip, atomic writes, clear errors for damaged files."""

import json

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import CharTokenizer
from gptcli.training.run_dir import tidy_checkpoints


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer(list("abcdefgh"), {"<|endoftext|>": 8})
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=8)
    model = GPT(config)
    path = ckpt.save_checkpoint(
        tmp_path / "run" / "checkpoints" / "step_0000010", model, config, tok, {"step": 10}
    )
    return path, model, tok


def test_round_trip_is_bit_exact_and_stores_no_wrapper_prefixes(saved):
    path, model, tok = saved
    loaded, loaded_tok, config = load_checkpoint(path)
    assert config["step"] == 10 and config["tokenizer_kind"] == "char"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded_tok.chars == tok.chars
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = model  # what torch.compile wraps
    assert all(not k.startswith("_orig_mod") for k in ckpt.model_weights(compiled_like))


def test_a_failed_save_leaves_nothing_half_written(saved, monkeypatch):
    path, model, tok = saved
    before = sorted(p.name for p in path.iterdir())
    monkeypatch.setattr(
        ckpt,
        "write_safetensors",
        lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")),
    )
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, model, model.config, tok)  # replacing the same step
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path.with_name("step_0000020"), model, model.config, tok)
    assert sorted(p.name for p in path.iterdir()) == before  # the old checkpoint survives
    assert [p.name for p in path.parent.iterdir()] == ["step_0000010"]  # no temp dirs left behind


def test_tidy_removes_unfinished_saves_and_puts_back_a_checkpoint_caught_between_renames(saved):
    path, model, tok = saved
    folder = path.parent
    unfinished = folder / ".step_0000020.abc123.tmp"
    ckpt.save_checkpoint(unfinished, model, model.config, tok)  # looks whole, but was never renamed in
    between = ckpt.save_checkpoint(folder / ".step_0000015.old", model, model.config, tok, {"step": 15})
    replaced = ckpt.save_checkpoint(folder / ".step_0000010.old", model, model.config, tok)  # step 10 exists
    assert [d.name for d in ckpt.list_checkpoints(folder.parent)] == ["step_0000010"]  # hidden: not listed
    tidy_checkpoints(folder.parent)
    assert not unfinished.exists() and not between.exists() and not replaced.exists()
    assert [d.name for d in ckpt.list_checkpoints(folder.parent)] == ["step_0000010", "step_0000015"]
    assert ckpt.read_config(folder / "step_0000015")["step"] == 15


def test_resolve_picks_newest_or_best(saved):
    path, model, tok = saved
    run = path.parent.parent
    ckpt.save_checkpoint(path.with_name("step_0000020"), model, model.config, tok, {"val_loss": 2.0})
    ckpt.save_checkpoint(path.with_name("step_0000030"), model, model.config, tok, {"val_loss": 3.0})
    (path.parent / ".step_0000040.abc.tmp").mkdir()  # a crashed save is ignored
    assert ckpt.resolve_checkpoint(run).name == "step_0000030"
    assert ckpt.resolve_checkpoint(run, best=True).name == "step_0000020"
    assert ckpt.resolve_checkpoint(path) == path


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 10), "corrupt or truncated"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
            "corrupt or truncated",
        ),
        (lambda d: (d / "config.json").write_text("{oops"), "invalid JSON"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"format": "other"})),
            "not a gptcli checkpoint",
        ),
        (lambda d: (d / "tokenizer.json").unlink(), "missing tokenizer.json"),
        (lambda d: _edit_config(d, n_embd=32), "shape"),
        (lambda d: _edit_config(d, n_head=3), "divisible"),
        (lambda d: _edit_config(d, vocab_size=20), "tokenizer has 9 tokens"),
    ],
)
def test_damaged_checkpoints_give_one_line_errors(saved, damage, message):
    path, _, _ = saved
    damage(path)
    with pytest.raises(GptError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def _edit_config(directory, **model_changes):
    config = json.loads((directory / "config.json").read_text())
    config["model"].update(model_changes)
    (directory / "config.json").write_text(json.dumps(config))
