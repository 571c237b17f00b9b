"""A checkpoint's model and tokenizer, loaded and checked: what generate, eval, serve and export use.

    model, tokenizer, config = load_checkpoint("out/checkpoints/step_0005000", device="cuda")
    model, tokenizer, config, used = load_newest("out", best=True)   # a run dir: its best intact one
    load_newest("out", quantize="int8")                               # its model with int8 weights
    describe_checkpoint("out")                                        # what `gpt info` shows

The files themselves (saving, checksums, listing, the newest or best checkpoint, the weights read
into a model) are gptcli.storage.checkpoint's, which knows nothing of models or tokenizers; this
module builds the model (gptcli.models) and reads the tokenizer (gptcli.tokenizers) on top of it.
An int8 checkpoint (`gpt quantize`; its config's "quantization") loads as an int8 model
(gptcli.models.int8): its int8 tensors go into int8 layers, never into float ones.
"""

import math
from pathlib import Path
from typing import Any

import torch

from gptcli.config import LoraConfig, ModelConfig
from gptcli.errors import GptError
from gptcli.models import build_model, resize_vocab
from gptcli.models.int8 import KIND, empty_int8_model, is_quantized, quantize_model
from gptcli.models.lora import adapter_parameters, add_lora, fold_new_rows, has_lora, merge_lora
from gptcli.storage.checkpoint import (
    CONFIG,
    TOKENIZER,
    WEIGHTS,
    DamagedCheckpoint,
    Warn,
    best_checkpoint,
    checkpoint_digests,
    damage_behind,
    default_warn,
    is_checkpoint,
    list_checkpoints,
    load_weights,
    read_config,
    resolve_checkpoint,
    resolve_checkpoints,
    val_losses,
    warn_unverified,
)
from gptcli.storage.checksums import verify_file
from gptcli.storage.files import sha256_file
from gptcli.storage.tensorfile import SafetensorsReader
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.base import Tokenizer


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", warn: Warn | None = None
) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """A checkpoint directory -> (model in eval mode on `device`, tokenizer, config dict).

    Every file is checked against its checksum before it is used; a checkpoint without checksums
    (version 1) loads with a warning through `warn` (default: Python's warnings)."""
    directory = Path(directory)
    try:
        config = read_config(directory)
        tokenizer = load_tokenizer(directory / TOKENIZER)
        if tokenizer.vocab_size != config["model"].vocab_size:
            raise GptError(
                f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
                f"{config['model'].vocab_size}"
            )
        if "lora" in config:  # an adapter: its base, checked, with the adapters on it
            model = adapter_model(directory, config, warn)
        elif "quantization" in config:  # gpt quantize's: int8 layers, filled from the file below
            if config["quantization"].get("kind") != KIND:
                raise GptError(f"{directory / CONFIG}: unknown quantization {config['quantization']!r}")
            model = empty_int8_model(config["model"])
            load_weights(directory, model)
        else:
            model = build_model(config["model"], empty=True)  # every weight is filled from the file below
            load_weights(directory, model)
    except DamagedCheckpoint:
        raise
    except GptError as e:  # a file that does not parse: damage, if its checksum says so
        raise damage_behind(directory, e) or e from None
    digests = checkpoint_digests(directory)
    if digests is None:
        warn_unverified(directory, warn)
    else:
        for name in (CONFIG, TOKENIZER):
            verify_file(directory / name, digests)
    return model.to(device).eval(), tokenizer, config


def base_reference(base: Path) -> dict[str, str]:
    """What an adapter checkpoint records of its base: its path and the sha256 of its weights."""
    digests = checkpoint_digests(base)
    digest = digests[WEIGHTS] if digests else sha256_file(base / WEIGHTS).hexdigest()
    return {"path": str(Path(base).resolve()), "sha256": digest}


