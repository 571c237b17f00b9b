"""`gpt train` as a user runs it: the run directory it writes, the defaults chain, --config precedence,
the run-dir guard, --resume, --max-time, --init-from, and one-line errors for bad input.

Every run is a tiny model for a few steps on a slice of the sonnets, in the test's tmp dir (cwd and
token cache), so nothing lands in the home directory and each test takes about a second.
"""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SONNETS, assert_one_line_error, run_cli

TINY = {
    "--n-layer": "1",
    "--n-head": "2",
    "--n-embd": "32",
    "--block-size": "16",
    "--batch-size": "4",
    "--max-iters": "4",
    "--eval-interval": "2",
    "--eval-iters": "1",
    "--sample-tokens": "4",
    "--log-interval": "1",
    "--device": "cpu",
}


def tiny(**overrides: str | None) -> list[str]:
    """The tiny-model flags; tiny(batch_size="2") changes one, tiny(n_embd=None) leaves one out."""
    flags = dict(TINY)
    for name, value in overrides.items():
        key = "--" + name.replace("_", "-")
        if value is None:
            flags.pop(key, None)
        else:
            flags[key] = value
    return [part for item in flags.items() for part in item]


def steps_in(run_dir: Path) -> list[str]:
    return sorted(d.name for d in (run_dir / "checkpoints").iterdir() if not d.name.startswith("."))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_speed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")} for r in records]


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in the tmp dir (out/ goes there) with the token cache there too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def text(corpus) -> Path:
    """20 kB of sonnets: enough tokens for block 16 at char and small-BPE level, fast to tokenize."""
    return corpus(SONNETS.read_text(encoding="utf-8")[:20_000], "corpus.txt")


@pytest.fixture
def run(tmp_path, text) -> Path:
    """A finished 4-step char-level run in ./out."""
    result = run_cli("train", "--data", str(text), "--tokenizer", "char", *tiny(), "-q")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "out"


def train_bpe(corpus_path: Path, vocab: int, out: Path | None = None) -> Path:
    args = ["tokenizer", "train", str(corpus_path), "--vocab-size", str(vocab), "-q"]
    if out is not None:
        args += ["--out", str(out)]
    assert run_cli(*args).exit_code == 0
    return out or Path("tokenizer.json")


# ---------------------------------------------------------------------------------------------
# happy paths


def test_run_directory_holds_config_tokenizer_metrics_and_checkpoints(tmp_path, text):
    result = run_cli(
        "train", "--data", str(text), "--tokenizer", "char", "--data-cache", str(tmp_path / "cache2"), *tiny()
    )
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "out"
    assert last_line(result.stderr).startswith("done: 4 steps")
    assert "checkpoint out/checkpoints/step_0000004" in last_line(result.stderr)
    assert any((tmp_path / "cache2").iterdir())  # the token cache went where --data-cache said

    config = json.loads((out / "config.json").read_text())
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["kind"] == "char"
    vocab = len(tokenizer["chars"]) + len(tokenizer["special_tokens"])
    assert config["model"]["vocab_size"] == vocab  # resolved from the tokenizer
    assert config["model"]["n_embd"] == 32 and config["model"]["n_kv_head"] == 2
    assert config["batch_size"] == 4 and config["max_iters"] == 4 and config["tokenizer"] == "char"
    assert config["data"] == [str(text)] and config["data_cache"] == str(tmp_path / "cache2")

    records = metrics(out)
    steps = [r for r in records if r.get("kind") != "eval"]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in steps)
    assert [r["step"] for r in evals] == [2, 4]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in evals)
    assert abs(evals[0]["train_loss"] - math.log(vocab)) < 1.0  # a fresh model: about ln(vocab)

    assert steps_in(out) == ["step_0000002", "step_0000004"]
    last = out / "checkpoints" / "step_0000004"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "train_state.safetensors",
        "train_state.json",
    ):
        assert (last / name).is_file(), name
    saved = json.loads((last / "config.json").read_text())
    assert saved["model"] == config["model"] and saved["step"] == 4
    assert json.loads((last / "train_state.json").read_text())["step"] == 4
    assert json.loads((last / "tokenizer.json").read_text()) == tokenizer


