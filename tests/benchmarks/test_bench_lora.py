"""benchmarks/bench_lora.py end to end at its tiniest: ours full, ours LoRA and PEFT each in their own
process, two steps each, then the serving part (4 adapters in one batch vs one merged model, where
`gpt serve --adapter` exists), and the table and JSON line come out."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("peft")


def test_the_tiniest_run_prints_every_figure():
    argv = [sys.executable, "benchmarks/bench_lora.py", "--small", "--steps", "2", "--warmup", "1",
            "--repeats", "1", "--serve-rounds", "1", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    t = r["train"]
    assert set(t) == {"ours_full", "ours_lora", "peft"}
    assert all(t[k]["step_s"][0] > 0 and t[k]["peak_rss_mb"][0] > 50 for k in t)
    # every side trains the same batch shape: 4 conversations of exactly 64 + 1 tokens, no padding
    assert {tuple(map(tuple, t[k]["shapes"])) for k in t} == {((4, 64),)}
    # PEFT trains what ours does: r 8 on c_attn and the 2 added tokens' rows (2 x 128 wide)
    assert r["trainable"]["peft"] == 2 * (8 * 128 + 3 * 128 * 8) + 2 * 128
    if r["serve"] is not None:
        assert all(r["serve"]["figures"][k]["tok_s"][0] > 0 for k in ("adapters", "merged"))
    assert "ours LoRA / PEFT" in done.stdout
