"""OpenAI's GPT-2 in Hugging Face's layout <-> our checkpoints.

Our parameter names are GPT-2's, so the map is short: HF stores the four projection weights
(`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) as Conv1D, i.e. (in, out), where
nn.Linear holds (out, in): those four are transposed. HF's causal-mask buffers (`attn.bias`,
`attn.masked_bias`) are dropped, `lm_head` is tied to `wte`, and HF's own vocabulary (50257) is
padded to our multiple of 64 with zero rows that can never be predicted.

    load_hf_gpt2("path/to/gpt2")            -> (GPT, tokenizer): from a local HF folder
    import_gpt2("gpt2", out="ckpt/gpt2")    -> a checkpoint dir (downloads by name when it can)
    export_hf_gpt2("ckpt/gpt2", out="hf/")  -> config.json + model.safetensors (+ tokenizer files:
                                               a BPE's; a char tokenizer has no HF GPT-2 form)

A fine-tuned checkpoint (its config.json records "chat_template") exports with it: tokenizer_config.json
holds the template's Jinja and special tokens (gptcli.tokenizers.export.hf_tokenizer_config), and
generation_config.json ends a reply at the template's end token (and at <|endoftext|>), so
`apply_chat_template(..., add_generation_prompt=True)` then `generate` answers as `gpt chat` does.

Weights are read tensor by tensor (model.safetensors without mmap, pytorch_model.bin with
torch.load(weights_only=True, mmap=True)), so a big model never sits in memory twice.
"""

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from gptcli.chat.template import ChatTemplate
from gptcli.config import HUB_NAMES, ModelConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.models.lora import has_lora, merge_lora
from gptcli.quantize import refuse_int8
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import atomic_write_json, read_json
from gptcli.storage.tensorfile import SafetensorsReader, write_safetensors
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe import BPETokenizer
from gptcli.tokenizers.export import export_hf

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks (not c_attn.bias!), rebuilt by the model
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def model_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """HF GPT2Config (as a dict) -> our ModelConfig: learned positions, LayerNorm with bias, tanh GELU, tied."""
    if hf.get("model_type") != "gpt2":
        raise GptError(f"{source}: not a GPT-2 config (model_type {hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in (*TANH_GELUS, "gelu"):
        raise GptError(f"{source}: unsupported activation_function {act!r}")
    if hf.get("tie_word_embeddings", True) is False:
        raise GptError(f"{source}: an untied lm_head is not GPT-2's layout")
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=0.0,
            bias=True,
            pos_emb="learned",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            gelu="tanh" if act in TANH_GELUS else "exact",
            tie_weights=True,
        )
    except KeyError as e:
        raise GptError(f"{source}: the config has no {e.args[0]!r}") from None
    except ValueError as e:
        raise GptError(f"{source}: {str(e).splitlines()[-1].strip()}") from None


def our_name(hf_name: str) -> str | None:
    """HF key -> our key (None for the mask buffers). Checkpoints of the bare GPT2Model lack 'transformer.'."""
    if hf_name.endswith(HF_BUFFERS):
        return None
    if hf_name.startswith("lm_head."):
        return hf_name
    return hf_name if hf_name.startswith("transformer.") else "transformer." + hf_name


class _TorchBinReader:
    """pytorch_model.bin read with weights_only=True (no code runs) and mmap (tensors paged in on use)."""

    def __init__(self, path: Path):
        try:
            self.tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # the unpickler raises several types for files that are not plain weights
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GptError(f"{path}: refused to load (weights_only=True: {reason[:160]})") from None
        if not isinstance(self.tensors, dict):
            raise GptError(f"{path}: expected a dict of tensors")

    def keys(self):
        return [k for k, v in self.tensors.items() if torch.is_tensor(v)]

    def shape(self, name):
        return tuple(self.tensors[name].shape)

    def get(self, name):
        return self.tensors[name]

    def close(self):
        self.tensors = None


