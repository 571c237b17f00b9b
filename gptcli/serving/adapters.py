"""`gpt serve --adapter NAME=RUN`: LoRA adapters of the served base, each a model of its own to clients,
all decoded in one batch (gptcli.models.multi_lora: every row applies its own adapter).

    models = serve_adapters(engine, {"chat": Path("runs/chat")}, base_id="base")
    models["chat"].engine.chat_template      # {model id: ServedModel}: the base's id and each NAME

Each adapter is checked before anything is served: it must be a LoRA checkpoint of the served base
(the sha256 of the weights it recorded must be the base's), and adapters served together must have
one tokenizer (the tokens their fine-tunes added, at the same ids): the batch decodes every row's
ids with it. A request's `model` picks its ServedModel: the shared model seen with that model's
tokenizer and chat template. The base encodes prompts with its own tokenizer (which may lack the
added tokens) and never predicts an added token, so its rows say what the base alone says.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from gptcli.chat.template import ChatTemplate
from gptcli.errors import GptError
from gptcli.generation.engine import Engine
from gptcli.loading import check_base, put_adapters
from gptcli.models import build_model
from gptcli.models.multi_lora import Adapter, add_multi_lora
from gptcli.storage.checkpoint import (
    CONFIG,
    TOKENIZER,
    checkpoint_digests,
    read_config,
    resolve_checkpoint,
)
from gptcli.storage.checksums import verify_file
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.base import Tokenizer


@dataclass
class ServedModel:
    """What a request's `model` names: the base (adapter None) or one adapter."""

    id: str
    adapter: str | None
    engine: Engine  # the shared model, with this model's tokenizer and chat template (a shallow copy)


def serve_adapters(engine: Engine, adapters: dict[str, Path], base_id: str) -> dict[str, ServedModel]:
    """The models a server answers for, by id: the base and each adapter (put on the engine's model, in
    place; the engine then decodes with the adapters' tokenizer)."""
    base_view = copy.copy(engine)  # the base's own tokenizer and template, kept
    models = {base_id: ServedModel(base_id, None, base_view)}
    if not adapters:
        return models
    if engine.encoder_decoder:
        raise GptError("--adapter: LoRA adapters are served on a GPT base; this one is an encoder-decoder")
    if base_id in adapters:
        raise GptError(f"--adapter {base_id!r} is the base's model id: name the adapter otherwise")
    if engine.checkpoint is None:
        raise GptError("adapters need the base's checkpoint, to check that they were trained on it")
    base_vocab = engine.model.config.vocab_size
    loaded = {name: load_adapter(run, engine.checkpoint, base_vocab) for name, run in adapters.items()}
    (first, (_, tokenizer, _)), *others = loaded.items()
    for name, (_, other, _) in others:
        if _tokens(other) != _tokens(tokenizer):
            raise GptError(
                f"adapters {adapters[first]} and {adapters[name]} have different tokenizers: adapters "
                "served together must share one (fine-tuned with the same added tokens)"
            )
    add_multi_lora(engine.model, [a for a, _, _ in loaded.values()], list(loaded), tokenizer.vocab_size)
    engine.tokenizer = tokenizer  # the batch's rows decode with it: the base's ids, and the added ones
    for name, (_, _, template) in loaded.items():
        view = copy.copy(engine)
        view.chat_template = template
        models[name] = ServedModel(name, name, view)
    return models


def load_adapter(run: Path, base: Path, base_vocab: int) -> tuple[Adapter, Tokenizer, ChatTemplate | None]:
    """An adapter run's newest checkpoint -> its tensors, tokenizer and chat template, checked."""
    directory = resolve_checkpoint(run)
    config = read_config(directory)
    if "lora" not in config:
        raise GptError(f"{directory} is not a LoRA adapter (gpt finetune --lora): serve it with -c instead")
    check_base(run, config, base)
    digests = checkpoint_digests(directory)
    if digests is not None:
        for name in (CONFIG, TOKENIZER):
            verify_file(directory / name, digests)
    tokenizer = load_tokenizer(directory / TOKENIZER)
    vocab = config["model"].vocab_size
    if tokenizer.vocab_size != vocab or vocab < base_vocab:
        raise GptError(f"{directory}: a vocabulary of {vocab} does not extend the base's {base_vocab}")
    # the adapter's own model, its base weights never filled (allocated, untouched): only its tensors load
    model = build_model(config["model"], empty=True)
    put_adapters(directory, config, model, base_vocab)
    template = config.get("chat_template")
    return Adapter.of(model), tokenizer, None if template is None else ChatTemplate.from_json(template)


def _tokens(tokenizer: Tokenizer) -> tuple:
    return tokenizer.kind, tokenizer.vocab_size, tokenizer.special_tokens
