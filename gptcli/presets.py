"""Shipped training presets: `gpt train --config NAME`, or from Python.

    from gptcli.presets import preset_config
    config = preset_config("cpu-char", max_iters=500)   # a TrainConfig: the preset, then the overrides

A preset is what a `--config` JSON file holds: some TrainConfig fields, the model's shape under
"model"; what it leaves out keeps its default. Settings layer as defaults < preset (or file) <
flags, and only the flags a user typed count (the others are None). Change a preset here and
`gpt train --help` and the README's table follow its name and description.
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.config import ModelConfig, TrainConfig, validate
from gptcli.errors import GptError
from gptcli.storage.files import read_json


@dataclass(frozen=True)
class Preset:
    description: str  # a few words for `gpt train --help`
    settings: dict[str, Any]  # TrainConfig fields, the model's under "model"


# nanoGPT's shakespeare_char settings (config/train_shakespeare_char.py), shared by the two char presets
_NANOGPT_CHAR = {
    "tokenizer": "char",
    "lr": 1e-3,
    "min_lr": 1e-4,
    "beta2": 0.99,
    "warmup_iters": 100,
    "eval_interval": 250,
}

PRESETS: dict[str, Preset] = {
    # nanoGPT's README "baby GPT" shape on a CPU, exactly (4/4/128, context 64, batch 12), trained
    # faster: Muon on the hidden matrices and warmup-stable-decay reach nanoGPT's 2000-step val loss
    # (AdamW, cosine) in 700-800 steps (tuned on the complete works: benchmarks/bench_cpu_char.py).
    # Evals every 100 steps so --target-loss stops close to the target; no sample at each eval.
    "cpu-char": Preset(
        "0.8M-parameter char model (nanoGPT's CPU shape), under a minute on a laptop CPU",
        {
            **_NANOGPT_CHAR,
            "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0},
            "optimizer": "muon",
            "lr": 2e-3,
            "muon_lr": 0.02,
            "schedule": "wsd",
            "decay_fraction": 0.4,
            "batch_size": 12,
            "grad_accum": 1,
            "max_iters": 800,
            "eval_interval": 100,
            "eval_iters": 20,
            "sample_tokens": 0,
            "device": "cpu",
        },
    ),
    "shakespeare-char": Preset(
        "nanoGPT's 10.7M char model for Shakespeare, minutes on a GPU",
        {
            **_NANOGPT_CHAR,
            "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2},
            "batch_size": 64,
            "grad_accum": 1,
            "max_iters": 5000,
            "eval_iters": 200,
        },
    ),
    # nanoGPT's config/train_gpt2.py: 12 x 1024 x (5 x 8 GPUs) = 491,520 tokens per step; one GPU
    # (or torchrun, which splits grad_accum between the ranks) takes the same step in 40 micro-batches
    "gpt2-124m": Preset(
        "GPT-2 small (124M) on a BPE corpus you give: GPUs, days",
        {
            "model": {
                "n_layer": 12,
                "n_head": 12,
                "n_embd": 768,
                "block_size": 1024,
                "dropout": 0.0,
                "bias": True,
                "flash": True,
            },
            "batch_size": 12,
            "grad_accum": 40,
            "lr": 6e-4,
            "min_lr": 6e-5,
            "max_iters": 600_000,
            "warmup_iters": 2000,
            "weight_decay": 0.1,
            "beta2": 0.95,
            "eval_interval": 1000,
            "eval_iters": 200,
            "compile": True,
            "precision": "auto",
        },
    ),
}


def presets_help() -> str:
    """`name (description), ...` for the --config option's help."""
    return "; ".join(f"{name} ({preset.description})" for name, preset in PRESETS.items())


def config_base(name_or_path: str) -> dict[str, Any]:
    """The settings `--config` names: a preset's, or a JSON file's (anything with a suffix or a
    folder in it, or an existing file, is a file; a preset name wins over a file of the same name)."""
    if name_or_path in PRESETS:
        return copy.deepcopy(PRESETS[name_or_path].settings)
    path = Path(name_or_path)
    if path.suffix or len(path.parts) > 1 or path.exists():
        return load_config_file(path)
    raise GptError(f"unknown preset '{name_or_path}': use {', '.join(PRESETS)} (or a JSON file)")


def load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GptError(f"config file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise GptError(f"{path}: a config file holds one JSON object")
    return data


def merge_config(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (not None) override the base; model flags go into base['model']."""
    model = base.get("model") or {}
    if not isinstance(model, dict):
        raise GptError("the config's 'model' must be a JSON object of model settings")
    merged = {**base, "model": dict(model)}
    for key, value in flags.items():
        if value is None:
            continue
        if key in ModelConfig.model_fields:
            merged["model"][key] = value
        else:
            merged[key] = value
    return merged


def preset_config(name_or_path: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset (or a JSON file) with TrainConfig or ModelConfig fields overridden."""
    return validate(TrainConfig, **merge_config(config_base(name_or_path), overrides))