def open_weights(folder: Path):
    if (folder / "model.safetensors").is_file():
        return SafetensorsReader(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _TorchBinReader(folder / "pytorch_model.bin")
    raise GptError(f"{folder}: no weights (expected model.safetensors or pytorch_model.bin)")


def load_hf_gpt2(folder: str | Path, tokenizer_dir: str | Path | None = None) -> tuple[GPT, Tokenizer]:
    """A local HF GPT-2 folder -> (our GPT with its weights, its tokenizer)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GptError(f"not a folder: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GptError(f"{folder}: no config.json")
    config = model_config_from_hf(read_json(config_path), str(config_path))
    tokenizer = load_tokenizer(tokenizer_dir or folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise GptError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    model = GPT.empty(config)  # every weight is filled from the file below (checked)
    reader = open_weights(folder)
    try:
        copy_hf_weights(reader, model, str(folder))
    finally:
        reader.close()
    return model, tokenizer


def copy_hf_weights(reader, model: GPT, source: str) -> None:
    """Fill our model from HF tensors, one at a time, checking every key and shape."""
    targets = ckpt.model_weights(model)  # our name -> our tensor (lm_head tied to wte: stored once)
    seen = set()
    for hf_name in reader.keys():
        name = our_name(hf_name)
        if name is None or (name == "lm_head.weight" and "lm_head.weight" not in targets):
            continue  # a mask buffer, or HF's copy of the tied lm_head
        if name not in targets:
            raise GptError(f"{source}: unexpected tensor {hf_name}")
        target = targets[name]
        shape = reader.shape(hf_name)
        want = tuple(target.shape)
        if name.endswith(CONV1D):
            want = want[::-1]
        elif name == "transformer.wte.weight":
            want = (model.config.vocab_size, want[1])  # HF's rows; ours are padded
        if shape != want:
            raise GptError(f"{source}: {hf_name} has shape {shape}, expected {want}")
        with torch.no_grad():
            if name == "transformer.wte.weight":
                target.zero_()  # padding rows stay zero
                target = target[: shape[0]]
            direct = isinstance(reader, SafetensorsReader) and reader.dtype(hf_name) == target.dtype
            if direct and not name.endswith(CONV1D):
                reader.read_into(hf_name, target)  # straight into our tensor: no temporary copy
            else:
                tensor = reader.get(hf_name)
                target.copy_(tensor.t() if name.endswith(CONV1D) else tensor)
                del tensor
        seen.add(name)
    missing = [k for k in targets if k not in seen]
    if missing:
        raise GptError(
            f"{source}: the weights lack {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )


def fetch_gpt2(name: str) -> Path:
    """Download an OpenAI GPT-2 from the HF hub (only what we read) and return the local folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GptError(
            f"downloading {name} needs huggingface_hub (pip install 'gptcli[hf]'); or pass a local folder"
        ) from None
    try:
        return Path(
            snapshot_download(
                HUB_NAMES[name],
                allow_patterns=["config.json", "model.safetensors", "vocab.json", "merges.txt"],
            )
        )
    except Exception as e:  # offline, hub errors: all mean the same thing to the user
        raise GptError(
            f"could not download {name} ({type(e).__name__}); without network, download the HF folder "
            f"{HUB_NAMES[name]} (config.json, model.safetensors, vocab.json, merges.txt) elsewhere "
            f"and run: gpt load-gpt2 PATH/TO/FOLDER --out DIR"
        ) from None


def import_gpt2(source: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """`gpt load-gpt2`: a hub name or local HF folder -> our checkpoint directory."""
    folder = Path(source)
    if not folder.exists():
        if str(source) not in HUB_NAMES:
            raise GptError(f"{source}: no such folder, and not one of {', '.join(HUB_NAMES)}")
        folder = fetch_gpt2(str(source))
    model, tokenizer = load_hf_gpt2(folder, tokenizer_dir)
    info = {"step": 0, "source": str(source)}
    return ckpt.save_checkpoint(out, model, model.config, tokenizer, info=info)


def export_hf_gpt2(
    checkpoint: str | Path, out: str | Path, best: bool = False, warn: Callable[[str], None] | None = None
) -> list[Path]:
    """`gpt export-hf`: a GPT-2-shaped checkpoint (or a run's newest/best) -> a folder GPT2LMHeadModel
    loads. A tokenizer that is not BPE has no HF GPT-2 form: none is written, and `warn` (default:
    Python's warnings) says so and how to use the model. A fine-tuned checkpoint's chat template goes
    with it (the module docstring); a LoRA adapter's exports merged into its base."""
    directory = ckpt.resolve_checkpoint(checkpoint, best=best)
    saved = ckpt.read_config(directory)
    check_gpt2_layout(saved["model"], directory)
    refuse_int8(directory, saved, "gpt export-hf")
    model, tokenizer, _ = load_checkpoint(directory)
    return write_hf_gpt2(
        merge_lora(model) if has_lora(model) else model, tokenizer, saved, directory, out, warn
    )


def write_hf_gpt2(
    model: GPT,
    tokenizer: Tokenizer,
    saved: dict,
    directory: Path,
    out: str | Path,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """A plain GPT-2-shaped model and its tokenizer -> an HF folder (export_hf_gpt2's files). `saved`:
    the config (read_config) of `directory`, the checkpoint it came from. -> the files written"""
    config = saved["model"]
    template = ChatTemplate.from_json(saved["chat_template"]) if saved.get("chat_template") else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "model.safetensors", out / "config.json"]
    write_safetensors(written[0], hf_weights(model, config), metadata={"format": "pt"})
    eot = tokenizer.eot_id if tokenizer.eot_id is not None else config.vocab_size - 1
    atomic_write_json(written[1], hf_config(config, eot))
    if template is not None:
        written.append(out / "generation_config.json")
        atomic_write_json(written[-1], hf_generation_config(tokenizer, template, eot))
    if isinstance(tokenizer, BPETokenizer):
        written += export_hf(tokenizer, out, chat_template=template, model_max_length=config.block_size)
    else:
        (warn or _python_warning)(no_hf_tokenizer_note(tokenizer, directory))
    return written


def hf_generation_config(tokenizer: Tokenizer, template: ChatTemplate, eot: int) -> dict:
    """generation_config.json of a chat model: a reply ends at the template's end token or at <|endoftext|>."""
    if template.end_token not in tokenizer.special_tokens:
        raise GptError(f"the tokenizer lacks the chat template's end token {template.end_token!r}")
    stops = list(dict.fromkeys([tokenizer.special_tokens[template.end_token], eot]))
    return {"bos_token_id": eot, "eos_token_id": stops, "pad_token_id": eot}


def no_hf_tokenizer_note(tokenizer: Tokenizer, directory: Path) -> str:
    """Why an export has no tokenizer files, and how to give the exported model its ids."""
    own = directory / ckpt.TOKENIZER
    return (
        f"no tokenizer written: this model's tokenizer is {tokenizer.kind}-level, and HF's GPT-2 tokenizer "
        f"files (vocab.json + merges.txt) hold byte-level BPE only; encode text with "
        f"`gpt tokenizer encode -t {own} TEXT` and give those ids to the model as input_ids "
        f"(its output ids decode with `gpt tokenizer decode -t {own}`)"
    )


def _python_warning(message: str) -> None:
    warnings.warn(message, stacklevel=4)  # past write_hf_gpt2 and export_*: the caller


def check_gpt2_layout(config: ModelConfig, directory: Path) -> None:
    """Only what GPT-2's architecture can express exports: a one-line error names what differs."""
    if config.arch != "gpt":
        raise GptError(f"{directory}: an {config.arch} model has no GPT-2 layout to export to")
    unsupported = {
        "pos_emb": config.pos_emb != "learned",
        "norm": config.norm != "layernorm",
        "n_kv_head": config.n_kv_head != config.n_head,
        "window": config.window is not None,
        "tie_weights": not config.tie_weights,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise GptError(
            f"{directory}: GPT-2's layout needs learned positions, LayerNorm, MHA, no window and tied weights; "
            f"this model differs in {', '.join(bad)}"
        )


def hf_weights(model: GPT, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our weights under HF's layout: no padding rows, Conv1D matrices transposed, zero biases if we have none."""
    tensors = {}
    for name, tensor in ckpt.model_weights(model).items():
        if name == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]  # drop our padding rows
        elif name.endswith(CONV1D):
            tensor = tensor.t().contiguous()
        tensors[name] = tensor
    if not config.bias:  # GPT-2 always has biases: ours are absent, i.e. zero
        for i in range(config.n_layer):
            for layer, size in (("attn.c_attn", 3 * config.n_embd), ("attn.c_proj", config.n_embd),
                                ("mlp.c_fc", 4 * config.n_embd), ("mlp.c_proj", config.n_embd),
                                ("ln_1", config.n_embd), ("ln_2", config.n_embd)):  # fmt: skip
                tensors[f"transformer.h.{i}.{layer}.bias"] = torch.zeros(size)
        tensors["transformer.ln_f.bias"] = torch.zeros(config.n_embd)
    return tensors


def hf_config(config: ModelConfig, eot: int) -> dict:
    """transformers' GPT2Config for our shape."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
