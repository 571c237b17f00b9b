"""`gpt train --config NAME`: the shipped presets (gptcli/presets.py), flags over them, and the errors."""

import json

import pytest

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.presets import PRESETS, config_base, preset_config
from gptcli.training.schedule import learning_rate
from tests.conftest import SONNETS, assert_one_line_error, run_cli

SHAPES = {  # (n_layer, n_head, n_embd, block_size, batch_size, grad_accum, dropout)
    "cpu-char": (4, 4, 128, 64, 12, 1, 0.0),
    "shakespeare-char": (6, 6, 384, 256, 64, 1, 0.2),
    "gpt2-124m": (12, 12, 768, 1024, 12, 40, 0.0),
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_is_a_valid_config_of_its_shape(name):
    config = preset_config(name)
    m = config.model
    shape = (m.n_layer, m.n_head, m.n_embd, m.block_size, config.batch_size, config.grad_accum, m.dropout)
    assert shape == SHAPES[name]
    assert config.lr_decay_iters is None  # the decay ends at max_iters, whatever --max-iters says


def test_a_shorter_run_decays_in_its_own_steps():
    config = preset_config("cpu-char", max_iters=200)  # wsd: the last 40% of the run decays
    assert learning_rate(119, config) == config.lr  # still stable
    assert learning_rate(160, config) < config.lr
    assert learning_rate(199, config) < 1.5 * config.min_lr  # the last step, near the floor
    assert learning_rate(200, config) == config.min_lr


def test_presets_carry_nanogpts_settings():
    cpu = preset_config("cpu-char")  # nanoGPT's CPU shape; its optimizer and length are ours (tuned)
    assert (cpu.tokenizer, cpu.device, cpu.optimizer, cpu.schedule, cpu.max_iters) == (
        "char",
        "cpu",
        "muon",
        "wsd",
        800,
    )
    assert (cpu.warmup_iters, cpu.eval_interval, cpu.eval_iters, cpu.sample_tokens) == (100, 100, 20, 0)
    char = preset_config("shakespeare-char")
    assert (char.tokenizer, char.max_iters, char.beta2, char.eval_iters) == ("char", 5000, 0.99, 200)
    gpt2 = preset_config("gpt2-124m")
    assert (gpt2.lr, gpt2.min_lr, gpt2.warmup_iters, gpt2.beta2, gpt2.weight_decay) == (
        6e-4,
        6e-5,
        2000,
        0.95,
        0.1,
    )
    assert gpt2.compile and gpt2.model.flash and gpt2.model.bias and gpt2.precision == "auto"
    assert gpt2.batch_size * gpt2.grad_accum * gpt2.model.block_size == 491_520  # nanoGPT's tokens per step


def test_python_overrides_reach_the_model_and_the_run():
    config = preset_config("cpu-char", n_layer=2, max_iters=3, lr=None)  # None: not given
    assert isinstance(config, TrainConfig)
    assert (config.model.n_layer, config.model.n_embd, config.max_iters, config.lr) == (2, 128, 3, 2e-3)
    assert preset_config("cpu-char").model.n_layer == 4  # the preset itself is untouched


def test_a_name_or_a_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"seed": 7}))
    assert config_base("cfg.json") == {"seed": 7}
    with pytest.raises(GptError, match="config file not found"):
        config_base("missing.json")
    with pytest.raises(GptError, match="unknown preset 'gpt3'"):
        config_base("gpt3")


def test_flags_override_the_preset(tmp_path):
    result = run_cli(
        "train", "--config", "cpu-char", "--data", str(SONNETS), "--max-iters", "3", "--n-layer", "1",
        "--eval-iters", "1", "--sample-tokens", "0", "--log-interval", "1", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["max_iters"] == 3 and config["model"]["n_layer"] == 1  # the flags
    assert config["model"]["n_embd"] == 128 and config["optimizer"] == "muon"  # the preset
    assert config["lr_decay_iters"] is None  # the schedule follows --max-iters
    assert config["tokenizer"] == "char" and config["device"] == "cpu"
    assert [d.name for d in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_0000003"]


def test_an_unknown_preset_is_a_one_line_error(tmp_path):
    result = run_cli("train", "--config", "x")
    assert_one_line_error(
        result, "unknown preset 'x': use cpu-char, shakespeare-char, gpt2-124m (or a JSON file)"
    )
    assert result.exit_code == 1 and not (tmp_path / "out").exists()


def test_resume_refuses_a_preset():
    assert_one_line_error(run_cli("train", "--resume", "out", "--config", "cpu-char"), "--resume", "--config")


def test_help_lists_the_presets():
    help_text = " ".join(run_cli("train", "--help").stdout.replace("│", " ").split())
    for name, preset in PRESETS.items():
        assert f"{name} ({preset.description})" in help_text, name
