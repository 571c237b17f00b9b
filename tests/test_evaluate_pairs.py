"""`gpt eval` on prompt/completion pairs: the completion loss of an encoder-decoder and of a chat GPT
against hand computations, padded batches against one pair at a time, exact match of greedy
completions, the CLI with both models side by side, its one-line errors, and `gpt info` of an encdec."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gptcli.chat.template import ChatTemplate, end_ids, render
from gptcli.config import ModelConfig
from gptcli.data.pairs import Pair, are_pairs, encode_pair
from gptcli.errors import GptError
from gptcli.evaluate_pairs import (
    ChatFraming,
    EncDecFraming,
    batch_tensors,
    evaluate_pairs,
    greedy_decoder,
    greedy_encdec,
    pair_framing,
)
from gptcli.models import build_model
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import CharTokenizer, with_special_tokens
from tests.conftest import assert_one_line_error, run_cli

CHARS = sorted(set("user assistant\nabcdefgh?"))
PAIRS = [Pair("abc?", "cba"), Pair("h", "hh"), Pair("feed a bag", "gag"), Pair("d", "ed")]
SHAPE = dict(block_size=48, n_layer=1, n_head=2, n_embd=32)


def char_tokenizer(chat: bool = False):
    tok = CharTokenizer(CHARS, {"<|endoftext|>": len(CHARS)})
    return with_special_tokens(tok, ChatTemplate.chatml().special_tokens)[0] if chat else tok


def encdec_model(tok, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="encdec", vocab_size=tok.vocab_size, n_enc_layer=1, **SHAPE)).eval()


def gpt_model(tok, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=tok.vocab_size, **SHAPE)).eval()


def train(model, framing, pairs, steps=60):
    """A few steps on the pairs, until the model writes their completions (and stops)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y, src, src_mask = batch_tensors([framing.example(p) for p in pairs])
    extra = {} if src is None else dict(src=src, src_mask=src_mask)
    for _ in range(steps):
        _, loss = model(x, y, **extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """An encoder-decoder and a chat GPT that both learned PAIRS."""
    tok, chat_tok = char_tokenizer(), char_tokenizer(chat=True)
    encdec = train(encdec_model(tok), EncDecFraming(tok), PAIRS)
    gpt = train(gpt_model(chat_tok), ChatFraming(chat_tok, ChatTemplate.chatml()), PAIRS)
    return (encdec, tok), (gpt, chat_tok)


# ---- the completion loss


def test_encdec_completion_loss_is_the_hand_computation_in_any_batch():
    tok = char_tokenizer()
    model = encdec_model(tok)
    nll, count = 0.0, 0
    with torch.no_grad():
        for pair in PAIRS:  # each pair alone, unpadded
            src, target = encode_pair(tok, pair)
            logits, _ = model(torch.tensor([target[:-1]]), src=torch.tensor([src]))
            nll += F.cross_entropy(logits[0], torch.tensor(target[1:]), reduction="sum").item()
            count += len(target) - 1  # the completion and its end token
    framing = EncDecFraming(tok)
    for batch_size in (1, 3, 4):  # prompts and completions of different lengths: padded batches
        result = evaluate_pairs(model, framing, PAIRS, batch_size=batch_size)
        assert result.tokens == count and result.pairs == len(PAIRS)
        assert result.loss == pytest.approx(nll / count, rel=1e-5)
        assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-6)


def test_chat_gpt_completion_loss_is_the_hand_computation_over_the_trained_positions():
    tok, template = char_tokenizer(chat=True), ChatTemplate.chatml()
    model = gpt_model(tok)
    nll, count = 0.0, 0
    with torch.no_grad():
        for pair in PAIRS:
            messages = [
                {"role": "user", "content": pair.prompt},
                {"role": "assistant", "content": pair.completion},
            ]
            r = render(messages, template, tok)
            logits, _ = model(torch.tensor([r.ids[:-1]]))
            for t in range(1, len(r.ids)):
                if r.trained[t]:
                    nll += F.cross_entropy(logits[0, t - 1], torch.tensor(r.ids[t])).item()
                    count += 1
    assert count == sum(len(p.completion) + 1 for p in PAIRS)  # the reply's characters and <|im_end|>
    for batch_size in (1, 4):
        result = evaluate_pairs(model, ChatFraming(tok, template), PAIRS, batch_size=batch_size)
        assert result.tokens == count
        assert result.loss == pytest.approx(nll / count, rel=1e-5)


