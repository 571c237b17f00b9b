"""gpt serve --adapter: LoRA adapters of one base served beside it, rows of different adapters in one batch.
Each row says what its model says alone: an adapter what its merged model (gptcli.models.lora.merge_lora)
says, the base what the base says (greedy; ties forgiven). The layers' logits per row, a mixed batch
through the scheduler, the prefix cache kept apart per adapter, the HTTP API (models, chat templates,
errors) and the CLI's checks."""

import json
import threading
from pathlib import Path

import openai
import pytest
import torch

from gptcli.config import SampleConfig, ServeConfig
from gptcli.errors import GptError
from gptcli.generation import Engine
from gptcli.loading import load_newest
from gptcli.models.lora import merge_lora
from gptcli.models.multi_lora import bank_of
from gptcli.serving.adapters import ServedModel, serve_adapters
from gptcli.serving.scheduler import Job, JobEnd, Scheduler
from gptcli.serving.server import Server
from gptcli.storage import checkpoint as ckpt
from tests.conftest import assert_one_line_error, run_cli
from tests.generation.test_engine import TIE, logits_by_recomputation
from tests.serving.helpers import get, post
from tests.serving.test_scheduler import Answer
from tests.training.test_finetune import FAST, make_base, reverse_task, task_words, write_jsonl

# two adapters unlike each other: other layers, ranks and seeds; a high rate, so that they say other things
ADAPTERS = {
    "rev": ["--lora-targets", "attn", "--lora-r", "4", "--seed", "1"],
    "rev2": ["--lora-targets", "attn,mlp", "--lora-r", "8", "--seed", "2"],
}
GREEDY = dict(temperature=0.0, max_new_tokens=24, ignore_eos=True)


