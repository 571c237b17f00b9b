"""Pydantic configs: every command's options are validated here before any work starts.

The CLI turns flags into one of these; library code takes them. A config's JSON is written next to
what it produced, so later commands can read the settings back instead of asking for them again.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gptcli.errors import GptError, one_line_validation_error
from gptcli.tokenizers.base import ENDOFTEXT

DEFAULT_BPE_VOCAB_SIZE = 4096


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class TokenizerTrainConfig(StrictModel):
    """`gpt tokenizer train`: what to train on and what to learn."""

    files: list[str] = Field(min_length=1, description="corpus files, directories or glob patterns")
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int | None = Field(
        None,
        description=f"total vocabulary incl. 256 bytes and specials (bpe default {DEFAULT_BPE_VOCAB_SIZE})",
    )
    special_tokens: list[str] = Field(default_factory=lambda: [ENDOFTEXT])
    pattern: str = Field("gpt4", description="split pattern: gpt2, gpt4 or a regex (bpe)")
    out: Path = Path("tokenizer.json")
    workers: int | None = Field(None, ge=1, description="processes for pre-tokenization (default: all cores)")

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
    """The shape of a GPT. Saved in every checkpoint's config.json, so nothing is typed twice."""

    arch: Literal["gpt"] = "gpt"
    vocab_size: int = Field(ge=1, description="the tokenizer's vocabulary (padded to a multiple of 64 inside)")
    block_size: int = Field(256, ge=1, description="context length in tokens")
    n_layer: int = Field(6, ge=1)
    n_head: int = Field(6, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="key/value heads (GQA/MQA); default n_head")
    n_embd: int = Field(384, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(True, description="biases in Linear layers and LayerNorms, as GPT-2")
    pos_emb: Literal["learned", "rope", "sinusoidal", "none"] = "learned"
    rope_base: float = Field(10000.0, gt=0)
    window: int | None = Field(None, ge=1, description="sliding-window attention: see at most this many tokens")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0)
    gelu: Literal["tanh", "exact"] = "tanh"
    tie_weights: bool = Field(True, description="lm_head shares wte's weight")
    flash: bool = Field(True, description="scaled_dot_product_attention (else the explicit, readable path)")

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size; n_embd / n_head = {self.head_dim}")
        if self.pos_emb == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: vocab_size rounded up to a multiple of 64 (faster matmuls)."""
        return -(-self.vocab_size // 64) * 64


def validate(model: type[BaseModel], **values):
    """Build a config, turning validation errors into a one-line GptError."""
    try:
        return model(**values)
    except ValidationError as e:
        raise GptError(f"invalid {model.__name__}: {one_line_validation_error(e)}") from None
