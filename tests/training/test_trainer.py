"""The training loop: exact resume, Ctrl-C, non-finite losses, schedule, checkpoint retention."""

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.training.interrupt import TrainingInterrupted
from gptcli.training.run_dir import read_run_config
from gptcli.training.schedule import learning_rate
from gptcli.training.trainer import train
from tests.conftest import SONNETS


def tiny(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        data=[str(SONNETS)],
        tokenizer="char",
        data_cache=tmp_path / "cache",
        model=dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1),
        batch_size=4,
        max_iters=12,
        warmup_iters=2,
        eval_interval=6,
        eval_iters=2,
        log_interval=1,
        sample_tokens=8,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses(run_dir) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def final_weights(run_dir):
    return load_file(ckpt.list_checkpoints(run_dir)[-1] / ckpt.WEIGHTS)


def keep_only_checkpoint(run_dir, name: str) -> None:
    """Make a finished run look as if it had crashed right after checkpoint `name`."""
    for d in ckpt.list_checkpoints(run_dir):
        if d.name != name:
            shutil.rmtree(d)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full = train(tiny(tmp_path), tmp_path / "full")
    assert full.step == 12
    # a second run that "crashed" after its step-6 checkpoint: drop what came later, then resume
    part = tmp_path / "part"
    train(tiny(tmp_path), part)
    keep_only_checkpoint(part, "step_0000006")
    resumed = train(read_run_config(part), part, resume=True)
    assert resumed.step == 12
    expected, got = losses(tmp_path / "full"), losses(part)
    assert sorted(got) == list(range(1, 13))  # steps after 6 were dropped and redone, once each
    assert got == expected  # bit-for-bit equal floats
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(part))


def test_ctrl_c_saves_the_current_step_and_resume_finishes_exactly(tmp_path):
    train(tiny(tmp_path), tmp_path / "full")

    def interrupt_at_step_4(event, data):
        if event == "step" and data["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4") as info:
        train(tiny(tmp_path), run, report=interrupt_at_step_4)
    assert info.value.exit_code == 130
    assert [d.name for d in ckpt.list_checkpoints(run)] == ["step_0000004"]
    train(read_run_config(run), run, resume=True)
    assert losses(run) == losses(tmp_path / "full")
    assert_same_weights(final_weights(run), final_weights(tmp_path / "full"))


def test_a_damaged_token_cache_is_rebuilt_and_noted_never_trained_on(tmp_path):
    train(tiny(tmp_path, max_iters=3, eval_interval=3), tmp_path / "a")
    (tokens_bin,) = (tmp_path / "cache").rglob("train_000000.bin")  # the token store's one shard
    data = bytearray(tokens_bin.read_bytes())
    data[100] ^= 0x01  # the right size, one id changed
    tokens_bin.write_bytes(bytes(data))
    summary = train(tiny(tmp_path, max_iters=3, eval_interval=3), tmp_path / "b")
    assert any("does not match its checksum" in note for note in summary.notes), summary.notes
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # trained on the right ids


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, *args, **kwargs):
        logits, loss = forward(self, idx, targets, *args, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] >= 9:  # the 9th training batch: step 9
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(GptError, match="non-finite.*step 9.*step_0000006"):
        train(tiny(tmp_path), run)
    kept = ckpt.list_checkpoints(run)
    assert [d.name for d in kept] == ["step_0000006"]
    model, _, config = load_checkpoint(kept[0])
    assert config["step"] == 6 and all(torch.isfinite(p).all() for p in model.parameters())


def test_keeps_the_newest_checkpoints_and_the_best(tmp_path):
    run = tmp_path / "run"
    train(tiny(tmp_path, max_iters=10, eval_interval=2, keep_checkpoints=2), run)
    kept = [d.name for d in ckpt.list_checkpoints(run)]
    assert kept[-2:] == ["step_0000008", "step_0000010"]
    vals = {d.name: ckpt.read_config(d)["val_loss"] for d in ckpt.list_checkpoints(run)}
    best = ckpt.resolve_checkpoint(run, best=True)
    assert vals[best.name] == min(vals.values())
    assert len(kept) <= 3


def test_schedule_warms_up_then_decays_to_min_lr(tmp_path):
    config = tiny(tmp_path, lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    lrs = [learning_rate(s, config) for s in range(120)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1e-3
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:100]))
    assert lrs[100] == lrs[119] == pytest.approx(1e-4)


def test_grad_accum_equals_a_bigger_batch(tmp_path):
    """4 x 2 accumulated = 8 in one batch (no dropout, fp32): the same first loss and close weights."""
    base = dict(
        model=dict(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0), max_iters=3, sample_tokens=0
    )
    a = train(tiny(tmp_path, batch_size=8, grad_accum=1, **base), tmp_path / "a")
    b = train(tiny(tmp_path, batch_size=4, grad_accum=2, **base), tmp_path / "b")
    assert a.step == b.step == 3
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    # two draws of 4 windows from the sampler's generator are the same windows as one draw of 8
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_bf16_autocast_runs_on_cpu(tmp_path):
    summary = train(
        tiny(tmp_path, precision="bf16", max_iters=4, eval_interval=4, sample_tokens=4), tmp_path / "run"
    )
    assert summary.step == 4 and summary.val_loss is not None
    weights = final_weights(tmp_path / "run")
    assert all(t.dtype == torch.float32 for t in weights.values())  # autocast: weights stay fp32


def test_rope_gqa_window_rmsnorm_model_trains_and_reloads(tmp_path):
    model = dict(
        n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16, pos_emb="rope", window=8, norm="rmsnorm"
    )
    summary = train(tiny(tmp_path, model=model, max_iters=6, eval_interval=6), tmp_path / "run")
    loaded, _, config = load_checkpoint(summary.last_checkpoint)
    assert (
        config["model"].pos_emb == "rope" and config["model"].n_kv_head == 2 and config["model"].window == 8
    )


def test_activation_checkpointing_changes_memory_not_results(tmp_path):
    plain = train(tiny(tmp_path, max_iters=4, eval_interval=4), tmp_path / "plain")
    saving = train(
        tiny(tmp_path, max_iters=4, eval_interval=4, activation_checkpointing=True), tmp_path / "ckpt"
    )
    assert losses(tmp_path / "plain") == losses(tmp_path / "ckpt")  # dropout included: its RNG is replayed
    assert_same_weights(final_weights(tmp_path / "plain"), final_weights(tmp_path / "ckpt"))
    assert plain.val_loss == saving.val_loss
