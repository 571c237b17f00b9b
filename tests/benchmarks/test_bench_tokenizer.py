"""benchmarks/bench_tokenizer.py end to end at its smallest: every part runs (the big corpus's
trainers and the at-scale ones in their own processes) and the table and JSON line come out."""

import json
import subprocess
import sys

from tests.conftest import REPO, SONNETS


def test_the_smallest_run_prints_every_part():
    argv = [sys.executable, "benchmarks/bench_tokenizer.py", "--corpus", str(SONNETS), "--vocab-size", "300",
            "--repeats", "1", "--encode-mb", "0.05", "--big-mb", "0.1", "--scale", "nospace:0.05:300",
            "--trainers", "ours,hf", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "(ours", "|", "HF)", "ours", "HF", "ours/HF", "target", "met"]
    r = json.loads(lines[-1])
    assert r["training"]["ours_vocab"] == r["training"]["hf_vocab"] == 300
    assert r["compression"]["ours_roundtrip"] and len(r["compression"]["hf"]) == 3
    assert len(r["encode"]["cases"]) == 6
    assert r["big"]["ours"]["vocab"] == 300 and r["big"]["hf"]["peak_rss_mb"] > 0
    (scale,) = r["scale"]
    assert scale["kind"] == "nospace" and set(scale) >= {"ours", "hf"}
    assert "big corpus: 0.1 MB" in done.stdout
