"""The LSTM baseline: same contract as the GPT, so training, checkpoints, sampling and eval take it."""

import json

import pytest
import torch

from gptcli.config import ModelConfig, SampleConfig, TrainConfig
from gptcli.errors import GptError
from gptcli.evaluate import evaluate_text
from gptcli.generation import Engine
from gptcli.loading import load_checkpoint
from gptcli.models import GPT, build_model
from gptcli.models.lstm import LSTM
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train
from tests.conftest import SONNETS, assert_one_line_error, run_cli
from tests.generation.test_engine import GREEDY, assert_greedy, char_tokenizer
from tests.training.test_trainer import assert_same_weights, final_weights, keep_only_checkpoint, losses, tiny

LSTM_SHAPE = dict(arch="lstm", n_layer=2, n_embd=32, block_size=16)


def tiny_lstm(seed=0, **overrides) -> LSTM:
    torch.manual_seed(seed)
    return LSTM(ModelConfig(vocab_size=40, dropout=0.0, **{**LSTM_SHAPE, **overrides})).eval()


def test_build_model_follows_the_arch():
    assert isinstance(build_model(ModelConfig(vocab_size=40, **LSTM_SHAPE)), LSTM)
    assert isinstance(build_model(ModelConfig(vocab_size=40, n_layer=1, n_head=2, n_embd=16)), GPT)


def test_matches_a_plain_torch_lstm_with_the_same_weights():
    model = tiny_lstm()
    idx = torch.randint(0, 40, (3, 16))
    with torch.no_grad():
        emb = model.wte.weight[idx]  # (B, T, C)
        hidden, _ = model.lstm(emb)
        expected = (hidden @ model.wte.weight.T)[..., :40]  # tied: the head is the embedding
        logits, loss = model(idx, idx)
    torch.testing.assert_close(logits, expected)
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(expected.reshape(-1, 40), idx.reshape(-1)).item(), rel=1e-5
    )


def test_state_carrying_decoding_equals_full_recomputation():
    model = tiny_lstm()
    ids = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        full, _ = model(ids)
        state = model.new_cache(2)
        first, _ = model(ids[:, :9], cache=state)
        steps = [model(ids[:, t : t + 1], cache=state, last_only=True)[0] for t in range(9, 16)]
    assert state.pos == 16
    torch.testing.assert_close(first, full[:, :9])
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 9:], rtol=1e-5, atol=1e-5)
    with pytest.raises(GptError, match="state full"):
        model(ids[:, :1], cache=state)


def test_generation_past_the_context_equals_recomputation():
    model = tiny_lstm()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    result = Engine(model, char_tokenizer()).generate(
        prompt, SampleConfig(max_new_tokens=40, num_samples=2, **GREEDY)
    )
    assert result.samples[0].ids == result.samples[1].ids
    assert_greedy(result.samples[0].ids, model, prompt)  # the context (16) is cropped several times


def test_tied_weight_counts_once_and_forget_gates_start_open():
    tied, untied = tiny_lstm(), tiny_lstm(tie_weights=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == 64 * 32
    assert untied.num_params() == tied.num_params()  # an untied embedding is a lookup table
    assert tied.flops_per_token() == 6 * tied.num_params()
    assert torch.all(tied.lstm.bias_ih_l0[32:64] == 1.0) and torch.all(tied.lstm.bias_ih_l1[32:64] == 1.0)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(n_head=4), "n_head: transformer settings"),
        (dict(pos_emb="rope", window=8), "pos_emb, window: transformer settings"),
        (dict(n_kv_head=2), "n_kv_head"),
    ],
)
def test_transformer_settings_are_refused_for_an_lstm(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(vocab_size=40, **LSTM_SHAPE, **overrides)


def test_fsdp_is_refused_for_an_lstm():
    with pytest.raises(ValueError, match="fsdp shards transformer blocks"):
        TrainConfig(model=dict(arch="lstm"), fsdp=True)


def test_trains_saves_resumes_exactly_samples_and_evaluates(tmp_path):
    config = tiny(tmp_path, model=dict(**LSTM_SHAPE, dropout=0.1))
    full = train(config, tmp_path / "full")
    assert full.step == 12 and full.val_loss < 4.5  # ln(vocab) ~ 4.1 at the start: it learned
    part = tmp_path / "part"
    train(config, part)
    keep_only_checkpoint(part, "step_0000006")
    train(read_run_config(part), part, resume=True)
    assert losses(part) == losses(tmp_path / "full")  # bit-exact, as for the GPT
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(part))

    model, tokenizer, saved = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000012")
    assert isinstance(model, LSTM) and saved["model"].arch == "lstm"
    text = SONNETS.read_text()[:3000]
    result = evaluate_text(model, tokenizer, text)
    assert result.tokens == len(text) - 1 and 0 < result.loss < 4.5


def test_cli_trains_an_lstm_and_eval_shows_it_beside_a_gpt(tmp_path):
    common = ["train", "--tokenizer", "char", "--data", str(SONNETS), "--data-cache", str(tmp_path / "cache"),
              "--block-size", "16", "--batch-size", "4", "--max-iters", "4", "--eval-interval", "4",
              "--eval-iters", "1", "--sample-tokens", "4", "--device", "cpu", "-q"]  # fmt: skip
    lstm = run_cli(
        *common, "--arch", "lstm", "--n-layer", "1", "--n-embd", "24", "--out", str(tmp_path / "lstm")
    )
    assert lstm.exit_code == 0, lstm.stderr
    gpt = run_cli(
        *common, "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--out", str(tmp_path / "gpt")
    )
    assert gpt.exit_code == 0, gpt.stderr
    held_out = tmp_path / "held.txt"
    held_out.write_text(SONNETS.read_text()[-2000:])

    both = ["eval", "-c", str(tmp_path / "lstm"), "-c", str(tmp_path / "gpt"), "--data", str(held_out)]
    table = run_cli(*both)
    assert table.exit_code == 0, table.stderr
    header, lstm_row, gpt_row = table.stdout.strip().splitlines()
    assert header.split()[:2] == ["checkpoint", "arch"] and "bits/byte" in header
    assert lstm_row.split()[1] == "lstm" and gpt_row.split()[1] == "gpt"
    rows = [json.loads(line) for line in run_cli(*both, "--json").stdout.splitlines()]
    # 2000 characters + end-of-text, all but the first predicted
    assert [r["arch"] for r in rows] == ["lstm", "gpt"] and all(r["tokens"] == 2000 for r in rows)

    info = run_cli("info", str(tmp_path / "lstm")).stdout
    assert "LSTM, 1 layers, 24 units" in info
    generated = run_cli(
        "generate", "-c", str(tmp_path / "lstm"), "--prompt", "Shall", "--max-new-tokens", "5", "--seed", "0"
    )
    assert generated.exit_code == 0 and generated.stdout.startswith("Shall")
    assert_one_line_error(
        run_cli(*common, "--arch", "lstm", "--n-head", "4", "--out", str(tmp_path / "x")), "n_head"
    )
    assert_one_line_error(
        run_cli("export-hf", str(tmp_path / "lstm"), "--out", str(tmp_path / "hf")), "no GPT-2 layout"
    )
