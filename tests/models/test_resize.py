"""resize_vocab: room for new tokens, every old token's logits unchanged, new rows at the old mean."""

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.loading import load_checkpoint
from gptcli.models import GPT, LSTM, resize_vocab
from gptcli.models.resize import token_layers
from gptcli.storage.checkpoint import save_checkpoint
from gptcli.tokenizers import CharTokenizer

OLD = 50


def make_model(arch: str = "gpt", tie_weights: bool = True, **overrides):
    values = dict(vocab_size=OLD, block_size=16, n_layer=2, n_embd=32, dropout=0.0, tie_weights=tie_weights)
    if arch == "gpt":
        values.update(n_head=4)
    values.update(overrides)
    torch.manual_seed(0)
    cls = GPT if arch == "gpt" else LSTM
    return cls(ModelConfig(arch=arch, **values)).eval()


def old_tokens() -> torch.Tensor:
    return torch.randint(0, OLD, (2, 12), generator=torch.Generator().manual_seed(1))


MODELS = [("gpt", True), ("gpt", False), ("lstm", True), ("lstm", False)]
MODEL_IDS = ["gpt-tied", "gpt-untied", "lstm-tied", "lstm-untied"]


@pytest.mark.parametrize("new", [53, 70], ids=["same-padding", "padding-grows"])
@pytest.mark.parametrize("arch,tied", MODELS, ids=MODEL_IDS)
def test_old_logits_are_unchanged_and_new_rows_start_at_the_old_mean(arch, tied, new):
    model = make_model(arch, tied)
    idx = old_tokens()
    with torch.no_grad():
        before = model(idx)[0]  # (B, T, OLD)
        means = [w[:OLD].mean(dim=0) for w in (token_layers(model)[0].weight, model.lm_head.weight)]
    old_config = model.config

    assert resize_vocab(model, new) is model
    assert model.config.vocab_size == new and old_config.vocab_size == OLD  # a copy, not edited in place
    rows = model.config.padded_vocab_size
    assert rows == (64 if new <= 64 else 128)
    wte, lm_head = token_layers(model)
    assert wte.weight.shape == lm_head.weight.shape == (rows, 32)
    assert wte.num_embeddings == lm_head.out_features == rows
    for weight, mean in zip((wte.weight, lm_head.weight), means):
        torch.testing.assert_close(weight[OLD:new], mean.expand(new - OLD, -1), atol=1e-7, rtol=0)
    assert (wte.weight is lm_head.weight) == tied  # tied stays tied, untied stays apart

    with torch.no_grad():
        after = model(idx)[0]
    assert after.shape == (2, 12, new)
    torch.testing.assert_close(after[..., :OLD], before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch,tied", MODELS, ids=MODEL_IDS)
def test_a_resized_model_trains_its_new_tokens(arch, tied):
    model = resize_vocab(make_model(arch, tied).train(), 70)
    idx = torch.tensor([[1, 50, 68, 69, 3]])
    targets = torch.tensor([[50, 68, 69, 3, 50]])
    loss = model(idx, targets)[1]
    loss.backward()
    for weight in {id(w): w for w in (token_layers(model)[0].weight, model.lm_head.weight)}.values():
        assert weight.grad[[50, 68, 69]].abs().sum(dim=1).gt(0).all()  # the new rows learn
        assert torch.all(weight.grad[70:] == 0)  # padding rows stay untrained


def test_a_resized_model_saves_and_loads(tmp_path):
    tok = CharTokenizer(list("abcdefgh"), {"<|endoftext|>": 8})
    config = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=8)
    torch.manual_seed(0)
    model = GPT(config).eval()
    specials = {"<|endoftext|>": 8, "<|im_start|>": 9, "<|im_end|>": 10}
    grown_tok = CharTokenizer(list("abcdefgh"), specials)
    resize_vocab(model, grown_tok.vocab_size)
    path = save_checkpoint(tmp_path / "ck", model, model.config, grown_tok, {"step": 0})

    loaded, loaded_tok, saved = load_checkpoint(path)
    assert saved["model"].vocab_size == 11 and loaded_tok.vocab_size == 11
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # tied on load
    idx = torch.tensor([grown_tok.encode("<|im_start|>abc<|im_end|>", allow_special=True)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_the_vocabulary_only_grows():
    model = make_model()
    with pytest.raises(GptError, match="only grow"):
        resize_vocab(model, OLD - 1)
    weight = model.lm_head.weight
    assert resize_vocab(model, OLD) is model and model.lm_head.weight is weight  # nothing to do
