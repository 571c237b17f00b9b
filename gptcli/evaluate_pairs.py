"""Evaluating on prompt/completion pairs: the completion loss, and exact match of greedy completions.

    pairs, report = read_pairs(["pairs.jsonl"])                  # gptcli.data.pairs
    framing = pair_framing(model, tokenizer, config, "out")     # how this model reads a pair
    result = evaluate_pairs(model, framing, pairs, exact_match=True)
    result.loss, result.perplexity, result.tokens, result.exact_match

**Completion loss**: the mean cross-entropy per completion token, its end token included, summed over
every pair and divided by the tokens counted (not a mean of batch means). Each kind of model reads a
pair as it was trained on one, and is scored on the same thing, so the figures compare directly:

    encoder-decoder   the prompt to the encoder; the decoder reads <|endoftext|> + completion and
                      predicts completion + <|endoftext|> (gptcli.data.pairs.encode_pair)
    chat GPT / LSTM   the pair as a user message and the assistant's reply, rendered by the
                      checkpoint's chat template; scored on the trained positions (the reply and
                      its end token), as fine-tuning trains them (gptcli.chat.template.render)

A model without a chat template (a GPT trained on plain text) does not know how a prompt is framed:
it is refused. **Exact match**: each pair's completion decoded greedily (argmax), at most
len(completion ids) + EXTRA_TOKENS tokens, stopping at the end token; a match when it stopped there
and the text is the completion exactly. The encoder-decoder decodes a batch of pairs together
(prompts padded, masked in the encoder; every decoder row starts at the start token, so the rows stay
aligned); a chat model decodes one pair at a time through gptcli.generation.decoder.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptcli.data.pairs import Pair, encode_pair, start_id
from gptcli.errors import GptError
from gptcli.models.encdec import pad_prompts
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.bpe_train import Progress

EXTRA_TOKENS = 4  # a greedy completion may run this many tokens past the expected one's length


@dataclass
class PairResult:
    loss: float  # mean cross-entropy per completion token (its end token included), in nats
    perplexity: float
    tokens: int  # completion tokens scored
    pairs: int
    exact_match: float | None = None  # the fraction of greedy completions equal to the expected ones
    exact_matches: int | None = None

    def to_json(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class Example:
    """One pair as a model reads it: ids[i] is scored where scored[i] (the completion and its end)."""

    ids: list[int]
    scored: list[int]
    src: list[int] | None = None  # the encoder's ids (encoder-decoder only)


# ---- how a model reads a pair


class EncDecFraming:
    """An encoder-decoder's pairs: the prompt to the encoder, <|endoftext|> around the completion."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.end_ids = (start_id(tokenizer),)

    def example(self, pair: Pair) -> Example:
        src, target = encode_pair(self.tokenizer, pair)
        return Example(target, [0] + [1] * (len(target) - 1), src)

    def complete(
        self, model, pairs: list[Pair], batch_size: int, progress: Progress | None
    ) -> list[list[int]]:
        """Greedy completions, a batch of pairs at a time (see greedy_encdec)."""
        out: list[list[int]] = []
        for b in range(0, len(pairs), batch_size):
            batch = [self.example(p) for p in pairs[b : b + batch_size]]
            limits = [len(e.ids) - 2 + EXTRA_TOKENS for e in batch]  # ids: start + completion + end
            out += greedy_encdec(model, [e.src for e in batch], limits, self.end_ids[0])
            if progress:
                progress("exact match", len(out), len(pairs))
        return out


class ChatFraming:
    """A chat model's pairs: a user message and the reply, rendered by its template."""

    def __init__(self, tokenizer: Tokenizer, template):
        from gptcli.chat.template import end_ids

        self.tokenizer, self.template = tokenizer, template
        self.end_ids = end_ids(template, tokenizer)

    def example(self, pair: Pair) -> Example:
        from gptcli.chat.template import render

        rendered = render(_messages(pair), self.template, self.tokenizer)
        return Example(rendered.ids, rendered.trained)

    def complete(
        self, model, pairs: list[Pair], batch_size: int, progress: Progress | None
    ) -> list[list[int]]:
        """Greedy completions, one pair at a time (prompts of different lengths)."""
        from gptcli.chat.template import render

        out = []
        for pair in pairs:
            prompt = render(_messages(pair)[:1], self.template, self.tokenizer, add_generation_prompt=True)
            limit = len(self.tokenizer.encode_ordinary(pair.completion)) + EXTRA_TOKENS
            out.append(greedy_decoder(model, prompt.ids, limit, self.end_ids))
            if progress:
                progress("exact match", len(out), len(pairs))
        return out


def _messages(pair: Pair) -> list[dict]:
    return [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.completion}]


def pair_framing(model, tokenizer: Tokenizer, config: dict, name: str | Path):
    """How the checkpoint's model reads pairs; a model that does not know how (no chat template) is
    a one-line error."""
    if getattr(model, "encoder_decoder", False):
        return EncDecFraming(tokenizer)
    if config.get("chat_template") is None:
        raise GptError(
            f"{name} is a {config['model'].arch} without a chat template: it does not know how a prompt "
            "is framed, so it cannot be scored on prompt/completion pairs (evaluate a fine-tuned or "
            "pair-trained checkpoint, or give a text corpus)"
        )
    from gptcli.chat.template import ChatTemplate

    return ChatFraming(tokenizer, ChatTemplate.from_json(config["chat_template"]))