def test_defaults_chain_takes_tokenizer_json_and_its_corpus(tmp_path, text):
    result = run_cli("tokenizer", "train", str(text), "--vocab-size", "300")
    assert result.exit_code == 0 and (tmp_path / "tokenizer.json").is_file()
    result = run_cli("train", *tiny())  # no --data, --tokenizer or --out
    assert result.exit_code == 0, result.stderr
    assert "tokenizer.json (default)" in result.stderr
    assert str(text) in result.stderr and "the corpus the tokenizer was trained on" in result.stderr
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer"] == str(tmp_path / "tokenizer.json") and config["data"] == [str(text)]
    assert config["model"]["vocab_size"] == 300
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == "bpe"
    assert steps_in(out)[-1] == "step_0000004"


def test_without_tokenizer_json_it_falls_back_to_characters(tmp_path, text):
    result = run_cli("train", "--data", str(text), *tiny())
    assert result.exit_code == 0, result.stderr
    assert "tokenizer: char (default)" in result.stderr
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text())["kind"] == "char"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tokenizer"] == "char"


def test_with_no_flags_at_all_it_trains_characters_on_the_toy_data(tmp_path):
    result = run_cli("train", *tiny())
    assert result.exit_code == 0, result.stderr
    assert "tokenizer: char (default)" in result.stderr and "(the toy data: no --data given)" in result.stderr
    data = json.loads((tmp_path / "out" / "config.json").read_text())["data"]
    assert len(data) == 1 and Path(data[0]).parent.name == "toy_data"


def test_model_and_optimizer_options_reach_the_run(tmp_path, text, corpus):
    val = corpus(SONNETS.read_text(encoding="utf-8")[-3000:], "val.txt")
    result = run_cli(
        "train", "--data", str(text), "-t", "char", "--val-data", str(val), *tiny(n_head="4"),
        "--n-kv-head", "2", "--pos-emb", "rope", "--window", "4", "--no-flash", "--norm", "rmsnorm",
        "--no-bias", "--dropout", "0.1", "--grad-accum", "2", "--keep-checkpoints", "1", "--seed", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # 3,000 characters + the end-of-text after the document; batch 4 x accum 2 x block 16
    assert "3,001 val tokens; 128 tokens per step" in result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    model = config["model"]
    assert (model["n_head"], model["n_kv_head"], model["pos_emb"], model["window"]) == (4, 2, "rope", 4)
    assert (model["flash"], model["norm"], model["bias"], model["dropout"]) == (False, "rmsnorm", False, 0.1)
    assert config["grad_accum"] == 2 and config["val_data"] == [str(val)] and config["seed"] == 3
    assert "step_0000004" in steps_in(tmp_path / "out") and len(steps_in(tmp_path / "out")) <= 2


def test_config_precedence_defaults_then_file_then_flags(tmp_path, text):
    (tmp_path / "cfg.json").write_text(
        json.dumps({"batch_size": 3, "seed": 7, "model": {"n_embd": 48, "n_layer": 2}})
    )
    result = run_cli(
        "train", "-t", "char", "--data", str(text), "--config", "cfg.json",
        *tiny(n_embd=None, batch_size="2", n_layer="1"),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["batch_size"] == 2 and config["model"]["n_layer"] == 1  # flags beat the file
    assert config["seed"] == 7 and config["model"]["n_embd"] == 48  # the file beats the defaults
    assert config["lr"] == 1e-3 and config["model"]["pos_emb"] == "learned"  # defaults

    # a run's config.json is a config file: the same run again, elsewhere
    again = run_cli("train", "--config", "out/config.json", "--out", "run2", "-q")
    assert again.exit_code == 0, again.stderr
    assert json.loads((tmp_path / "run2" / "config.json").read_text()) == config
    assert steps_in(tmp_path / "run2") == steps_in(tmp_path / "out")


def test_a_run_directory_is_not_reused_without_resume_or_overwrite(run, text):
    before = snapshot(run)
    again = run_cli("train", "--data", str(text), "-t", "char", *tiny())
    assert_one_line_error(again, "out already holds a run", "--resume out", "--overwrite")
    assert snapshot(run) == before

    fresh = run_cli("train", "--data", str(text), "-t", "char", *tiny(max_iters="2"), "--overwrite", "-q")
    assert fresh.exit_code == 0, fresh.stderr
    assert steps_in(run) == ["step_0000002"]  # the old run's step 4 is gone
    assert max(r["step"] for r in metrics(run)) == 2

    assert_one_line_error(run_cli("train", "--resume", "out", "--out", "other"), "--resume", "--out")
    assert_one_line_error(run_cli("train", "--resume", "out", "--overwrite"), "--resume", "--overwrite")
    assert not Path("other").exists()


def test_resume_continues_from_the_newest_checkpoint(tmp_path, run, text):
    result = run_cli("train", "--resume", "out", "--max-iters", "6")
    assert result.exit_code == 0, result.stderr
    assert "resumed from out/checkpoints/step_0000004 at step 4" in result.stderr
    assert last_line(result.stderr).startswith("done: 6 steps")
    records = metrics(run)
    assert [r["step"] for r in records if r.get("kind") != "eval"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r.get("kind") == "eval"] == [2, 4, 6]
    assert steps_in(run) == ["step_0000002", "step_0000004", "step_0000006"]
    assert json.loads((run / "config.json").read_text())["max_iters"] == 6

    # the same 6 steps in one go give the same losses and samples (CPU, fp32; warmup > 6 steps, so
    # the learning rates agree although max_iters differs)
    straight = run_cli("train", "--data", str(text), "-t", "char", *tiny(max_iters="6"), "-o", "r6", "-q")
    assert straight.exit_code == 0, straight.stderr
    assert without_speed(records) == without_speed(metrics(tmp_path / "r6"))


def test_resume_needs_a_run_with_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", "--resume", "empty"), "empty is not a run directory")
    assert_one_line_error(run_cli("train", "--resume", "nowhere"), "nowhere is not a run directory")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"tokenizer": "char"}))
    assert_one_line_error(run_cli("train", "--resume", "empty"), "nothing to resume", "checkpoint")


