"""`gpt quantize`: a checkpoint -> an int8 checkpoint that every command loads (gptcli.models.int8).

    quantize_checkpoint("out", "out-int8")   # the newest checkpoint of a run, or a checkpoint dir

The result is an ordinary checkpoint directory (checksummed, atomic): model.safetensors holds each
quantized layer's int8 `weight` (out, in) and fp32 `scale` (out,) beside the float norms, biases
and positions, about a quarter of the fp32 file; config.json records "quantization" (what the
loader builds int8 layers for) and "quantized_from" (the source's path and weights' sha256). A
LoRA adapter run is merged into its base first; an int8 checkpoint is not quantized again.
"""

from pathlib import Path

from gptcli.errors import GptError
from gptcli.loading import base_reference, load_checkpoint
from gptcli.models.int8 import RECORD, quantize_model
from gptcli.models.lora import has_lora, merge_lora
from gptcli.storage import checkpoint as ckpt

NOT_INFO = ("format", "version", "tokenizer_kind", "model")  # save_checkpoint writes these itself
ADAPTER_ONLY = ("lora", "base")  # an adapter's: gone once it is merged


def quantize_checkpoint(path: str | Path, out: str | Path, best: bool = False) -> Path:
    """The checkpoint `path` names (a run's newest or best) with int8 weights, written to `out`. -> out"""
    directory = ckpt.resolve_checkpoint(path, best=best)
    saved = ckpt.read_config(directory)
    if "quantization" in saved:
        raise GptError(f"{directory} is an int8 checkpoint already")
    out = Path(out)
    if out.resolve() == directory.resolve():
        raise GptError(f"--out {out} is the checkpoint being quantized: write the int8 one elsewhere")
    if out.exists() and not ckpt.is_checkpoint(out) and (not out.is_dir() or any(out.iterdir())):
        raise GptError(f"--out {out} exists and is not a checkpoint: give a new or empty folder")
    model, tokenizer, config = load_checkpoint(directory)
    source = base_reference(directory)  # before anything is written: the weights quantized
    if has_lora(model):
        merge_lora(model)
    quantize_model(model)
    info = {k: v for k, v in config.items() if k not in NOT_INFO + ADAPTER_ONLY}
    info |= {"quantization": RECORD, "quantized_from": source}
    return ckpt.save_checkpoint(out, model, config["model"], tokenizer, info=info)


def refuse_int8(directory: Path, saved: dict, what: str) -> None:
    """A one-line error where `what` (a command, an option) needs float weights and `saved` (the config
    of the checkpoint in `directory`) is an int8 checkpoint's."""
    if "quantization" in saved:
        origin = saved.get("quantized_from", {}).get("path", "?")
        raise GptError(
            f"{directory} is an int8 checkpoint (gpt quantize), for decoding only: give {what} the "
            f"checkpoint it was quantized from ({origin})"
        )
