"""benchmarks/bench_finetune.py end to end at its tiniest: both sides (ours, TRL's SFTTrainer) run in
their own processes, two steps each, and the table and JSON line come out (the quality part, a
fourth process and greedy replies, is left out to keep it to seconds)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("trl")


def test_the_tiniest_run_prints_every_figure():
    argv = [sys.executable, "benchmarks/bench_finetune.py", "--small", "--steps", "2", "--warmup", "1",
            "--repeats", "1", "--quality-steps", "0", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    f = r["figures"]
    assert set(f) == {"ours_unpacked", "trl_unpacked", "ours_packed"}
    assert all(f[k]["tokens_per_s"][0] > 0 and f[k]["peak_rss_mb"][0] > 50 for k in f)
    # the same conversations in the same order, unpacked: both sides train the same tokens per step
    assert f["ours_unpacked"]["trained_per_step"] == f["trl_unpacked"]["trained_per_step"]
    assert "quality" not in r
    assert "packing gain" in done.stdout and "trl 1." in done.stdout