def test_resume_from_another_directory(tmp_path, monkeypatch, text):
    result = run_cli("train", "--data", "corpus.txt", "-t", "char", *tiny(), "-q")
    assert result.exit_code == 0, result.stderr
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = run_cli("train", "--resume", str(tmp_path / "out"), "--max-iters", "6", "-q")
    assert resumed.exit_code == 0, resumed.stderr


def as_written_before_checksums(checkpoint: Path) -> None:
    """Make a checkpoint look like one written before checksums existed (format version 1)."""
    (checkpoint / "checksums.json").unlink()
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "version": 1}))


def test_resume_of_a_corrupt_checkpoint_names_the_file_and_loses_nothing(run):
    # without checksums (an old checkpoint) the damage is only seen when the file is parsed: an error
    as_written_before_checksums(run / "checkpoints" / "step_0000004")
    weights = run / "checkpoints" / "step_0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(run)
    result = run_cli("train", "--resume", "out", "--max-iters", "6")
    assert_one_line_error(result, str(Path("out/checkpoints/step_0000004/model.safetensors")), "corrupt")
    assert snapshot(run) == before  # nothing deleted, rewritten or truncated


def test_resume_passes_over_a_damaged_newest_checkpoint_with_a_warning(run):
    # with checksums (issue 15) the damage is found before anything is used: the run goes on from
    # the newest intact checkpoint, and saving step 4 again replaces the damaged one
    weights = run / "checkpoints" / "step_0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_cli("train", "--resume", "out", "--max-iters", "6")
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "step_0000004 is damaged" in warning[0] and "model.safetensors" in warning[0]
    assert "resumed from" in result.stderr and "step_0000002" in result.stderr
    assert steps_in(run) == ["step_0000002", "step_0000004", "step_0000006"]
    assert run_cli("info", "--verify", "out").exit_code == 0


def test_resume_of_a_corrupt_train_state_json_is_a_one_line_error(run):
    as_written_before_checksums(run / "checkpoints" / "step_0000004")
    (run / "checkpoints" / "step_0000004" / "train_state.json").write_text('{"step": 4')
    assert_one_line_error(run_cli("train", "--resume", "out", "--max-iters", "6"), "train_state.json")


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run):
    before = snapshot(run / "checkpoints")
    result = run_cli(
        "train", "--resume", "out", "--max-iters", "8", "--lr", "1e30", "--warmup-iters", "0",
        "--grad-clip", "0", "-q",
    )  # fmt: skip
    assert_one_line_error(result, "non-finite", "at step 6", "out/checkpoints/step_0000004")
    assert snapshot(run / "checkpoints") == before


