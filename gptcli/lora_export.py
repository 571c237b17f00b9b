"""A LoRA run taken out of gptcli: merged into a standalone checkpoint, or as a PEFT adapter.

    merge_adapter("chat-lora", out="chat-merged")  # a full checkpoint: base + adapters, template kept
    export_peft("chat-lora", out="chat-peft")      # adapter_config.json + adapter_model.safetensors,
                                                   # and the base they go on, chat-peft/base (HF GPT-2)

PEFT's LoRA is ours: lora_A (r, in), lora_B (out, r), scaling lora_alpha / r. HF's GPT-2 holds its
projections as Conv1D, (in, out); PEFT's `fan_in_fan_out` says so, and it transposes only the
merged delta, never A or B, so our tensors are written as they are, under PEFT's names
(`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`). Our targets are PEFT's
target_modules by suffix: a module is targeted when its name ends with "." + a target.

The base a PEFT adapter goes on is an HF model, and ours is a gptcli checkpoint, so the export
writes one beside the adapter (export-hf's files). Tokens the fine-tune added to the vocabulary
(a chat template's <|im_start|> ...) had their rows trained with the adapters: that base carries
them, so the adapter must be loaded on it, not on the original.
"""

from pathlib import Path

from gptcli.errors import GptError
from gptcli.hf_gpt2 import check_gpt2_layout, write_hf_gpt2
from gptcli.loading import load_checkpoint
from gptcli.models.lora import TARGETS, LoRALinear, merge_lora
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import atomic_write_json
from gptcli.storage.tensorfile import write_safetensors

ADAPTER_ONLY = ("lora", "base")  # what makes a checkpoint an adapter (gptcli.training.checkpointer)
NOT_INFO = ("format", "version", "tokenizer_kind", "model")  # save_checkpoint writes these itself
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the HF model


def adapter_checkpoint(path: str | Path, best: bool = False) -> tuple[Path, dict]:
    """A LoRA run (its newest or best checkpoint) or adapter checkpoint -> (directory, its config)."""
    directory = ckpt.resolve_checkpoint(path, best=best)
    config = ckpt.read_config(directory)
    if "lora" not in config:
        raise GptError(f"{directory} is not a LoRA adapter but a full checkpoint: use it as it is")
    return directory, config


def check_out(out: Path, directory: Path, base: Path) -> None:
    """--out may be new, empty, or a checkpoint (replaced whole, so never the adapter or its base)."""
    resolved = out.resolve()
    if resolved in (directory.resolve(), base.resolve()):
        raise GptError(f"--out {out} is the adapter or its base: write the merged checkpoint elsewhere")
    if out.exists() and not ckpt.is_checkpoint(out) and (not out.is_dir() or any(out.iterdir())):
        raise GptError(f"--out {out} exists and is not a checkpoint: give a new or empty folder")


def merge_adapter(path: str | Path, out: str | Path, best: bool = False) -> Path:
    """`gpt merge-lora`: an adapter added into its base's weights, the new tokens' rows into its
    tables -> a full checkpoint (its chat template kept) that needs neither the base nor LoRA."""
    directory, saved = adapter_checkpoint(path, best)
    out = Path(out)
    check_out(out, directory, Path(saved["base"]["path"]))
    model, tokenizer, config = load_checkpoint(directory)
    merge_lora(model)
    info = {k: v for k, v in config.items() if k not in NOT_INFO + ADAPTER_ONLY}
    info["source"] = str(directory)
    return ckpt.save_checkpoint(out, model, config["model"], tokenizer, info=info)


def take_adapters(model) -> dict[str, LoRALinear]:
    """In place: each LoRALinear replaced by its frozen base Linear, unmerged. -> {layer name: adapter}"""
    adapters = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.base)
            adapters[name] = module
    return adapters


def peft_config(lora: dict, base: Path) -> dict:
    """adapter_config.json: the fields of peft's LoraConfig that describe our adapters (peft fills
    in its defaults for the rest; every field here exists since peft 0.11)."""
    alpha = lora["alpha"]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base.resolve()),
        "r": lora["r"],
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": lora["dropout"],
        "target_modules": [s for t in lora["targets"] for s in TARGETS[t]],
        "fan_in_fan_out": True,  # HF GPT-2's Conv1D holds (in, out)
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,  # scaling is alpha / r, as ours
        "use_dora": False,
        "inference_mode": True,
        "revision": None,
    }


def export_peft(
    path: str | Path, out: str | Path, base_out: str | Path | None = None, best: bool = False, warn=None
) -> tuple[list[Path], int]:
    """`gpt export-peft`: a LoRA run on a GPT-2-shaped base -> PEFT's adapter files in `out`, and the
    base they go on as an HF folder in `base_out` (default out/base), the added tokens' trained rows
    in it. `warn`: as export_hf_gpt2's. -> (the files written, how many tokens the base gained)"""
    directory, saved = adapter_checkpoint(path, best)
    check_gpt2_layout(saved["model"], directory)  # export-hf's own check: one line naming what differs
    out = Path(out)
    base_out = Path(base_out) if base_out is not None else out / "base"
    model, tokenizer, _ = load_checkpoint(directory)  # the base, grown and its new rows folded in
    adapters = take_adapters(model)  # ... and now without its adapters: the base PEFT goes under
    written = write_hf_gpt2(model, tokenizer, saved, directory, base_out, warn)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, adapter in adapters.items():  # A (r, in) and B (out, r) both ways: no transpose
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = adapter.lora_A.detach().float().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = adapter.lora_B.detach().float().contiguous()
    write_safetensors(out / PEFT_WEIGHTS, tensors, metadata={"format": "pt"})
    atomic_write_json(out / PEFT_CONFIG, peft_config(saved["lora"], base_out))
    base_vocab = ckpt.read_config(saved["base"]["path"])["model"].vocab_size
    return [out / PEFT_CONFIG, out / PEFT_WEIGHTS, *written], saved["model"].vocab_size - base_vocab