# ---- the figures


@torch.no_grad()
def evaluate_pairs(
    model: torch.nn.Module,
    framing,
    pairs: list[Pair],
    batch_size: int = 8,
    exact_match: bool = False,
    progress: Progress | None = None,
) -> PairResult:
    """The completion loss of the model over `pairs` (and, with exact_match, its greedy completions')."""
    model.eval()
    examples = [framing.example(p) for p in pairs]
    for n, e in enumerate(examples, 1):
        check_fits(model, e, n)
    total_nll, total_tokens = 0.0, 0
    for b in range(0, len(examples), batch_size):
        nll, tokens = batch_nll(model, examples[b : b + batch_size])
        total_nll, total_tokens = total_nll + nll, total_tokens + tokens
        if progress:
            progress("completion loss", min(b + batch_size, len(examples)), len(examples))
    if total_tokens == 0:
        raise GptError("no completion tokens to score")
    loss = total_nll / total_tokens
    result = PairResult(loss, math.exp(min(loss, 700.0)), total_tokens, len(pairs))
    if exact_match:
        completions = framing.complete(model, pairs, batch_size, progress)
        tok = framing.tokenizer
        result.exact_matches = sum(
            1
            for pair, out in zip(pairs, completions)
            if out and out[-1] in framing.end_ids and tok.decode(out[:-1]) == pair.completion
        )
        result.exact_match = result.exact_matches / len(pairs)
    return result


def check_fits(model: torch.nn.Module, e: Example, n: int) -> None:
    """A pair longer than the model's context is a one-line error naming it (1-based)."""
    block = model.config.block_size
    if e.src is not None and len(e.src) > block:
        raise GptError(f"pair {n}: its prompt has {len(e.src)} tokens, more than the context ({block})")
    if len(e.ids) - 1 > block:
        what = "completion" if e.src is not None else "rendered conversation"
        raise GptError(f"pair {n}: its {what} has {len(e.ids) - 1} tokens, more than the context ({block})")


def batch_nll(model: torch.nn.Module, batch: list[Example]) -> tuple[float, int]:
    """Summed cross-entropy of the scored tokens of a batch of examples, and how many there are."""
    device = next(model.parameters()).device
    x, y, src, src_mask = batch_tensors(batch, device)
    if src is None:
        logits, _ = model(x)
    else:
        logits, _ = model(x, src=src, src_mask=src_mask)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
    )
    return nll.item(), int((y != -1).sum())


def batch_tensors(batch: list[Example], device=None):
    """Examples -> x (B, T) inputs, y (B, T) targets (-1: not scored), and for an encoder-decoder the
    prompts (B, S) and their mask (else None, None). Rows are padded at the end."""
    width = max(len(e.ids) for e in batch) - 1
    x = torch.zeros(len(batch), width, dtype=torch.long)
    y = torch.full((len(batch), width), -1, dtype=torch.long)
    for row, e in enumerate(batch):
        ids = torch.tensor(e.ids)
        x[row, : len(ids) - 1] = ids[:-1]
        y[row, : len(ids) - 1] = torch.where(torch.tensor(e.scored[1:], dtype=torch.bool), ids[1:], -1)
    src = src_mask = None
    if batch[0].src is not None:
        src, src_mask = (t.to(device) for t in pad_prompts([e.src for e in batch]))
    return x.to(device), y.to(device), src, src_mask


# ---- greedy decoding


@torch.no_grad()
def greedy_encdec(model, prompts: list[list[int]], limits: list[int], end_id: int) -> list[list[int]]:
    """Greedy completions of an encoder-decoder, the prompts decoded together (Decoder.encode: padded,
    masked in the encoder).

    Row i gets at most limits[i] tokens, the end token included if it comes (then it is the last);
    the decoder's rows start together from the start token (= end_id) and stay aligned: a row that
    is done runs along, its tokens never read."""
    from gptcli.generation.decoder import Decoder

    decoder = Decoder(model, len(prompts), min(model.config.block_size, max(limits)))
    logits = decoder.encode(prompts, end_id)
    out: list[list[int]] = [[] for _ in prompts]
    done = [limit <= 0 for limit in limits]
    for step in range(decoder.max_len):
        ids = logits.argmax(dim=-1)  # (B,)
        for row, token in enumerate(ids.tolist()):
            if not done[row]:
                out[row].append(token)
                done[row] = token == end_id or len(out[row]) >= limits[row]
        if all(done) or step == decoder.max_len - 1:
            break  # (the context is full: the rows left stop where they are)
        logits = decoder.step(ids)
    return out


@torch.no_grad()
def greedy_decoder(model, prompt: list[int], limit: int, end_ids: tuple[int, ...]) -> list[int]:
    """A decoder-only model's greedy completion of one prompt: at most `limit` tokens, the end
    token included if it comes (then it is the last), within the model's context."""
    from gptcli.generation.decoder import Decoder

    block = model.config.block_size
    if len(prompt) >= block:
        return []  # no room left to write a token after the prompt
    decoder = Decoder(model, batch_size=1, max_len=min(block, len(prompt) + limit))
    logits = decoder.prefill([prompt])
    out: list[int] = []
    while True:
        token = int(logits[0].argmax())
        out.append(token)
        if token in end_ids or len(out) >= limit or len(prompt) + len(out) > decoder.max_len:
            return out
        logits = decoder.step(torch.tensor([token], device=decoder.device))
