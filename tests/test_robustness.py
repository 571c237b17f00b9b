"""Crash safety: a training run killed with SIGKILL at random moments always leaves a complete,
loadable newest checkpoint, and --resume then reaches the uninterrupted run's exact weights."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gptcli.loading import load_checkpoint
from gptcli.storage import checkpoint as ckpt
from tests.conftest import SONNETS

ARGS = [
    "train", "--data", str(SONNETS), "--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
    "--block-size", "16", "--batch-size", "4", "--max-iters", "150", "--eval-interval", "1", "--eval-iters", "1",
    "--sample-tokens", "0", "--device", "cpu", "--dropout", "0.1", "--keep-checkpoints", "2", "-q",
]  # fmt: skip


def run(tmp_path, *args, **kwargs):
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptcli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def final_weights(run_dir):
    return load_file(ckpt.list_checkpoints(run_dir)[-1] / ckpt.WEIGHTS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    proc = run(tmp, *ARGS, "--out", "full")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return final_weights(tmp / "full")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_never_loses_a_checkpoint(tmp_path, uninterrupted, seed):
    proc = run(tmp_path, *ARGS, "--out", "out")
    # wait until training has begun (the first checkpoint exists), then kill at a random moment
    deadline = time.time() + 120
    while not ckpt.list_checkpoints(tmp_path / "out") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = ckpt.list_checkpoints(tmp_path / "out")
    assert found, "no complete checkpoint survived"
    model, _, config = load_checkpoint(found[-1])  # the newest one loads, whole
    assert config["step"] >= 1
    if config["step"] < 150:  # killed mid-run (the usual case): continue it
        resumed = run(tmp_path, "train", "--resume", "out")
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    ours = final_weights(tmp_path / "out")
    for name, tensor in uninterrupted.items():
        assert torch.equal(ours[name], tensor), name
