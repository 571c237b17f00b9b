"""Pydantic configs: every command's options are validated here before any work starts.

The CLI turns flags into one of these; library code takes them. A config's JSON is written next to
what it produced, so later commands can read the settings back instead of asking for them again.
"""

from pathlib import Path
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from gptcli.config_values import check_device, parse_duration
from gptcli.errors import GptError, one_line_validation_error

ENDOFTEXT = "<|endoftext|>"  # GPT-2's document separator: the default special token
DEFAULT_BPE_VOCAB_SIZE = 4096
SHARD_TOKENS = 100_000_000  # tokens per token-store shard (200 MB of uint16): the unit of resume
# the values an option may take: a choice the command line checks (a bad one exits 2), and the
# configs' field types, so a --config file or a saved run is checked against the same values
TokenizerKind = Literal["bpe", "char"]
Arch = Literal["gpt", "lstm", "encdec"]
LoraTarget = Literal["attn", "proj", "mlp"]
PosEmb = Literal["learned", "rope", "sinusoidal", "none"]
Norm = Literal["layernorm", "rmsnorm"]
Schedule = Literal["cosine", "wsd"]
OptimizerName = Literal["adamw", "muon"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
ExportFormat = Literal["hf", "tiktoken"]
ChatFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt-completion"]
EXPORT_FORMATS = get_args(ExportFormat)  # gpt tokenizer export --format
DEVICE_HELP = "auto (a GPU if there is one), cpu, cuda, cuda:N or mps."
PRECISIONS = get_args(Precision)
HUB_NAMES = {  # `gpt load-gpt2 NAME`: OpenAI's GPT-2 sizes on the Hugging Face hub
    name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
}
PRECISION_HELP = "auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16."
# how a corpus is read (gptcli.data.sources.SourceOptions), for every config that reads one
TEXT_FIELD_HELP = "The JSON field, or Parquet / HF dataset column, that holds each document's text."
SPLIT_HELP = "The split of an HF DatasetDict folder to read (needed when it has several)."
SKIP_BAD_RECORDS_HELP = "Skip and count bad records (and unreadable files) instead of stopping at the first."


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class TokenizerTrainConfig(StrictModel):
    """`gpt tokenizer train`: what to train on and what to learn."""

    files: list[str] = Field(
        min_length=1,
        description="Corpus files (text, .jsonl/.json, .parquet, .gz/.zst), directories (searched), "
        "HF dataset folders or glob patterns.",
    )
    text_field: str = Field("text", min_length=1, description=TEXT_FIELD_HELP)
    split: str | None = Field(None, min_length=1, description=SPLIT_HELP)
    skip_bad_records: bool = Field(False, description=SKIP_BAD_RECORDS_HELP)
    kind: TokenizerKind = Field("bpe", description="bpe (byte-level BPE) or char (one id per character).")
    vocab_size: int | None = Field(
        None,
        description="Vocabulary size incl. 256 bytes and special tokens "
        f"(default: {DEFAULT_BPE_VOCAB_SIZE} for bpe; for char an upper bound).",
    )
    special_tokens: list[str] = Field(
        default_factory=lambda: [ENDOFTEXT], description="Special tokens, ids after the vocabulary."
    )
    pattern: str = Field("gpt4", description="Split pattern: gpt2, gpt4, or a regex (bpe only).")
    out: Path = Field(Path("tokenizer.json"), description="Where to write the tokenizer JSON.")
    workers: int | None = Field(
        None, ge=1, description="Processes for pre-tokenizing large corpora (default: all cores)."
    )

    @field_validator("special_tokens")
    @classmethod
    def _specials_distinct(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("special tokens must not be empty")
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicate special token(s): {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _vocab_fits(self) -> "TokenizerTrainConfig":
        if self.kind == "bpe":
            if self.vocab_size is None:
                self.vocab_size = DEFAULT_BPE_VOCAB_SIZE
            minimum = 256 + len(self.special_tokens)
            if self.vocab_size < minimum:
                raise ValueError(
                    f"vocab_size {self.vocab_size} is too small: a byte-level BPE needs at least "
                    f"256 byte tokens + {len(self.special_tokens)} special = {minimum}"
                )
        elif self.vocab_size is not None and self.vocab_size <= len(self.special_tokens):
            raise ValueError(f"vocab_size {self.vocab_size} leaves no room for characters")
        return self


class ModelConfig(StrictModel):
    """The shape of a model. Saved in every checkpoint's config.json, so nothing is typed twice.

    arch "gpt" is the transformer; "lstm" the baseline LSTM (gptcli/models/lstm.py), which reads only
    vocab_size, block_size, n_layer, n_embd (its hidden size), dropout, bias and tie_weights; "encdec"
    the encoder-decoder (gptcli/models/encdec.py): n_enc_layer encoder and n_layer decoder blocks.
    """

    arch: Arch = Field(
        "gpt",
        description="gpt (the transformer), lstm (the baseline: reads n-layer, n-embd, block-size, dropout) "
        "or encdec (an encoder-decoder, trained on prompt/completion pairs).",
    )
    vocab_size: int | None = Field(None, ge=1, description="The tokenizer's vocabulary (padded to 64s).")
    block_size: int = Field(256, ge=1, description="Context length in tokens.")
    n_layer: int = Field(6, ge=1, description="Transformer blocks (an encdec's decoder's), or LSTM layers.")
    n_enc_layer: int | None = Field(None, ge=1, description="encdec: encoder blocks (default: n_layer).")
    n_head: int = Field(6, ge=1, description="Attention heads.")
    n_kv_head: int | None = Field(None, ge=1, description="Key/value heads for GQA/MQA (default: n_head).")
    n_embd: int = Field(384, ge=1, description="Width; an LSTM's hidden size.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout.")
    bias: bool = Field(True, description="Biases in Linear layers and LayerNorms, as GPT-2.")
    pos_emb: PosEmb = Field("learned", description="Positions: learned, rope, sinusoidal or none.")
    rope_base: float = Field(10000.0, gt=0, description="RoPE's base frequency.")
    window: int | None = Field(None, ge=1, description="Sliding-window attention: see at most N tokens.")
    norm: Norm = Field("layernorm", description="layernorm or rmsnorm.")
    norm_eps: float = Field(1e-5, gt=0, description="The norms' epsilon.")
    gelu: Literal["tanh", "exact"] = Field("tanh", description="GELU: the tanh form (GPT-2) or exact.")
    tie_weights: bool = Field(True, description="lm_head shares wte's weight.")
    flash: bool = Field(True, description="Fused attention (scaled_dot_product_attention), else explicit.")

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.arch == "lstm":
            # a transformer-only setting changed from its default would silently do nothing: refuse it
            changed = [k for k in TRANSFORMER_ONLY if getattr(self, k) != ModelConfig.model_fields[k].default]
            if self.n_kv_head != self.n_head:
                changed.append("n_kv_head")
            if changed:
                raise ValueError(f"{', '.join(changed)}: transformer settings, an LSTM has none")
            return self
        if self.arch == "encdec":
            self.n_enc_layer = self.n_enc_layer or self.n_layer
            if self.pos_emb == "none" or self.window is not None:
                raise ValueError("an encdec needs positions (learned, sinusoidal or rope) and no window")
        elif self.n_enc_layer is not None:
            raise ValueError(f"n_enc_layer sets an encdec's encoder; a {self.arch} has none")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size; n_embd / n_head = {self.head_dim}")
        if self.pos_emb == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        data = handler(self)
        if self.arch != "encdec":  # only an encdec has an encoder: other configs are written as before
            data.pop("n_enc_layer", None)
        return data

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to a multiple of 64 (faster matmuls)."""
        if self.vocab_size is None:
            raise GptError("the model's vocab_size is not set (it comes from the tokenizer)")
        return -(-self.vocab_size // 64) * 64


# ModelConfig fields only the transformer reads (n_kv_head too, unless it just follows n_head)
TRANSFORMER_ONLY = ("n_enc_layer", "n_head", "pos_emb", "rope_base", "window", "norm", "norm_eps", "gelu")


class ChatDataConfig(StrictModel):
    """`gpt finetune`: the data are conversations, rendered by a chat template with a loss mask."""

    format: ChatFormat = Field(
        "auto",
        description="The records' format: auto (detected per record), messages, sharegpt, alpaca or "
        "prompt-completion.",
    )
    template: dict | None = Field(
        None,
        description="The chat template (gptcli.chat.template.ChatTemplate as JSON); None: ChatML.",
    )
    train_on_prompt: bool = Field(
        False, description="Train on every token, not only the assistant's replies and their end tokens."
    )
    pack: bool = Field(
        True, description="Pack short conversations into full blocks (attention stays in each)."
    )
    epochs: float | None = Field(
        3.0, gt=0, description="Passes over the training conversations; sets max_iters when it is not given."
    )


class LoraConfig(StrictModel):
    """`gpt finetune --lora`: small adapters trained beside a frozen base (gptcli.models.lora)."""

    r: int = Field(8, ge=1, description="The adapters' rank.")
    alpha: float = Field(16.0, gt=0, description="The adapters' update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    targets: list[LoraTarget] = Field(
        ["attn"], min_length=1, description="Layers given adapters (attn, proj, mlp)."
    )
    base_precision: Literal["fp32", "bf16"] = Field("fp32", description="The frozen base's matrices.")


class TrainConfig(StrictModel):
    """`gpt train`: data, model shape, optimization, evaluation, system. Written to RUN_DIR/config.json.

    Unset data/tokenizer fields are resolved at the start of a run (see gptcli.training.inputs) and the
    resolved values are what the run directory records.
    """

    # data
    data: list[str] | None = Field(
        None, description="Corpus files/dirs/globs (default: the tokenizer's corpus)."
    )
    val_data: list[str] | None = Field(
        None, description="Separate validation files (default: the last --val-fraction of the data)."
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of tokens held out for validation."
    )
    text_field: str = Field("text", min_length=1, description=TEXT_FIELD_HELP)
    split: str | None = Field(None, min_length=1, description=SPLIT_HELP)
    skip_bad_records: bool = Field(False, description=SKIP_BAD_RECORDS_HELP)
    tokenizer: str | None = Field(
        None, description="Tokenizer file/dir, or 'char' (default: ./tokenizer.json, else char)."
    )
    data_cache: Path | None = Field(None, description="Folder for token caches (default: ~/.cache/gptcli).")
    chat: ChatDataConfig | None = Field(None, description="Conversations (gpt finetune); None: plain text.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters on a frozen --init-from base.")
    # model
    model: ModelConfig = Field(default_factory=ModelConfig)
    init_from: Path | None = Field(
        None,
        description="Start from a checkpoint's weights (fine-tuning): a checkpoint dir, or a run dir "
        "(its newest checkpoint).",
    )
    # optimization
    batch_size: int = Field(12, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_iters: int = Field(2000, ge=1, description="Optimizer steps.")
    max_time: float | None = Field(
        None, gt=0, description="End the command in this long, final eval and save included: 90, 15m, 1.5h."
    )
    target_loss: float | None = Field(
        None, description="Stop at the first eval whose val loss is at most this (it is saved)."
    )
    early_stop: int | None = Field(
        None, ge=1, description="Stop after this many evals in a row without a better val loss."
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float | None = Field(
        None, ge=0, description="Learning rate at the end of the decay (default: lr/10)."
    )
    warmup_iters: int = Field(100, ge=0, description="Linear warmup steps.")
    lr_decay_iters: int | None = Field(None, ge=1, description="End of the decay (default: max_iters).")
    schedule: Schedule = Field(
        "cosine",
        description="cosine (warmup, cosine decay to min-lr) or wsd (warmup, stable at lr, "
        "linear decay to min-lr over the last --decay-fraction).",
    )
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: the fraction of the run, at its end, that decays to min-lr."
    )
    optimizer: OptimizerName = Field(
        "adamw",
        description="adamw, or muon: Muon for the hidden layers' weight matrices, AdamW for the rest.",
    )
    muon_lr: float = Field(0.02, gt=0, description="Muon's peak learning rate, on the schedule lr follows.")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's momentum (Nesterov).")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay on matrices and embeddings (Muon's get none)."
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.99, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm, 0 = off.")
    # evaluation, logging, checkpoints
    eval_interval: int = Field(250, ge=1, description="Steps between evals + checkpoints.")
    eval_iters: int = Field(20, ge=1, description="Batches per eval.")
    log_interval: int = Field(10, ge=1, description="Steps between log lines.")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept, plus the best.")
    sample_tokens: int = Field(200, ge=0, description="Tokens sampled at each eval, 0 = none.")
    # system
    precision: Precision = Field("auto", description=PRECISION_HELP)
    compile: bool = Field(False, description="torch.compile the model.")
    activation_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory for long contexts."
    )
    fsdp: bool = Field(
        False,
        description="Under torchrun: shard weights, gradients and optimizer state across ranks (FSDP2).",
    )
    device: str = Field("auto", description=DEVICE_HELP)
    seed: int = Field(1337, description="Random seed.")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files to RUN_DIR/tensorboard.")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, v):
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is above lr ({self.lr})")
        if self.fsdp and self.model.arch != "gpt":
            raise ValueError(f"fsdp shards transformer blocks (gpt only): train {self.model.arch} without it")
        if self.lora is not None and (self.init_from is None or self.model.arch != "gpt" or self.fsdp):
            raise ValueError(
                "LoRA adapts a GPT base (init_from: gpt finetune --checkpoint BASE), without fsdp"
            )
        return self


class DataPrepareConfig(StrictModel):
    """`gpt data prepare`: a corpus tokenized once into a token store folder (gptcli.data.prepare)."""

    files: list[str] = Field(
        min_length=1,
        description="Corpus files (text, .jsonl/.json, .parquet, .gz/.zst), directories (searched), "
        "HF dataset folders or glob patterns.",
    )
    tokenizer: Path = Field(Path("tokenizer.json"), description="Tokenizer file or folder.")
    out: Path = Field(description="The store folder to write (new, empty, or this store's, to resume).")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of tokens, at the end, held out as val shards."
    )
    val_data: list[str] | None = Field(
        None, description="Separate validation sources, instead of --val-fraction."
    )
    text_field: str = Field("text", min_length=1, description=TEXT_FIELD_HELP)
    split: str | None = Field(None, min_length=1, description=SPLIT_HELP)
    skip_bad_records: bool = Field(False, description=SKIP_BAD_RECORDS_HELP)
    workers: int | None = Field(None, ge=1, description="Processes that encode (default: all cores).")
    shard_tokens: int = Field(
        SHARD_TOKENS,
        ge=1,
        description="A shard ends at the first block boundary at or after this many tokens.",
    )
    overwrite: bool = Field(False, description="Replace a store of other inputs in --out.")

    @model_validator(mode="after")
    def _one_val_source(self) -> "DataPrepareConfig":
        if self.val_data and "val_fraction" in self.model_fields_set:
            raise ValueError("give --val-fraction or --val-data, not both")
        return self


class SampleConfig(StrictModel):
    """`gpt generate`: how to sample. The model, tokenizer and context length come from the checkpoint."""

    num_samples: int = Field(1, ge=1, description="Samples, generated together as one batch.")
    max_new_tokens: int = Field(256, ge=1, description="Tokens to generate per sample.")
    temperature: float = Field(0.8, ge=0.0, description="Softmax temperature; 0 = greedy.")
    top_k: int | None = Field(200, ge=1, description="Sample from the k most likely tokens only.")
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set with this probability mass."
    )
    seed: int | None = Field(None, description="Random seed: same seed + checkpoint + device = same text.")
    stop: list[str] = Field(
        default_factory=list, description="Stop string (repeatable): a sample ends just before it."
    )
    ignore_eos: bool = Field(False, description="Do not stop at <|endoftext|>.")

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must not be empty")
        return v


class ServeConfig(StrictModel):
    """`gpt serve`: where to listen, who may call, how much one request may ask for."""

    checkpoint: Path = Field(Path("out"), description="Checkpoint dir, or a run dir (its newest checkpoint).")
    best: bool = Field(False, description="With a run dir: the checkpoint with the lowest val loss.")
    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for every interface.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on; 0 = any free port.")
    api_key: str | None = Field(
        None, min_length=1, description="Every request must send 'Authorization: Bearer KEY'."
    )
    max_batch: int = Field(16, ge=1, le=1024, description="Sequences decoded together (slots in the batch).")
    max_tokens_limit: int = Field(
        4096,
        ge=1,
        description="Largest max_tokens a request may ask for (past the context the window slides).",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body, in bytes.")
    prefix_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory (MiB) for keys and values of prompts seen before, reused by a prompt that starts "
        "with one (a chat's history); least recently used go first; 0 = off.",
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM or Ctrl-C: how long requests in flight may take to finish."
    )
    model_name: str | None = Field(
        None, min_length=1, description="The model id clients use (default: the checkpoint's folder name)."
    )
    device: str = Field("auto", description=DEVICE_HELP)
    precision: Precision = Field("auto", description=PRECISION_HELP)
    compile: bool = Field(False, description="Compile the decode step (torch.compile; CUDA graph on a GPU).")
    quantize: Literal["int8"] | None = Field(None, description="int8: decode with int8 weights.")
    quiet: bool = Field(False, description="No log line per request.")
    adapters: dict[str, Path] = Field(
        default_factory=dict, description="LoRA adapters of the checkpoint, by model id: --adapter NAME=RUN."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)


def validate(schema: type[BaseModel], /, **values):
    """Build a config, turning validation errors into a one-line GptError."""
    try:
        return schema(**values)
    except ValidationError as e:
        raise GptError(f"invalid {schema.__name__}: {one_line_validation_error(e)}") from None
