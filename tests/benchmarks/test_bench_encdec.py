"""benchmarks/bench_encdec.py's generated tasks (the runs themselves take minutes: see benchmarks/README.md)."""

import json
import random

from bench_encdec import TASKS, transliterate, write_pairs


def test_transliteration_takes_the_longest_rule_first():
    assert transliterate("shchi yasha tsar") == "щи яша цар"
    assert transliterate("kha") == "ха"


def test_held_out_prompts_are_never_trained_on(tmp_path):
    rng = random.Random(0)
    for task in TASKS.values():
        held = write_pairs(tmp_path / "held.jsonl", task, 50, rng, set())
        write_pairs(tmp_path / "train.jsonl", task, 200, rng, held)
        rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text("utf-8").splitlines()]
        assert len(rows) == 200 and not {r["prompt"] for r in rows} & held
        assert len({r["prompt"] for r in rows}) == 200  # no pair twice
    pair = TASKS["reversal"](random.Random(1))
    assert pair["completion"] == pair["prompt"][::-1] and 5 <= len(pair["prompt"]) <= 15
