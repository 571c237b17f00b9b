"""Checksums (issue 15): a single flipped bit anywhere in any file of a checkpoint is a one-line error
or, where the byte means nothing, an identical model; never a traceback, never a silently different
model. Old checkpoints without checksums load with a warning; a run directory's damaged newest
checkpoint is passed over (with --strict it is an error)."""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint, load_newest
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.storage import checkpoint_info
from gptcli.storage.checksums import CHECKSUMS, DamagedCheckpoint
from gptcli.tokenizers import CharTokenizer
from gptcli.training.train_state import read_train_state
from tests.conftest import assert_one_line_error, run_cli

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
FILES = [*ckpt.REQUIRED, ckpt.STATE_TENSORS, ckpt.STATE_JSON, CHECKSUMS]


def save(directory, seed=0, step=1, val_loss=None):
    torch.manual_seed(seed)
    tok = CharTokenizer(list("abcdef"), {"<|endoftext|>": 6})
    config = ModelConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config)
    state = {"optim.0.exp_avg": torch.randn(3, 4), "rng.cpu": torch.get_rng_state()}
    info = {"step": step, "val_loss": val_loss}
    ckpt.save_checkpoint(directory, model, config, tok, info, state, {"step": step, "optimizer": {}})
    return ckpt.model_weights(model)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "ck"
    weights = save(path)
    return {name: (path / name).read_bytes() for name in FILES}, weights


def flipped_copy(tmp_path, files, name, bit):
    directory = tmp_path / "flipped"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for n, content in files.items():
        data = bytearray(content)
        if n == name:
            data[bit // 8 % len(data)] ^= 1 << (bit % 8)
        (directory / n).write_bytes(bytes(data))
    return directory


def test_every_file_is_recorded_and_the_digests_are_sha256_of_the_bytes(tmp_path):
    import hashlib

    save(tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / CHECKSUMS).read_text())
    assert manifest["algorithm"] == "sha256" and set(manifest["files"]) == set(FILES) - {CHECKSUMS}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "ck" / name).read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["version"] == 2
    assert ckpt.verify_checkpoint(tmp_path / "ck") is True


@FUZZ
@given(name=st.sampled_from(FILES), bit=st.integers(0, 1 << 24))
def test_a_flipped_bit_is_an_error_or_changes_nothing(tmp_path, good, name, bit):
    files, weights = good
    directory = flipped_copy(tmp_path, files, name, bit)
    try:
        model, _, _ = load_checkpoint(directory)
    except GptError as e:
        assert "\n" not in str(e) and str(e)
    else:  # loaded: only a byte that carries no meaning may have changed
        assert name in (CHECKSUMS, ckpt.STATE_TENSORS, ckpt.STATE_JSON), name
        loaded = ckpt.model_weights(model)
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    try:  # what --resume and `gpt info --verify` check: every file
        ckpt.verify_checkpoint(directory)
        read_train_state(directory)
    except GptError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert name == CHECKSUMS, name  # e.g. the case of a hex digit: the digest is unchanged


def test_a_flipped_bit_in_tensor_data_is_named(tmp_path, good):
    files, _ = good
    directory = flipped_copy(tmp_path, files, ckpt.WEIGHTS, 8 * (len(files[ckpt.WEIGHTS]) - 3))
    with pytest.raises(DamagedCheckpoint, match=r"model\.safetensors: checksum mismatch"):
        load_checkpoint(directory)


def test_a_checkpoint_without_checksums_loads_with_a_warning(tmp_path):
    weights = save(tmp_path / "ck")
    (tmp_path / "ck" / CHECKSUMS).unlink()
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, "version": 1}))
    warnings = []
    model, _, _ = load_checkpoint(tmp_path / "ck", warn=warnings.append)
    assert len(warnings) == 1 and "no checksums" in warnings[0]
    assert all(torch.equal(ckpt.model_weights(model)[k], weights[k]) for k in weights)
    assert ckpt.verify_checkpoint(tmp_path / "ck") is False
    # a version-2 checkpoint that lost its manifest is not taken for an old one
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DamagedCheckpoint, match="missing checksums.json"):
        load_checkpoint(tmp_path / "ck")


def damaged_run(tmp_path):
    """A run directory with checkpoints at steps 1, 2, 3; the newest one's weights damaged."""
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save(run / "checkpoints" / f"step_{step:07d}", seed=step, step=step, val_loss=4.0 - step)
    path = run / "checkpoints" / "step_0000003" / ckpt.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    return run


def test_a_truncated_file_is_named_once_with_both_of_its_problems(tmp_path):
    directory = tmp_path / "ckpt"
    save(directory, seed=1, step=1, val_loss=1.0)
    weights = directory / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DamagedCheckpoint) as caught:
        load_checkpoint(directory)
    message = str(caught.value)
    assert message.count(str(weights)) == 1, message
    assert "checksum mismatch" in message and "corrupt or truncated safetensors file" in message


def test_a_run_directory_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    run = damaged_run(tmp_path)
    warnings = []
    *_, used = load_newest(run, warn=warnings.append)
    assert used.name == "step_0000002"
    assert len(warnings) == 1 and "step_0000003" in warnings[0] and "step_0000002" in warnings[0]
    *_, best = load_newest(run, best=True, warn=warnings.append)  # the best is step 3 too
    assert best.name == "step_0000002"
    with pytest.raises(DamagedCheckpoint, match="step_0000003"):
        load_newest(run, strict=True)
    with pytest.raises(DamagedCheckpoint):  # a checkpoint named directly is never swapped
        load_newest(run / "checkpoints" / "step_0000003", warn=warnings.append)
    assert ckpt.newest_intact(run, warn=warnings.append).name == "step_0000002"


def test_verify_reports_each_checkpoint_of_a_run(tmp_path):
    run = damaged_run(tmp_path)
    status = {d.name: s for d, s in checkpoint_info.verify_run(run)}
    assert status["step_0000001"] == status["step_0000002"] == "intact"
    assert status["step_0000003"].startswith("damaged:") and "model.safetensors" in status["step_0000003"]


def test_cli_verify_generate_and_eval_on_a_damaged_run(tmp_path):
    run = damaged_run(tmp_path)
    result = run_cli("info", "--verify", str(run))
    assert result.exit_code == 1
    assert "step_0000001  intact" in result.stdout and "step_0000003  damaged:" in result.stdout
    assert_one_line_error(result, "1 of 3 checkpoint(s) damaged: step_0000003")
    assert run_cli("info", "--verify", str(run / "checkpoints" / "step_0000002")).exit_code == 0
    verified = json.loads(run_cli("info", "--verify", "--json", str(run)).stdout)
    assert [c["status"] for c in verified["checkpoints"]] == ["intact", "intact", "damaged"]

    out = run_cli("generate", "-c", str(run), "--prompt", "ab", "--max-new-tokens", "3", "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["checkpoint"].endswith("step_0000002")
    assert "warning:" in out.stderr and "step_0000003" in out.stderr
    strict = run_cli("generate", "-c", str(run), "--prompt", "ab", "--max-new-tokens", "3", "--strict")
    assert_one_line_error(strict, "step_0000003", "checksum mismatch")

    (tmp_path / "text.txt").write_text("abcdefabcdef" * 4)
    evaluated = run_cli("eval", "-c", str(run), "-d", str(tmp_path / "text.txt"), "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["checkpoint"].endswith("step_0000002")
    assert_one_line_error(run_cli("eval", "-c", str(run), "-d", str(tmp_path / "text.txt"), "--strict"))
