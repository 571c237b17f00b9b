"""Run directories and checkpoints written before the package layout still load, generate, describe
and resume: tests/fixtures/old_run_v1 was written by commit 5bd6b80 (see its README.md).

The fixture's floats were computed on one CPU (an AMD EPYC, AVX2); another CPU's kernels round
differently (AVX-512, ARM, ATEN_CPU_CAPABILITY=default), so what this machine computes is compared
with them within a tolerance, and its tokens only where the choice is clear. What the new code
claims bit for bit (a resumed run equals one never stopped) compares two runs made here.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gptcli.data.prepare as prepare
from gptcli.config import SampleConfig
from gptcli.data.prepare import prepare_store
from gptcli.data.sources import find_sources
from gptcli.data.token_cache import cache_key
from gptcli.generation import Engine
from gptcli.generation.sampling import candidates, draw_noise
from gptcli.loading import describe_checkpoint, load_checkpoint
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import load_tokenizer
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.generation.test_engine import TIE, assert_greedy, logits_by_recomputation
from tests.training.test_trainer import assert_same_weights, final_weights, keep_only_checkpoint, losses

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "old_run_v1"
OLD_CHECKPOINTS = FIXTURE / "run" / "checkpoints"
CHECKPOINTS = ["step_0000003", "step_0000006"]
SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "ignore_eos")  # of generated.json

# The fixture's losses and weights against this machine's: measured 1.2e-7 (losses, relative) and
# 2.8e-7 (weights, absolute) apart on an Intel Xeon with AVX-512, 0.6e-7 and 1.5e-7 with
# ATEN_CPU_CAPABILITY=default. The tolerances leave ~70x room for other CPUs, and a real change
# (one more or one fewer AdamW step at lr 1e-3, another batch) moves them by 1e-3 or more.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 2e-5


def assert_close_losses(new: dict[int, float], old: dict[int, float]) -> None:
    assert new.keys() == old.keys()
    for step in old:
        assert new[step] == pytest.approx(old[step], rel=LOSS_RTOL, abs=0), step


def assert_close_weights(new, old) -> None:
    assert new.keys() == old.keys()
    for name in old:
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=WEIGHT_ATOL, msg=name)


def assert_follows(model, prompt: list[int], recorded: list[int], config: SampleConfig) -> None:
    """`recorded` ids (the old code's, on another CPU) are what `config` draws from this model here at
    every step whose choice is clear: teacher-forced along them, greedy picks the top logit unless the
    top two tie within TIE; a seeded draw replays the same noise (the exponential race picks the
    largest p / q) unless its top two ratios tie within a relative TIE."""
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    clear = 0
    for step, logits in enumerate(logits_by_recomputation(model, prompt, recorded)):
        if config.temperature == 0:
            scores = logits
            (first, second), tie = scores.topk(2).values, TIE
        else:
            probs, ids = candidates(logits[None], config.temperature, config.top_k, config.top_p)
            scores = (probs / draw_noise(probs, generator))[0]
            assert ids is None  # the fixture draws over the whole vocabulary: ratios indexed by id
            (first, second), tie = scores.topk(2).values, TIE * float(scores.max())
        if first - second > tie:
            assert int(scores.argmax()) == recorded[step], f"step {step}"
            clear += 1
    assert clear >= len(recorded) - 2, f"only {clear} of {len(recorded)} steps were clear choices"


@pytest.fixture
def old_run(tmp_path) -> Path:
    """The old run directory copied to tmp, its config.json pointed at a tmp copy of its corpus and a
    tmp token cache (the fixture holds "corpus.txt" and "cache" where the absolute paths were)."""
    shutil.copy(FIXTURE / "corpus.txt", tmp_path / "corpus.txt")
    run = Path(shutil.copytree(FIXTURE / "run", tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == ["corpus.txt"] and config["data_cache"] == "cache"
    config.update(data=[str(tmp_path / "corpus.txt")], data_cache=str(tmp_path / "cache"))
    (run / "config.json").write_text(json.dumps(config, indent=2))
    cache_the_old_ids(tmp_path / "corpus.txt", tmp_path / "cache")
    return run


def cache_the_old_ids(corpus: Path, cache: Path) -> None:
    """Put the ids the old code trained on in the token cache, where a run on `corpus` finds them.

    The old code put end-of-text only between files; a token store puts one after every document,
    so the corpus alone now gives one more id (and other batches). The old ids, in a store under
    the corpus's cache key, keep the comparison with the old code's numbers exact."""
    tokenizer = load_tokenizer(OLD_CHECKPOINTS / "step_0000006" / ckpt.TOKENIZER)
    sources = find_sources([corpus])
    encode = prepare._encode_block
    with pytest.MonkeyPatch.context() as patch:  # no document ends: no end-of-text
        patch.setattr(prepare, "_encode_block", lambda pieces: encode([(text, False) for text, _ in pieces]))
        prepare_store(cache / cache_key(sources, tokenizer), sources, tokenizer, val_fraction=0.0)


def set_max_iters(run: Path, max_iters: int) -> None:
    """Raise the run's max_iters in its config.json, as a user does to train a finished run further."""
    config = json.loads((run / "config.json").read_text())
    config["max_iters"] = max_iters
    (run / "config.json").write_text(json.dumps(config, indent=2))


def test_old_checkpoint_loads_and_generates_what_the_old_code_generated(old_run):
    assert [d.name for d in ckpt.list_checkpoints(old_run)] == CHECKPOINTS
    newest = ckpt.resolve_checkpoint(old_run)
    assert newest == old_run / "checkpoints" / "step_0000006"
    model, tokenizer, config = load_checkpoint(newest)
    assert config["step"] == 6 and config["model"].n_embd == 8 and tokenizer.kind == "char"
    assert_same_weights(ckpt.model_weights(model), load_file(newest / ckpt.WEIGHTS))

    engine = Engine(model, tokenizer, checkpoint=newest)
    recorded = json.loads((FIXTURE / "generated.json").read_text())  # the old Engine's output
    assert set(recorded) == {"greedy", "seeded"}
    for name, old in recorded.items():
        config = SampleConfig(**{k: old["config"][k] for k in SAMPLING})
        result = engine.generate(old["prompt"], config)
        assert len(result.samples[0].ids) == len(old["ids"]) == config.max_new_tokens, name
        assert result.samples[0].text == tokenizer.decode(result.samples[0].ids), name
        assert_follows(model, tokenizer.encode(old["prompt"]), old["ids"], config)
    # greedy past the 16-token context (the cache is cropped and refilled) equals recomputation
    greedy = engine.generate("Shall I", SampleConfig(max_new_tokens=24, temperature=0.0, ignore_eos=True))
    assert_greedy(greedy.samples[0].ids, model, tokenizer.encode("Shall I"))


def test_old_checkpoint_and_run_directory_are_described(old_run):
    saved = {n: json.loads((OLD_CHECKPOINTS / n / ckpt.CONFIG).read_text()) for n in CHECKPOINTS}
    info = describe_checkpoint(old_run)
    assert info["checkpoint"] == str(old_run / "checkpoints" / "step_0000006")
    assert info["model"] == saved["step_0000006"]["model"]
    assert info["step"] == 6
    assert info["train_loss"] == saved["step_0000006"]["train_loss"]
    assert info["val_loss"] == saved["step_0000006"]["val_loss"]
    weights = load_file(OLD_CHECKPOINTS / "step_0000006" / ckpt.WEIGHTS)
    assert info["parameters"] == sum(t.numel() for t in weights.values())
    assert info["tokenizer"] == {"kind": "char", "vocab_size": 54, "special_tokens": {"<|endoftext|>": 53}}
    assert info["files"] == {f.name: f.stat().st_size for f in (OLD_CHECKPOINTS / "step_0000006").iterdir()}
    assert set(info["files"]) == {*ckpt.REQUIRED, ckpt.STATE_JSON, ckpt.STATE_TENSORS}
    vals = {n: saved[n]["val_loss"] for n in CHECKPOINTS}
    assert info["run"]["checkpoints"] == [{"name": n, "val_loss": v} for n, v in vals.items()]
    assert info["run"]["best"] == min(vals, key=vals.get)
    assert info["run"]["best_val_loss"] == min(vals.values())
    older = describe_checkpoint(old_run / "checkpoints" / "step_0000003")  # a checkpoint itself
    assert older["step"] == 3 and older["val_loss"] == vals["step_0000003"] and "run" not in older


def test_old_run_resumed_further_equals_uninterrupted_runs(old_run, tmp_path):
    set_max_iters(old_run, 9)  # the schedule stays the same: lr_decay_iters is 9 in the old config
    resumed = train(read_run_config(old_run), old_run, resume=True)
    assert resumed.step == 9
    assert f"resumed from {old_run / 'checkpoints' / 'step_0000006'} at step 6" in resumed.notes
    assert sorted(losses(old_run)) == list(range(1, 10))

    # the old code's run of 9 steps, never stopped at 6 (the fixture's uninterrupted/): steps 1-6
    # were computed on the fixture's CPU, 7-9 here
    assert_close_losses(losses(old_run), losses(FIXTURE / "uninterrupted"))
    assert_close_weights(final_weights(old_run), load_file(FIXTURE / "uninterrupted" / ckpt.WEIGHTS))

    # the new code's own run of 9 steps from scratch, with the same config, does the same (that a
    # run resumed here equals one never stopped, bit for bit, is tests/training/test_trainer.py's)
    fresh = train(read_run_config(old_run), tmp_path / "fresh")
    assert fresh.step == 9
    assert_close_losses(losses(tmp_path / "fresh"), losses(FIXTURE / "uninterrupted"))
    assert_close_weights(final_weights(tmp_path / "fresh"), final_weights(old_run))


def test_old_run_resumed_from_its_older_checkpoint_redoes_the_old_steps_exactly(old_run):
    keep_only_checkpoint(old_run, "step_0000003")  # as if it had crashed after step 3
    resumed = train(read_run_config(old_run), old_run, resume=True)
    assert resumed.step == 6
    assert_close_losses(losses(old_run), losses(FIXTURE / "run"))  # steps 4-6 redone, once each
    assert_close_weights(final_weights(old_run), load_file(OLD_CHECKPOINTS / "step_0000006" / ckpt.WEIGHTS))