def test_max_time_stops_early_with_a_checkpoint(tmp_path, text):
    result = run_cli(
        "train", "--data", str(text), "-t", "char",
        *tiny(max_iters="1000", eval_interval="1000"), "--max-time", "0.001s",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    done = last_line(result.stderr)
    assert done.startswith("done (stopped by --max-time): 1 step in"), done
    assert steps_in(tmp_path / "out") == ["step_0000001"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_time"] == 0.001


def test_a_bad_value_is_named_by_its_flag_or_by_where_it_came_from(tmp_path, text):
    typed = run_cli("train", "--data", str(text), "-t", "char", *tiny(), "--max-iters", "-5")
    assert_one_line_error(typed, "--max-iters: Input should be greater than or equal to 1")
    assert typed.exit_code == 2  # a bad option, as one whose value does not parse
    (tmp_path / "cfg.json").write_text(json.dumps({"max_iters": -5}))
    from_file = run_cli("train", "--data", str(text), "-t", "char", "--config", str(tmp_path / "cfg.json"))
    assert_one_line_error(
        from_file, "invalid TrainConfig: max_iters: Input should be greater than or equal to 1"
    )
    assert from_file.exit_code == 1


def test_max_time_bounds_the_whole_process(tmp_path, text):
    """From the process's launch to its exit: start-up (torch's import) and Python's exit included.
    Before, the clock started in the command and the exit took ~1.5 s more: 22.3 s for 20 s."""
    gpt = Path(sys.executable).with_name("gpt")
    args = ["train", "--data", str(text), "-t", "char", *tiny(max_iters="100000", eval_interval="50")]
    started = time.monotonic()
    done = subprocess.run([str(gpt), *args, "--max-time", "8s", "-q"], cwd=tmp_path, capture_output=True)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert steps_in(tmp_path / "out")[-1] != "step_0100000"  # stopped by the clock
    assert seconds < 8 + 0.75, seconds  # a little for a loaded CI machine's noise


@pytest.mark.parametrize(
    "value, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1.5h", 5400), (" 2 m ", 120)]
)
def test_max_time_units(tmp_path, text, value, seconds):
    result = run_cli(
        "train", "--data", str(text), "-t", "char", *tiny(max_iters="1", eval_interval="1"),
        "--max-time", value, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_time"] == seconds


def test_init_from_starts_a_new_run_from_a_checkpoint(tmp_path, run, text):
    source = run / "checkpoints" / "step_0000004"
    result = run_cli(
        "train", "--init-from", str(source), "--out", "ft",
        *tiny(max_iters="1", eval_interval="1"), "--lr", "1e-9",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ft = tmp_path / "ft"
    ft_config = json.loads((ft / "config.json").read_text())
    assert ft_config["model"] == json.loads((run / "config.json").read_text())["model"]
    assert ft_config["init_from"] == str(source)
    assert ft_config["tokenizer"] == str(source / "tokenizer.json")  # the checkpoint's, by default
    assert ft_config["data"] == [str(text)]  # and that tokenizer's corpus
    assert steps_in(ft) == ["step_0000001"]
    # one step at lr 1e-9 from the source's weights: still the source's weights (a fresh init would
    # differ by the source's 4 steps, ~1e-4)
    start = load_file(source / "model.safetensors")
    after = load_file(ft / "checkpoints" / "step_0000001" / "model.safetensors")
    assert start.keys() == after.keys()
    assert all(torch.allclose(start[k], after[k], atol=1e-6, rtol=0) for k in start)

    vocab = json.loads((run / "config.json").read_text())["model"]["vocab_size"]
    other = train_bpe(text, 300, tmp_path / "bpe300.json")
    mismatch = run_cli("train", "--init-from", str(source), "-t", str(other), "--out", "ft2", *tiny())
    assert_one_line_error(mismatch, "tokenizer has 300 tokens", f"--init-from's model has {vocab}")
    assert not (tmp_path / "ft2").exists()


def test_init_from_a_run_directory_takes_its_newest_or_best_checkpoint(tmp_path, run, text):
    """As --checkpoint does everywhere: a run directory means its newest complete checkpoint, or
    with --best the one with the lowest val loss; the run records the checkpoint it started from."""
    checkpoints = sorted((run / "checkpoints").iterdir())
    losses = {d: json.loads((d / "config.json").read_text())["val_loss"] for d in checkpoints}
    best = min(checkpoints, key=lambda d: (losses[d], d.name))
    short = tiny(max_iters="1", eval_interval="1")
    for extra, expected, out in (([], checkpoints[-1], "ft_newest"), (["--best"], best, "ft_best")):
        result = run_cli("train", "--init-from", "out", *extra, "--out", out, *short)
        assert result.exit_code == 0, result.stderr
        recorded = json.loads((tmp_path / out / "config.json").read_text())
        assert Path(recorded["init_from"]).resolve() == expected.resolve()
        assert Path(recorded["tokenizer"]).resolve() == (expected / "tokenizer.json").resolve()
        assert recorded["model"] == json.loads((run / "config.json").read_text())["model"]
    newest = run_cli("train", "--init-from", "out", "--out", "ft_note", *short)
    assert (
        f"init-from: {Path('out') / 'checkpoints' / checkpoints[-1].name} (the newest checkpoint of out)"
        in newest.stderr
    )

    assert_one_line_error(run_cli("train", "--best", *short), "--best", "--init-from RUN_DIR")
    assert run_cli("train", "--best", *short).exit_code == 2
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    empty = run_cli("train", "--init-from", "empty_run", "--out", "ft_empty", *short)
    assert_one_line_error(empty, "--init-from empty_run holds no complete checkpoint")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    a_file = run_cli("train", "--init-from", "notes.txt", "--out", "ft_file", *short)
    assert_one_line_error(a_file, "notes.txt is a file", "run directory holding checkpoints")
    assert not any((tmp_path / name).exists() for name in ("ft_empty", "ft_file"))


@pytest.mark.parametrize(
    "bad, fragment",
    [(["--precision", "fp16"], "fp16"), (["--block-size", "100000"], "fewer than block_size + 1")],
)
def test_overwrite_with_a_run_that_cannot_start_keeps_the_old_run(run, text, bad, fragment):
    before = snapshot(run)
    result = run_cli("train", "--data", str(text), "-t", "char", *tiny(), *bad, "--overwrite")
    assert_one_line_error(result, fragment)
    assert snapshot(run) == before


def test_init_from_a_checkpoint_of_the_run_being_overwritten_loses_nothing(run, text):
    source = run / "checkpoints" / "step_0000004"
    before = snapshot(source)
    result = run_cli("train", "--init-from", str(source), "--data", str(text), *tiny(), "--overwrite", "-q")
    if result.exit_code != 0:  # refusing is fine, as long as the source survives
        assert_one_line_error(result)
        assert snapshot(source) == before
    else:
        assert steps_in(run) == ["step_0000002", "step_0000004"]


# ---------------------------------------------------------------------------------------------
# bad input: one `error:` line, non-zero exit, no run directory


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--data", "{short}"], ["fewer than block_size + 1 = 17", "--block-size"]),
        pytest.param(
            ["--device", "cuda"],
            ["--device cuda", "no CUDA GPU"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
        (["--device", "cuda:x"], ["unknown device 'cuda:x'"]),
        (["--n-embd", "30", "--n-head", "4"], ["n_embd (30) must be divisible by n_head (4)"]),
        (["--n-head", "4", "--n-kv-head", "3"], ["n_head (4) must be a multiple of n_kv_head (3)"]),
        (["--pos-emb", "bogus"], ["--pos-emb", "'learned'"]),
        (["--pos-emb", "rope", "--n-embd", "6"], ["rope needs an even head size"]),
        (["--window", "0"], ["--window"]),
        (["--norm", "batchnorm"], ["--norm"]),
        (["--precision", "fp16"], ["fp16 needs a CUDA GPU"]),
        (["--precision", "fp8"], ["precision"]),
        (["--min-lr", "0.1"], ["min_lr (0.1) is above lr (0.001)"]),
        (["--optimizer", "bogus"], ["--optimizer", "'bogus' is not one of 'adamw', 'muon'"]),
        (["--optimizer", "muon", "--muon-lr", "0"], ["--muon-lr", "greater than 0"]),
        (["--optimizer", "muon", "--muon-momentum", "1"], ["--muon-momentum", "less than 1"]),
        (["--schedule", "linear"], ["--schedule", "'linear' is not one of 'cosine', 'wsd'"]),
        (["--schedule", "wsd", "--decay-fraction", "0"], ["--decay-fraction", "greater than 0"]),
        (["--schedule", "wsd", "--decay-fraction", "1.5"], ["--decay-fraction", "less than or equal to 1"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--val-fraction", "1.5"], ["--val-fraction"]),
        (["--max-time", "abc"], ["--max-time", "'abc' is not a duration", "15m"]),
        (["--max-time", "0"], ["--max-time", "greater than 0"]),
        (["--max-time", "-5"], ["--max-time", "'-5' is not a duration"]),
        (["--max-iters", "many"], ["--max-iters", "valid integer"]),
        (["--data", "{missing}"], ["not found", "missing.txt"]),
        (["--tokenizer", "{missing_tok}"], ["tokenizer not found", "nope.json"]),
        (["--config", "{missing}"], ["config file not found", "missing.txt"]),
        (["--config", "{bad_json}"], ["bad.json", "invalid JSON"]),
        (["--config", "{list_json}"], ["list.json", "one JSON object"]),
        (["--config", "{unknown_key}"], ["batch_sise", "Extra inputs are not permitted"]),
        (["--config", "{unknown_model_key}"], ["model.n_layers", "Extra inputs are not permitted"]),
        (["--config", "{wrong_type}"], ["lr", "valid number"]),
        (["--config", "{model_not_object}"], ["'model' must be a JSON object"]),
        (["--config", "{vocab_mismatch}"], ["vocab_size (7)", "does not match the tokenizer"]),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, text, corpus, args, fragments):
    places = {
        "short": corpus("abcde", "short.txt"),
        "missing": tmp_path / "missing.txt",
        "missing_tok": tmp_path / "nope.json",
        "bad_json": corpus('{"batch_size": 3,', "bad.json"),
        "list_json": corpus("[1, 2]", "list.json"),
        "unknown_key": corpus(json.dumps({"batch_sise": 3}), "unknown.json"),
        "unknown_model_key": corpus(json.dumps({"model": {"n_layers": 3}}), "unknown_model.json"),
        "wrong_type": corpus(json.dumps({"lr": "fast"}), "wrong.json"),
        "model_not_object": corpus(json.dumps({"model": 5}), "model5.json"),
        "vocab_mismatch": corpus(json.dumps({"model": {"vocab_size": 7}}), "vocab7.json"),
    }
    defaults = ["--tokenizer", "char", *tiny()]
    if "--data" not in args:  # --data adds up (a list option): give it once
        defaults += ["--data", str(text)]
    result = run_cli("train", *defaults, *[a.format(**{k: str(v) for k, v in places.items()}) for a in args])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started


# ---------------------------------------------------------------------------------------------
# help


def test_help_lists_groups_and_options():
    result = run_cli("train", "--help")
    assert result.exit_code == 0 and "Usage: gpt train" in result.stdout
    for panel in ("Data", "Model", "Optimization", "Evaluation", "System"):
        assert f"─ {panel} ─" in result.stdout, panel
    for option in (
        "--data", "--tokenizer", "--out", "--n-layer", "--n-head", "--n-kv-head", "--n-embd",
        "--block-size", "--dropout", "--no-bias", "--pos-emb", "--window", "--flash", "--no-flash",
        "--batch-size", "--grad-accum", "--max-iters", "--max-time", "--lr", "--min-lr",
        "--warmup-iters", "--schedule", "--decay-fraction", "--optimizer", "--muon-lr", "--muon-momentum",
        "--weight-decay", "--grad-clip", "--eval-interval", "--eval-iters",
        "--val-fraction", "--precision", "--compile", "--no-compile", "--device", "--seed",
        "--config", "--resume", "--init-from", "--overwrite",
    ):  # fmt: skip
        assert option in result.stdout, option


def test_help_shows_every_default():
    help_text = " ".join(run_cli("train", "--help").stdout.replace("│", " ").split())  # undo the wrapping
    for default in ("Run directory (default: out)", "(default: n_head)", "(default: auto)"):
        assert default in help_text, default


def test_every_option_reaches_the_config(monkeypatch):
    """An option left out of train_command's flags dict would be accepted and silently ignored."""
    import inspect

    from gptcli.cli import train as train_cli
    from gptcli.config import ModelConfig, TrainConfig

    seen = {}

    def capture(base, flags):
        seen.update(flags)
        raise SystemExit(0)

    monkeypatch.setattr(train_cli, "merge_config", capture)
    assert run_cli("train").exit_code == 0
    control = {"config", "resume", "overwrite", "out", "best", "quiet", "verbose"}  # how to run, not what
    assert set(seen) == set(inspect.signature(train_cli.train_command).parameters) - control
    fields = set(TrainConfig.model_fields) | set(ModelConfig.model_fields)
    assert set(seen) <= fields, set(seen) - fields
