"""torchrun with gloo on CPU: one process and two give the same run; resume across process counts."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from gptcli.storage import checkpoint as ckpt
from tests.conftest import SONNETS

TINY = [
    "--data", str(SONNETS), "--tokenizer", "char", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
    "--block-size", "16", "--batch-size", "4", "--grad-accum", "2", "--eval-interval", "4", "--eval-iters", "2",
    "--log-interval", "1", "--sample-tokens", "8", "--device", "cpu", "--dropout", "0",
]  # fmt: skip


def gpt(tmp_path, *args, procs=1):
    """Run `gpt ARGS` as a user would: plainly, or under torchrun with `procs` processes."""
    launch = [sys.executable, "-m", "gptcli"]
    if procs > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "gptcli",
        ]
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launch, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )


def losses(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def weights(run):
    return load_file(ckpt.list_checkpoints(run)[-1] / ckpt.WEIGHTS)


def assert_same_run(a, b):
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    for step in la:
        assert abs(la[step] - lb[step]) <= 1e-5 * abs(la[step]), (step, la[step], lb[step])
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_two_processes_train_like_one_and_only_rank_0_writes(tmp_path):
    one = gpt(tmp_path, "train", *TINY, "--max-iters", "8", "--out", "one")
    two = gpt(tmp_path, "train", *TINY, "--max-iters", "8", "--out", "two", procs=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two")
    # rank 0 alone logs and writes: one line per step, one done line, one set of checkpoints
    assert sorted(losses(tmp_path / "two")) == list(range(1, 9))
    assert sum(1 for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 8 + 2
    assert sum(line.startswith("done") for line in two.stderr.splitlines()) == 1
    assert [d.name for d in ckpt.list_checkpoints(tmp_path / "two")] == ["step_0000004", "step_0000008"]


def test_resume_under_two_processes_and_across_process_counts(tmp_path):
    for name, first, then in (("a", 2, 2), ("b", 2, 1)):
        started = gpt(tmp_path, "train", *TINY, "--max-iters", "4", "--out", name, procs=first)
        assert started.returncode == 0, started.stderr
        # the schedule follows max_iters: resume with the run's max_iters raised, as a user would
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["max_iters"] = 8
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        resumed = gpt(tmp_path, "train", "--resume", name, procs=then)
        assert resumed.returncode == 0, resumed.stderr
    # a run first trained to 4 of 8 steps has another lr schedule than one planned for 8 from the
    # start; so compare the resumed runs with each other, which all planned 4 then 8
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_grad_accum_must_split_evenly(tmp_path):
    result = gpt(
        tmp_path, "train", *TINY[:-8], "--grad-accum", "3", "--max-iters", "2", "--out", "x", procs=2
    )
    assert result.returncode != 0
    # each rank says it in one line (torchrun then adds its own report of the failed launch)
    assert result.stderr.count("error: --grad-accum 3 must be a multiple of the 2 processes") == 2


def test_fsdp_trains_like_one_process_and_resumes_in_the_same_format(tmp_path):
    one = gpt(tmp_path, "train", *TINY, "--max-iters", "8", "--out", "one")
    sharded = gpt(tmp_path, "train", *TINY, "--max-iters", "8", "--out", "fs", "--fsdp", procs=2)
    assert one.returncode == 0, one.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert_same_run(tmp_path / "one", tmp_path / "fs")  # and the same single-file checkpoint format
    # a sharded run stopped at 4 resumes sharded; a plain run resumes from a sharded checkpoint
    for name, procs, extra in (("f2", 2, ["--fsdp"]), ("p1", 1, [])):
        started = gpt(tmp_path, "train", *TINY, "--max-iters", "4", "--out", name, *extra, procs=procs)
        assert started.returncode == 0, started.stderr
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["max_iters"] = 8
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert gpt(tmp_path, "train", "--resume", "f2", procs=2).returncode == 0
    assert gpt(tmp_path, "train", "--resume", "p1", procs=1).returncode == 0
    assert_same_run(tmp_path / "f2", tmp_path / "p1")


def test_fsdp_needs_torchrun(tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    result = run_cli(
        "train", *TINY, "--data-cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--fsdp"
    )
    assert_one_line_error(result, "--fsdp shards the model across processes", "torchrun")


def test_muon_under_fsdp_trains_like_one_process_and_saves_the_same_state(tmp_path):
    """FSDP2 shards Muon's matrices; DTensor gathers what its Newton-Schulz iterations multiply, so
    each update is the whole matrix's (to bf16 rounding: the iterations run in bf16)."""
    muon = [*TINY, "--optimizer", "muon", "--max-iters", "4"]
    one = gpt(tmp_path, "train", *muon, "--out", "one")
    sharded = gpt(tmp_path, "train", *muon, "--out", "fs", "--fsdp", procs=2)
    assert one.returncode == 0, one.stderr
    assert sharded.returncode == 0, sharded.stderr
    la, lb = losses(tmp_path / "one"), losses(tmp_path / "fs")
    assert la.keys() == lb.keys() and all(abs(la[s] - lb[s]) <= 1e-5 * la[s] for s in la), (la, lb)
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "fs")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-3, rtol=1e-3)
    states = [load_file(ckpt.list_checkpoints(tmp_path / r)[-1] / ckpt.STATE_TENSORS) for r in ("one", "fs")]
    assert states[0].keys() == states[1].keys() and any(k.startswith("muon.") for k in states[0])
    for k in states[0]:
        if k.startswith(("optim.", "muon.")):
            torch.testing.assert_close(states[0][k], states[1][k], atol=1e-4, rtol=1e-3)
