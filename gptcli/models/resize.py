"""Growing a model's vocabulary: rows for tokens its tokenizer gained (a chat template's <|im_start|> ...).

    resize_vocab(model, tokenizer.vocab_size)   # after adding tokens (new ids at the end), before
                                                # building the optimizer

The token embedding and the output head (one tensor when tied) get a row for each new id, each
starting at the mean of the old vocabulary's rows, as Hugging Face's `resize_token_embeddings` with
mean init: a new token starts as an average one. Old rows are copied, so for inputs of old tokens
the hidden states, and the logits of every old token, are unchanged; the new tokens' logits are
added. The weights keep the padded shape every model is built with (ModelConfig.padded_vocab_size,
a multiple of 64, which may grow): rows past vocab_size are padding, never read and never trained.
"""

import torch
from torch import Tensor, nn

from gptcli.errors import GptError
from gptcli.models.base import LanguageModel
from gptcli.models.gpt import GPT


def resize_vocab(model: LanguageModel, new_vocab_size: int) -> LanguageModel:
    """Grow `model` (a GPT or an LSTM, unwrapped: not compiled, not DDP) in place to `new_vocab_size`
    tokens; new rows are the mean of the old ones, model.config is a copy with the new vocab_size.

    The embedding and head become new Parameters: build the optimizer after this. -> model
    """
    config = model.config
    old = config.vocab_size
    if new_vocab_size < old:
        raise GptError(f"the vocabulary can only grow: {old} tokens, asked for {new_vocab_size}")
    if new_vocab_size == old:
        return model
    model.config = config.model_copy(update={"vocab_size": new_vocab_size})
    rows = model.config.padded_vocab_size
    wte, lm_head = token_layers(model)
    lm_head.weight = _grown(lm_head.weight, old, rows)
    lm_head.out_features = rows
    # tied: the embedding is the head's Parameter, so growing one grows both, and they stay one
    wte.weight = lm_head.weight if config.tie_weights else _grown(wte.weight, old, rows)
    wte.num_embeddings = rows
    return model


def token_layers(model: LanguageModel) -> tuple[nn.Embedding, nn.Linear]:
    """The token embedding and the output head of a GPT or an LSTM: (wte, lm_head)."""
    wte = model.transformer.wte if isinstance(model, GPT) else model.wte
    return wte, model.lm_head


def _grown(weight: Tensor, old: int, rows: int) -> nn.Parameter:
    """(P, C) rows of which the first `old` are the vocabulary's -> (rows, C): those copied, every other
    row (new tokens, padding) the mean of them."""
    with torch.no_grad():
        mean = weight[:old].float().mean(dim=0).to(weight.dtype)  # (C,): averaged in fp32
        grown = mean.expand(rows, -1).clone()  # (rows, C)
        grown[:old] = weight[:old]
    return nn.Parameter(grown, requires_grad=weight.requires_grad)