def varied_base(directory: Path) -> Path:
    """A char-level base (a step of training) whose head is scaled up, so that greedy decoding says
    varied things (a barely trained model repeats one character): its checkpoint directory."""
    model, tokenizer, _, _ = load_newest(
        make_base(directory.parent / "trained", tie_weights=False, block_size=128)
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return ckpt.save_checkpoint(directory, model, model.config, tokenizer, {"step": 1})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A base (runs/base) and two LoRA chat fine-tunes of it (runs/rev, runs/rev2), which add
    ChatML's two tokens."""
    root = tmp_path_factory.mktemp("adapters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLI_CACHE_DIR", str(root / "cache"))
        base = varied_base(root / "base")
        data = write_jsonl(root / "chats.jsonl", reverse_task(task_words(3)[:20]))
        for name, options in ADAPTERS.items():
            result = run_cli(
                "finetune", "-c", str(base), "--data", str(data), "--lora", "--max-iters", "3", "--lr", "5e-2",
                "--batch-size", "2", "--out", str(root / name), *options, *FAST,
            )  # fmt: skip
            assert result.exit_code == 0, result.stderr
    return root


def adapters(runs: Path) -> dict[str, Path]:
    return {name: runs / name for name in ADAPTERS}


@pytest.fixture(scope="module")
def merged(runs) -> dict[str | None, Engine]:
    """Each model alone: the base, and each adapter merged into a plain model."""
    engines = {None: Engine.from_checkpoint(runs / "base", device="cpu")}
    for name in ADAPTERS:
        model, tokenizer, _, _ = load_newest(runs / name)
        engines[name] = Engine(merge_lora(model).eval(), tokenizer)
    return engines


@pytest.fixture(scope="module")
def models(runs) -> dict[str, ServedModel]:
    """The base's engine with both adapters on its model, as gpt serve --adapter builds it: by model id."""
    return serve_adapters(Engine.from_checkpoint(runs / "base", device="cpu"), adapters(runs), "base")


@pytest.fixture(scope="module")
def served(models) -> Engine:
    return models["rev"].engine  # the shared model, decoding with the adapters' tokenizer


def assert_same_greedy(got: list[int], want: list[int], model, prompt: list[int]) -> None:
    """Equal, or parting only where the reference's top two logits tie within TIE (nothing after that is
    compared: from there the two contexts differ)."""
    if got == want:
        return
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert i is not None, f"{got} vs {want}"
    logits = logits_by_recomputation(model, prompt, want[: i + 1])[i]
    assert logits[want[i]] - logits[got[i]] < TIE, f"step {i}: {got[i]} where alone gives {want[i]}"


# ---------------------------------------------------------------------------------------------
# the layers


def test_each_row_of_a_batch_gets_its_own_models_logits(served, merged):
    """Rows of the base and of both adapters in one forward pass: each row's logits are its merged
    model's, the added tokens' rows (in the prompt and in the head) its own adapter's; the base never
    predicts an added token."""
    first = merged[None].model.config.vocab_size  # the base's vocabulary; ChatML's tokens follow
    ids = torch.tensor(
        [[5, 6, 7, 10, 8, 11, 9], [5, 6, 7, first, 8, first + 1, 9], [5, 6, 7, first, 8, 9, 9]]
    )
    bank = bank_of(served.model, 3, "cpu")
    with bank.prefilling([None, "rev", "rev2"], [[], [], []]), torch.no_grad():
        got, _ = served.model(ids)  # (3, T, V)
        wanted = [merged[name].model(ids[i : i + 1])[0][0] for i, name in enumerate([None, "rev", "rev2"])]
    assert torch.allclose(got[0, :, :first], wanted[0], atol=1e-5)
    assert torch.isneginf(got[0, :, first:]).all()
    for i in (1, 2):
        assert torch.allclose(got[i], wanted[i], atol=1e-5)
    assert (got[1, :3, :first] - got[0, :3, :first]).abs().max() > 1e-2  # the adapters do change things
    assert (got[1, :3] - got[2, :3]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# the scheduler


def chat_prompt(engine: Engine, word: str) -> list[int]:
    from gptcli.chat.template import render

    messages = [{"role": "user", "content": f"reverse {word}"}]
    return render(messages, engine.chat_template, engine.tokenizer, add_generation_prompt=True).ids


def alone(engine: Engine, prompt: list[int], **sampling) -> list[int]:
    """A job served alone by a scheduler of its own -> the tokens it generated."""
    scheduler, answer = Scheduler(engine, max_batch=1), Answer(1)
    scheduler.submit(Job(prompt, SampleConfig(**sampling), answer.emit))
    while answer.end is None:
        scheduler.iterate()
    return engine.tokenizer.encode(answer.texts[0], allow_special=True)


def test_a_mixed_batch_says_what_each_merged_model_says_alone(models, served, merged):
    """Four jobs in one batch (two adapters, the base twice), prompts with ChatML's tokens for the
    adapters; each job's tokens are its merged model's alone."""
    cases = [("rev", "abc"), (None, "def"), ("rev2", "abc"), (None, "gha")]
    prompts = [
        chat_prompt(models[name].engine, word) if name else served.encode_prompt(word) for name, word in cases
    ]
    scheduler = Scheduler(served, max_batch=8)
    answers = [Answer(1) for _ in cases]
    for (name, _), prompt, answer in zip(cases, prompts, answers):
        scheduler.submit(Job(prompt, SampleConfig(**GREEDY), answer.emit, adapter=name))
    while any(a.end is None for a in answers):
        scheduler.iterate()
    assert scheduler.stats.max_running == 4  # all in one batch
    for (name, _), prompt, answer in zip(cases, prompts, answers):
        assert answer.end == JobEnd(None)
        got = served.tokenizer.encode(answer.texts[0], allow_special=True)
        want = alone(merged[name], prompt, **GREEDY)
        assert_same_greedy(got, want, merged[name].model, prompt)
    texts = {name: a.texts[0] for (name, word), a in zip(cases, answers) if word == "abc"}
    assert texts["rev"] != texts["rev2"]  # same prompt, other adapter, other answer


def test_the_prefix_cache_keeps_each_adapters_blocks_apart(served, merged):
    """The same prompt through the base, then an adapter: the adapter reuses none of the base's blocks
    (their keys and values differ) and says what it says alone; its own next request reuses its own."""
    prompt = served.encode_prompt("the same long prompt, more than one block")
    scheduler = Scheduler(served, max_batch=4, prefix_cache_mb=1)
    jobs = []
    for name in (None, "rev", "rev"):
        answer = Answer(1)
        job = Job(prompt, SampleConfig(**GREEDY), answer.emit, adapter=name)
        scheduler.submit(job)
        while answer.end is None:
            scheduler.iterate()
        jobs.append((job, answer))
    assert [job.cached_tokens for job, _ in jobs] == [0, 0, 32]
    want = alone(merged["rev"], prompt, **GREEDY)
    for _, answer in jobs[1:]:
        assert_same_greedy(
            served.tokenizer.encode(answer.texts[0], allow_special=True), want, merged["rev"].model, prompt
        )


# ---------------------------------------------------------------------------------------------
# the server


@pytest.fixture(scope="module")
def server(runs):
    engine = Engine.from_checkpoint(runs / "base", device="cpu")
    config = ServeConfig(
        checkpoint=runs / "base", port=0, quiet=True, model_name="base", adapters=adapters(runs)
    )
    server = Server(engine, config).start()
    yield server
    server.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_models_lists_the_base_and_each_adapter(server, client):
    assert [m.id for m in client.models.list().data] == ["base", "rev", "rev2"]
    status, body = get(server.port, "/v1/models/rev")
    assert status == 200 and json.loads(body)["parent"] == "base"
    status, body = get(server.port, "/health")
    assert json.loads(body)["adapters"] == ["rev", "rev2"]


def test_a_requests_model_picks_its_adapter_and_its_chat_template(server, client, merged):
    """Concurrent requests of every model: each says what its model alone says; chat takes the
    adapter's template; the base (no template) gets chat's 400."""
    prompt, results = "reverse abc", {}

    def ask(model: str) -> None:
        results[model] = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("base", "rev", "rev2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for model, name in (("base", None), ("rev", "rev"), ("rev2", "rev2")):
        assert results[model].model == model
        ids = merged[name].encode_prompt(prompt)
        got = merged[name].tokenizer.encode(results[model].choices[0].text, allow_special=True)
        assert_same_greedy(
            got, alone(merged[name], ids, temperature=0.0, max_new_tokens=16), merged[name].model, ids
        )
    reply = client.chat.completions.create(
        model="rev", messages=[{"role": "user", "content": "reverse abc"}], max_tokens=8, temperature=0
    )
    assert reply.model == "rev" and reply.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "no_chat_template"


def test_an_unknown_model_is_a_404_that_names_the_models(server):
    status, answer = post(server.port, "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    assert all(repr(m) in answer["error"]["message"] for m in ("base", "rev", "rev2"))


# ---------------------------------------------------------------------------------------------
# refusals at start


@pytest.mark.parametrize("value", ["rev", "=runs/rev", "rev=", "rev=a --adapter rev=b"])
def test_a_bad_adapter_option_is_a_one_line_error(runs, value):
    values = value.split(" --adapter ")
    args = [arg for v in values for arg in ("--adapter", v)]
    result = run_cli("serve", "-c", str(runs / "base"), *args)
    assert_one_line_error(result, "--adapter")


def test_an_adapter_of_another_base_is_refused(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    other = make_base(tmp_path / "other", tie_weights=False, block_size=128)  # alike, but another model
    engine = Engine.from_checkpoint(other, device="cpu")
    config = ServeConfig(checkpoint=other, port=0, quiet=True, adapters=adapters(runs))
    with pytest.raises(GptError, match="LoRA adapter of another base"):
        Server(engine, config)


ZEPHYR = """{% for m in messages %}<|{{ m['role'] }}|>
{{ m['content'] }}<|end|>
{% endfor %}{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


def test_adapters_with_other_added_tokens_are_refused_together(runs, tmp_path, monkeypatch):
    """Another template adds other tokens: the batch could not decode both adapters' ids with one tokenizer."""
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "zephyr.jinja").write_text(ZEPHYR, encoding="utf-8")
    result = run_cli(
        "finetune", "-c", str(runs / "base"), "--data", str(runs / "chats.jsonl"), "--lora", "--max-iters", "1",
        "--chat-template", str(tmp_path / "zephyr.jinja"), "--out", str(tmp_path / "zephyr"), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    engine = Engine.from_checkpoint(runs / "base", device="cpu")
    with pytest.raises(
        GptError, match=f"adapters {runs / 'rev'} and {tmp_path / 'zephyr'} have different tokenizers"
    ):
        serve_adapters(engine, {"rev": runs / "rev", "zephyr": tmp_path / "zephyr"}, "base")
