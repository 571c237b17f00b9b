"""--resume past a damaged newest checkpoint (issue 15): it says so, continues from the newest intact
one, and, since resume is exact, still ends with the weights of the uninterrupted run."""

import shutil

from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import assert_one_line_error, run_cli
from tests.training.test_trainer import assert_same_weights, final_weights, losses, tiny


def flip_a_bit(path, at: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x04
    path.write_bytes(bytes(data))


def test_resume_passes_over_a_damaged_checkpoint_and_reaches_the_uninterrupted_weights(tmp_path):
    config = tiny(tmp_path, max_iters=12, eval_interval=4, sample_tokens=0)
    train(config, tmp_path / "full")
    part = tmp_path / "part"
    train(config, part)  # checkpoints at 4, 8, 12: make it look as if it crashed after step 8 ...
    shutil.rmtree(part / "checkpoints" / "step_0000012")
    flip_a_bit(part / "checkpoints" / "step_0000008" / "train_state.safetensors")  # ... and 8 rotted
    reports = []
    resumed = train(read_run_config(part), part, resume=True, report=lambda e, d: reports.append((e, d)))
    notes = next(d["notes"] for e, d in reports if e == "info")
    assert any("step_0000008 is damaged" in n and "train_state.safetensors" in n for n in notes), notes
    assert any("resumed from" in n and "step_0000004" in n for n in notes), notes
    assert resumed.step == 12
    assert losses(part) == losses(tmp_path / "full")
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(part))


def test_resume_when_every_checkpoint_is_damaged_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny(tmp_path, max_iters=4, eval_interval=2, sample_tokens=0)
    train(config, tmp_path / "run")
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        flip_a_bit(checkpoint / "model.safetensors")
    result = run_cli("train", "--resume", str(tmp_path / "run"), "--max-iters", "6")
    assert_one_line_error(result, "every checkpoint is damaged", "checksum mismatch", "--overwrite")
