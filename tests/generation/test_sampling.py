"""The draw: its candidates (temperature, top-k, top-p) and its random numbers, against torch's own."""

import pytest
import torch

from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.generation import Engine
from gptcli.generation.sampling import (
    NO_TOKEN,
    candidates,
    draw,
    draw_noise,
    filter_logits,
    pick_next,
)
from tests.generation.test_engine import char_tokenizer, tiny_model


@pytest.mark.parametrize("top_k,top_p", [(5, None), (5, 0.6), (None, 0.6), (None, None)])
def test_the_draw_is_over_the_same_set_with_the_same_probabilities(top_k, top_p):
    """candidates() (a draw over the top-k only) == softmax(filter_logits()) over the vocabulary."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    reference = torch.softmax(filter_logits(logits, 0.7, top_k, top_p), dim=-1)  # (3, 50)
    probs, ids = candidates(logits, 0.7, top_k, top_p)
    full = probs if ids is None else torch.zeros_like(reference).scatter(-1, ids, probs)
    torch.testing.assert_close(full, reference)


@pytest.mark.parametrize("vocab", [7, 200, 50257])
def test_the_draw_is_torch_multinomial(vocab):
    """draw_noise + draw pick what torch.multinomial(probs, 1) picks from the same generator state."""
    probs = torch.softmax(torch.randn(3, vocab, generator=torch.Generator().manual_seed(1)) * 2, dim=-1)
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(20):
        picked = draw(probs, None, draw_noise(probs, ours))
        assert torch.equal(picked, torch.multinomial(probs, 1, generator=theirs).squeeze(-1))


def test_a_row_that_is_not_a_distribution_draws_no_token():
    probs = torch.softmax(torch.tensor([[1.0, 2.0, 3.0], [float("inf"), 0.0, 1.0]]), dim=-1)  # row 1: NaN
    ids = torch.tensor([[10, 11, 12], [20, 21, 22]])
    picked = draw(probs, ids, draw_noise(probs, torch.Generator().manual_seed(0)))
    assert picked[0] in (10, 11, 12) and picked[1] == NO_TOKEN


def test_pick_next_is_greedy_at_temperature_zero_and_seeded_otherwise():
    logits = torch.randn(4, 50257, generator=torch.Generator().manual_seed(2))
    assert torch.equal(pick_next(logits, SampleConfig(temperature=0.0), None), logits.argmax(-1))
    config = SampleConfig(temperature=0.9, top_k=50, top_p=0.9)
    one = pick_next(logits, config, torch.Generator().manual_seed(3))
    assert torch.equal(one, pick_next(logits, config, torch.Generator().manual_seed(3)))
    allowed = filter_logits(logits, 0.9, 50, 0.9).gather(-1, one[:, None])
    assert torch.isfinite(allowed).all()  # every pick is in its row's top-k / top-p set


def test_a_temperature_that_overflows_is_an_error_not_a_token():
    engine = Engine(tiny_model(), char_tokenizer())
    with pytest.raises(GptError, match="sampling failed: the next token's probabilities are not finite"):
        engine.generate("ab", SampleConfig(max_new_tokens=3, temperature=1e-40, top_k=None))