def adapter_model(directory: Path, config: dict, warn: Warn | None = None) -> torch.nn.Module:
    """A LoRA checkpoint's model: its base (which must be the one it was trained on), grown to the
    adapter's vocabulary, the adapters on it unmerged, the tokens' trained rows written in."""
    base = Path(config["base"]["path"])
    if not is_checkpoint(base):
        raise GptError(f"{directory} is a LoRA adapter whose base {base} is not there: put it back, or merge "
                       "the adapter where it is (gpt merge-lora)")  # fmt: skip
    check_base(directory, config, base)
    model, _, _ = load_checkpoint(base, "cpu", warn)
    base_vocab = model.config.vocab_size
    resize_vocab(model, config["model"].vocab_size)
    put_adapters(directory, config, model, base_vocab)
    fold_new_rows(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_base(directory: Path, config: dict, base: Path) -> None:
    """An adapter goes only on the base it was trained on: the sha256 of `base`'s weights must be the
    one its config.json recorded."""
    expected, actual = config["base"]["sha256"], base_reference(base)["sha256"]
    if actual != expected:
        raise GptError(f"{directory} is a LoRA adapter of another base: {base}'s weights have sha256 {actual}, "
                       f"the adapter was trained on {expected}")  # fmt: skip


def put_adapters(directory: Path, config: dict, model: torch.nn.Module, base_vocab: int) -> None:
    """In place: a LoRA checkpoint's adapters and its added tokens' rows, read from `directory`, on
    `model` (a base grown to the adapter's vocabulary; fp32, unmerged, whatever the training held)."""
    lora = LoraConfig.model_validate(config["lora"]).model_copy(update={"base_precision": "fp32"})
    add_lora(model, lora, new_rows=(base_vocab, config["model"].vocab_size))
    load_weights(directory, model, adapter_parameters(model))


def load_newest(
    path: str | Path,
    device: str | torch.device = "cpu",
    best: bool = False,
    strict: bool = False,
    warn: Warn | None = None,
    quantize: str | None = None,
) -> tuple[torch.nn.Module, Tokenizer, dict, Path]:
    """load_checkpoint of what `path` names; of a run dir, the newest (or best) intact checkpoint.

    A damaged checkpoint is passed over with a warning naming it (with strict: an error); a
    checkpoint directory named directly is never swapped for another. quantize "int8": the model
    with int8 weights (see quantized). -> (..., the directory used)
    """
    options = resolve_checkpoints(path, best)
    for i, directory in enumerate(options):
        try:
            model, tokenizer, config = load_checkpoint(directory, device, warn)
            return quantized(model, quantize), tokenizer, config, directory
        except DamagedCheckpoint as e:
            if strict or i == len(options) - 1:
                raise
            kind = "best" if best else "newest"
            (warn or default_warn)(f"{e}; using the next {kind} checkpoint, {options[i + 1].name}")
    raise AssertionError("unreachable: resolve_checkpoints returns at least one")


def quantized(model: torch.nn.Module, quantize: str | None) -> torch.nn.Module:
    """--quantize: the model with int8 weights (a LoRA adapter merged into its base first); an int8
    checkpoint's model as it is; None: the model unchanged."""
    if quantize is None or is_quantized(model):
        return model
    if quantize != KIND:
        raise GptError(f"unknown quantization {quantize!r}: {KIND} is the one there is")
    return quantize_model(merge_lora(model) if has_lora(model) else model)


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint or run directory holds (for `gpt info`): shape, size, tokenizer, progress, and a
    fine-tune's chat template (ChatTemplate.to_json(), under "chat_template")."""
    path = Path(path)
    run = None
    if not is_checkpoint(path):
        found = list_checkpoints(path)
        if not found:
            resolve_checkpoint(path)  # raises the right one-line error
        run = path
        path = found[-1]
    config = read_config(path)
    model: ModelConfig = config.pop("model")
    digests = checkpoint_digests(path)
    if digests is not None:  # what is shown must be what was saved (the weights' header is read too)
        for name in (CONFIG, TOKENIZER, WEIGHTS):
            verify_file(path / name, digests)
    tokenizer = load_tokenizer(path / TOKENIZER)
    with SafetensorsReader(path / WEIGHTS) as reader:
        weights = [k for k in reader.keys() if not (k.endswith(".scale") and "quantization" in config)]
        n_params = sum(math.prod(reader.shape(k)) for k in weights)  # an int8 model's: its scales aside
    info: dict[str, Any] = {
        "checkpoint": str(path),
        "model": model.model_dump(mode="json"),
        "parameters": n_params,
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.special_tokens,
        },
        **{k: v for k, v in config.items() if k not in ("format", "version", "tokenizer_kind")},
        "files": {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()},
    }
    if config.get("chat_template") is not None:
        from gptcli.chat.template import ChatTemplate  # checked: a damaged one is a one-line error

        info["chat_template"] = ChatTemplate.from_json(config["chat_template"]).to_json()
    if run is not None:
        found = list_checkpoints(run)
        losses = val_losses(found)
        best = best_checkpoint(found, losses)
        info["run"] = {
            "run_dir": str(run),
            "checkpoints": [{"name": d.name, "val_loss": v} for d, v in losses.items()],
            "best": best.name if best else None,
            "best_val_loss": losses[best] if best else None,
        }
    return info