def test_a_model_without_a_chat_template_is_refused():
    tok = char_tokenizer()
    model = gpt_model(tok)
    config = {"model": model.config}
    with pytest.raises(GptError, match="without a chat template"):
        pair_framing(model, tok, config, "plain")
    chat = {"model": model.config, "chat_template": ChatTemplate.chatml().to_json()}
    assert isinstance(pair_framing(model, char_tokenizer(chat=True), chat, "chat"), ChatFraming)
    assert isinstance(pair_framing(encdec_model(tok), tok, config, "encdec"), EncDecFraming)


def test_a_pair_longer_than_the_context_is_named():
    tok = char_tokenizer()
    with pytest.raises(GptError, match="pair 2: its prompt has 60 tokens, more than the context"):
        evaluate_pairs(encdec_model(tok), EncDecFraming(tok), [PAIRS[0], Pair("a" * 60, "b")])


# ---- exact match


def uncached_greedy(model, prompt, limit, ends, src=None):
    """Greedy decoding by recomputing the whole sequence for every token (no cache)."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        while len(out) < limit:
            extra = {} if src is None else dict(src=torch.tensor([src]))
            logits, _ = model(torch.tensor([ids]), **extra)
            out.append(int(logits[0, -1].argmax()))
            ids.append(out[-1])
            if out[-1] in ends:
                break
    return out


def test_greedy_encdec_batched_equals_alone_and_recomputation():
    tok = char_tokenizer()
    model = encdec_model(tok, seed=3)
    prompts = [tok.encode_ordinary(p.prompt) for p in PAIRS]
    limits = [3, 7, 1, 5]
    batched = greedy_encdec(model, prompts, limits, tok.eot_id)
    alone = [greedy_encdec(model, [p], [n], tok.eot_id)[0] for p, n in zip(prompts, limits)]
    assert batched == alone
    for out, n in zip(batched, limits):  # at most the limit, and the end token only as the last
        assert len(out) <= n and tok.eot_id not in out[:-1]
    for p, n, out in zip(prompts, limits, batched):
        assert out == uncached_greedy(model, [tok.eot_id], n, (tok.eot_id,), src=p)


def test_greedy_decoder_equals_recomputation():
    tok, template = char_tokenizer(chat=True), ChatTemplate.chatml()
    model = gpt_model(tok, seed=3)
    prompt = render([{"role": "user", "content": "abc?"}], template, tok, add_generation_prompt=True).ids
    ends = end_ids(template, tok)
    assert greedy_decoder(model, prompt, 9, ends) == uncached_greedy(model, prompt, 9, ends)


def test_exact_match_of_models_that_learned_the_pairs(trained):
    (encdec, tok), (gpt, chat_tok) = trained
    framings = [(encdec, EncDecFraming(tok)), (gpt, ChatFraming(chat_tok, ChatTemplate.chatml()))]
    wrong = [Pair(p.prompt, p.completion + "a") for p in PAIRS]  # the model stops before the extra "a"
    for model, framing in framings:
        for batch_size in (1, 3):
            right = evaluate_pairs(model, framing, PAIRS, batch_size, exact_match=True)
            assert (right.exact_match, right.exact_matches) == (1.0, len(PAIRS))
        missed = evaluate_pairs(model, framing, wrong, 4, exact_match=True)
        assert (missed.exact_match, missed.exact_matches) == (0.0, 0)
    # a mix: half right; the loss without exact match leaves it unset
    mixed = evaluate_pairs(encdec, framings[0][1], PAIRS[:2] + wrong[2:], 4, exact_match=True)
    assert mixed.exact_matches == 2 and mixed.exact_match == 0.5
    assert evaluate_pairs(encdec, framings[0][1], PAIRS).exact_match is None


# ---- which data is pairs


def test_pairs_are_told_by_the_first_record(tmp_path):
    files = {
        "pc.jsonl": {"prompt": "a", "completion": "b"},
        "alpaca.jsonl": {"instruction": "a", "output": "b"},
        "msgs.jsonl": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "text.jsonl": {"text": "a"},
    }
    for name, record in files.items():
        (tmp_path / name).write_text(json.dumps(record) + "\n")
    (tmp_path / "plain.txt").write_text("prompt completion")
    found = {name: are_pairs([str(tmp_path / name)]) for name in [*files, "plain.txt"]}
    assert found == {"pc.jsonl": True, "alpaca.jsonl": True, "msgs.jsonl": True, "text.jsonl": False,
                     "plain.txt": False}  # fmt: skip


# ---- the CLI


def write_pairs(path, pairs):
    path.write_text(
        "".join(json.dumps({"prompt": p.prompt, "completion": p.completion}) + "\n" for p in pairs)
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(trained, tmp_path_factory):
    (encdec, tok), (gpt, chat_tok) = trained
    root = tmp_path_factory.mktemp("eval_pairs")
    chat = {"chat_template": ChatTemplate.chatml().to_json()}
    paths = {
        "encdec": ckpt.save_checkpoint(root / "encdec", encdec, encdec.config, tok, {"step": 60}),
        "chat": ckpt.save_checkpoint(root / "chat", gpt, gpt.config, chat_tok, {"step": 60, **chat}),
        "plain": ckpt.save_checkpoint(root / "plain", gpt_model(tok), gpt_model(tok).config, tok),
        "pairs": write_pairs(root / "pairs.jsonl", PAIRS),
        "text": root / "text.txt",
    }
    paths["text"].write_text("abc? cba\n")
    return {k: str(v) for k, v in paths.items()}


def test_cli_two_models_side_by_side(checkpoints, trained):
    (encdec, tok), (gpt, chat_tok) = trained
    c = checkpoints
    args = ["eval", "-c", c["encdec"], "-c", c["chat"], "--data", c["pairs"], "--exact-match"]
    result = run_cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [
        evaluate_pairs(encdec, EncDecFraming(tok), PAIRS),
        evaluate_pairs(gpt, ChatFraming(chat_tok, ChatTemplate.chatml()), PAIRS),
    ]
    for row, arch, want in zip(rows, ("encdec", "gpt"), expected):
        assert row["arch"] == arch and row["measure"] == "completion"
        assert row["loss"] == pytest.approx(want.loss, abs=1e-6) and row["tokens"] == want.tokens
        assert (row["pairs"], row["exact_match"], row["exact_matches"]) == (4, 1.0, 4)
    table = run_cli(*args).stdout.splitlines()
    assert len(table) == 3 and "completion loss" in table[0] and "exact match" in table[0]
    assert "1.000 (4/4)" in table[1] and "encdec" in table[1] and "gpt" in table[2]
    assert f"{rows[0]['loss']:.4f}" in table[1]
    # --max-pairs: the first N; without --exact-match no such column
    first = json.loads(
        run_cli("eval", "-c", c["encdec"], "--data", c["pairs"], "--max-pairs", "2", "--json").stdout
    )
    assert first["pairs"] == 2 and first["exact_match"] is None
    assert "exact match" not in run_cli("eval", "-c", c["chat"], "--data", c["pairs"]).stdout  # told apart
    forced = json.loads(run_cli("eval", "-c", c["chat"], "--data", c["pairs"], "--pairs", "--json").stdout)
    assert forced["loss"] == rows[1]["loss"]


def test_cli_errors(checkpoints, tmp_path):
    c = checkpoints
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    three = tmp_path / "three.jsonl"
    messages = [{"role": r, "content": "a"} for r in ("user", "assistant", "user", "assistant")]
    three.write_text(json.dumps({"messages": messages}) + "\n")
    cases = [
        (["-c", c["encdec"], "--data", c["text"]], ["plain text", "prompt/completion pairs"]),
        (["-c", c["plain"], "--data", c["pairs"]], ["without a chat template", "prompt is framed"]),
        (["-c", c["encdec"], "-c", c["plain"], "--data", c["pairs"]], ["without a chat template"]),
        (["-c", c["encdec"], "--data", str(bad)], ["bad.jsonl line 2"]),
        (["-c", c["encdec"], "--data", str(three)], ["one user message then one assistant reply"]),
        (["-c", c["encdec"], "--data", c["pairs"], "--max-tokens", "5"], ["--max-pairs"]),
        (["-c", c["encdec"], "--data", c["pairs"], "--text-field", "x"], ["--text-field"]),
        (["-c", c["plain"], "--data", c["text"], "--exact-match"], ["--exact-match", "text corpus"]),
        (["-c", c["chat"], "--data", c["text"], "--pairs"], ["plain text", "--pairs reads"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(run_cli("eval", *args), *fragments)
    skipped = run_cli("eval", "-c", c["encdec"], "--data", str(bad), "--skip-bad-records", "--json")
    assert skipped.exit_code == 0 and json.loads(skipped.stdout)["pairs"] == 1
    assert "1 bad record(s) skipped" in skipped.stderr


def test_info_of_an_encoder_decoder(checkpoints):
    data = json.loads(run_cli("info", checkpoints["encdec"], "--json").stdout)
    assert data["model"]["arch"] == "encdec" and data["model"]["n_enc_layer"] == 1
    text = run_cli("info", checkpoints["encdec"]).stdout
    line = next(line for line in text.splitlines() if line.startswith("model "))
    assert line == (
        "model        encoder-decoder, 1 encoder + 1 decoder layers, 2 heads (2 kv), 32 wide, context 48, "
        "learned positions, layernorm"
    )
