"""The prefix cache: its blocks (chained keys, partial prefixes, LRU eviction under a cap), and the
scheduler with it: a follow-up that repeats an earlier prompt and its answer prefills only what is new
and says what it says without the cache (greedy and seeded); `cached_tokens` through the API."""

import json

import pytest
import torch

from gptcli.config import SampleConfig, ServeConfig
from gptcli.generation import Engine
from gptcli.models.kv_cache import KVCache
from gptcli.serving.prefix_cache import PrefixCache
from gptcli.serving.scheduler import Job, JobEnd, Scheduler
from tests.generation.test_engine import TIE, logits_by_recomputation
from tests.serving.helpers import get, save_tiny_checkpoint

B = 16  # tokens per block
GREEDY = dict(temperature=0.0)
SEEDED = dict(temperature=1.0, top_k=None, top_p=None, seed=7)  # the whole vocabulary: one noise shape


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """Context 256: room for a first turn, its answer and a follow-up."""
    directory = tmp_path_factory.mktemp("prefix") / "ctx256"
    return Engine.from_checkpoint(save_tiny_checkpoint(directory, block_size=256), device="cpu")


# ---------------------------------------------------------------------------------------------
# the cache alone


def filled_cache(seed: int, length: int = 64) -> KVCache:
    """A cache of one row whose keys and values are random: 2 layers, 2 heads of 4 (1 KiB a block)."""
    cache = KVCache(n_layer=2, batch_size=1, n_kv_head=2, max_len=length, head_dim=4)
    generator = torch.Generator().manual_seed(seed)
    for tensor in cache.k + cache.v:
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return cache


BLOCK_BYTES = 2 * 2 * 2 * B * 4 * 4  # k and v x layers x heads x tokens x head size x float32


def test_lookup_finds_the_longest_run_of_leading_blocks_and_loads_what_was_stored():
    cache, ids = PrefixCache(1 << 20), list(range(50))  # 3 full blocks and 2 tokens
    source = filled_cache(0)
    cache.store(ids, source, row=0)
    assert (cache.stats.blocks, cache.stats.bytes) == (3, 3 * BLOCK_BYTES)
    assert cache.lookup(ids)[0] == 48
    assert cache.lookup(ids[:47])[0] == 32  # only full blocks
    assert cache.lookup(ids[:20] + [99] * 30)[0] == 16  # they part in the second block
    assert cache.lookup([99] + ids[1:])[0] == 0
    n, blocks = cache.lookup(ids[:40])
    target = filled_cache(1)
    assert cache.load(target, 0, blocks) == n == 32
    for layer in range(2):
        assert torch.equal(target.k[layer][0, :, :32], source.k[layer][0, :, :32])
        assert torch.equal(target.v[layer][0, :, :32], source.v[layer][0, :, :32])
        assert not torch.equal(target.k[layer][0, :, 32:], source.k[layer][0, :, 32:])  # left as they were
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.cached_tokens) == (5, 4, 48 + 32 + 16 + 32)


def test_a_block_matches_only_after_the_same_prefix():
    """Keys are rotated at absolute positions and depend on every token before: a key names the whole
    prefix, so the same 16 ids at another offset, or after other ids, are another block."""
    cache, a, b = PrefixCache(1 << 20), [1] * B, [2] * B
    cache.store(a + b, filled_cache(0), row=0)
    assert cache.lookup(b + a)[0] == 0
    assert cache.lookup(b)[0] == 0  # b at offset 0
    assert cache.lookup([3] * B + b)[0] == 0  # b at offset 16 after another block
    assert cache.lookup(a + b)[0] == 2 * B
    assert len(set(cache.keys(a + a + a))) == 3  # one block thrice, three keys


def test_off_at_zero_bytes():
    cache = PrefixCache(0)
    cache.store(list(range(64)), filled_cache(0), row=0)
    assert not cache.enabled and cache.lookup(list(range(64))) == (0, []) and cache.stats.blocks == 0


def test_eviction_takes_the_least_recently_used_leaves_first_and_never_passes_the_cap():
    cache = PrefixCache(3 * BLOCK_BYTES)
    a, b, c = [[i] * 2 * B for i in (1, 2, 3)]  # three prefixes of two blocks each
    cache.store(a, filled_cache(0), row=0)
    cache.store(b, filled_cache(1), row=0)  # room for one more block: a's leaf goes, not its root
    assert (cache.lookup(a)[0], cache.lookup(b)[0]) == (B, 2 * B)
    assert cache.stats.evicted == 1 and cache.stats.bytes == 3 * BLOCK_BYTES
    cache.lookup(a)  # a is used again: b's leaf is now the least recently used
    cache.store(c[:B], filled_cache(2), row=0)
    assert (cache.lookup(a)[0], cache.lookup(b)[0], cache.lookup(c)[0]) == (B, B, B)
    cache.store(list(range(5 * B)), filled_cache(3, length=5 * B), row=0)  # longer than the cap: its start
    assert cache.lookup(list(range(5 * B)))[0] == 3 * B and cache.stats.bytes == 3 * BLOCK_BYTES


# ---------------------------------------------------------------------------------------------
# the scheduler with it


class Recording(Scheduler):
    """A scheduler that keeps each job's generated ids (the tests compare tokens, not decoded text)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated: dict[int, list[list[int]]] = {}
        self.visible: dict[int, list[list[int]]] = {}  # what each row's cache held when its job left
        self.peak_bytes = 0

    def _retire(self, run, error):
        self.generated[id(run.job)] = [list(c.ids) for c in run.choices]
        self.visible[id(run.job)] = [list(c.visible) for c in run.choices]
        super()._retire(run, error)

    def iterate(self, wait=0.0):
        super().iterate(wait)
        self.peak_bytes = max(self.peak_bytes, self.prefix_cache.stats.bytes)


def run_jobs(scheduler: Recording, prompts: list[list[int]], **sampling) -> list[tuple[Job, list[int]]]:
    """Submit these prompts in one round (n=1 each); run until all end -> (job, generated ids) each."""
    ends = []
    jobs = [Job(ids, SampleConfig(ignore_eos=True, **sampling), emit=ends.append) for ids in prompts]
    for job in jobs:
        scheduler.submit(job)
    while len([e for e in ends if isinstance(e, JobEnd)]) < len(jobs):
        scheduler.iterate()
    assert all(e == JobEnd(None) for e in ends if isinstance(e, JobEnd))
    return [(job, scheduler.generated[id(job)][0]) for job in jobs]


def assert_same_or_tie(got: list[int], want: list[int], model, prompt: list[int], sampling: dict) -> None:
    """Two computations of one decoding (cached keys and values, or all prefilled) round differently:
    `got` equals `want`, or parts from it only where the choice is a tie within TIE: the top two
    logits (greedy), or the top two of log p - log q, the seeded exponential race draw() runs."""
    if got == want:
        return
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    scores = logits_by_recomputation(model, prompt, want[: i + 1])[i]  # (V,)
    if sampling["temperature"] > 0:
        generator = torch.Generator().manual_seed(sampling["seed"])
        noise = [torch.empty(1, scores.numel()).exponential_(1, generator=generator) for _ in range(i + 1)]
        scores = torch.log_softmax(scores / sampling["temperature"], dim=-1) - noise[i][0].log()
    assert scores.max() - scores[got[i]] < TIE, f"step {i}: {got[i]} where it was {want[i]}"


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_follow_up_prefills_only_its_new_turn_and_says_the_same(engine, sampling):
    """Turn 1, then turn 2 = turn 1 + its answer + more: its cached tokens reach into the answer
    (the rows' generated tokens were kept when the job retired), and its answer is the uncached one."""
    on, off = Recording(engine, 4, prefix_cache_mb=1), Recording(engine, 4, prefix_cache_mb=0)
    first = engine.encode_prompt("User: tell me about the sea, in a few words.\nAssistant:")  # 56
    n_new = 20
    ((job_on, answer_on),) = run_jobs(on, [first], max_new_tokens=n_new, **sampling)
    ((_, answer_off),) = run_jobs(off, [first], max_new_tokens=n_new, **sampling)
    assert job_on.cached_tokens == 0 and answer_on == answer_off  # nothing cached yet: one computation
    follow_up = first + answer_on + engine.encode_prompt("\nUser: and the mountains?\nAssistant:")
    ((job_on, got),) = run_jobs(on, [follow_up], max_new_tokens=n_new, **sampling)
    ((job_off, want),) = run_jobs(off, [follow_up], max_new_tokens=n_new, **sampling)
    held = len(first) + n_new - 1  # the last token chosen was never fed: its keys and values are not held
    assert job_on.cached_tokens == held // B * B > len(first) and job_off.cached_tokens == 0
    assert_same_or_tie(got, want, engine.model, follow_up, sampling)
    stats = on.stats.prefix_cache
    assert (stats.lookups, stats.hits, stats.cached_tokens) == (2, 1, job_on.cached_tokens)
    assert off.stats.prefix_cache.blocks == 0


def test_requests_sharing_a_system_prompt_all_reuse_it(engine):
    """Requests that share a long system prompt, admitted together after a first one: each prefills
    only its question, in one batch, and each says what it says without the cache."""
    system = engine.encode_prompt("System: you are a terse assistant who answers in one line. " * 2)  # 118
    questions = [engine.encode_prompt(f"{i}? asks the user.\nAssistant:") for i in range(3)]  # part at once
    on, off = Recording(engine, 4, prefix_cache_mb=1), Recording(engine, 4, prefix_cache_mb=0)
    run_jobs(on, [system + questions[0]], max_new_tokens=4, **GREEDY)
    prompts = [system + q for q in questions[1:]]
    for (job, got), (_, want), prompt in zip(
        run_jobs(on, prompts, max_new_tokens=12, **GREEDY),
        run_jobs(off, prompts, max_new_tokens=12, **GREEDY),
        prompts,
    ):
        assert job.cached_tokens == len(system) // B * B == 112
        assert_same_or_tie(got, want, engine.model, prompt, GREEDY)


def test_a_row_prefilled_again_keeps_the_blocks_of_its_new_context(checkpoint):
    """Context 64: a row that filled it was prefilled again from its last 3/4 (at position 0); what it
    holds when it leaves starts there, and a prompt that starts alike reuses it."""
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    on, off = Recording(engine, 4, prefix_cache_mb=1), Recording(engine, 4, prefix_cache_mb=0)
    prompt = engine.encode_prompt("A prompt of sixty bytes that nearly fills the whole context.")
    ((job, _),) = run_jobs(on, [prompt], max_new_tokens=30, **GREEDY)
    held = on.visible[id(job)][0]  # (its last token was chosen, never fed: not in it)
    assert held[:16] != prompt[:16]  # the context slid: it no longer starts with the prompt
    follow_up = held[:40] + engine.encode_prompt(" then?")
    ((job_on, got),) = run_jobs(on, [follow_up], max_new_tokens=10, **GREEDY)
    ((_, want),) = run_jobs(off, [follow_up], max_new_tokens=10, **GREEDY)
    assert job_on.cached_tokens == 32
    assert_same_or_tie(got, want, engine.model, follow_up, GREEDY)


def test_memory_never_passes_the_cap_while_serving(engine):
    """A cap of 10 blocks (the tiny model's are 8 KiB): many prompts come and go, the cache evicts."""
    block_bytes = 2 * 2 * 2 * B * 16 * 4  # k and v x 2 layers x 2 heads x 16 tokens x 16 dims x float32
    scheduler = Recording(engine, 4, prefix_cache_mb=10 * block_bytes / 2**20)
    prompts = [engine.encode_prompt(f"{i} " * 40) for i in range(6)]
    run_jobs(scheduler, prompts, max_new_tokens=8, **GREEDY)
    stats = scheduler.stats.prefix_cache
    assert (
        stats.evicted > 0
        and stats.blocks <= 10
        and scheduler.peak_bytes <= stats.max_bytes == 10 * block_bytes
    )


# ---------------------------------------------------------------------------------------------
# through the API


def test_cached_tokens_in_the_usage_of_a_follow_up(checkpoint):
    """OpenAI's usage.prompt_tokens_details.cached_tokens: 0 for a first request, the reused full
    blocks for one that starts with it; /health counts the hits."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from gptcli.serving.server import Server

    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    server = Server(engine, ServeConfig(checkpoint=checkpoint, port=0, quiet=True)).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)
        first = "The history of a chat, sent again with every turn:"  # 50 bytes: 3 full blocks
        usage = client.completions.create(model="tiny", prompt=first, max_tokens=4, temperature=0).usage
        assert usage.prompt_tokens == 50 and usage.prompt_tokens_details.cached_tokens == 0
        follow_up = first + " next"  # 55 bytes: within the context of 64
        usage = client.completions.create(model="tiny", prompt=follow_up, max_tokens=4, temperature=0).usage
        assert usage.prompt_tokens_details.cached_tokens == 48
        status, body = get(server.port, "/health")
        stats = json.loads(body)["prefix_cache"]
        assert stats["hits"] == 1 and stats["cached_tokens"] == 48 and stats["max_bytes"] == 256 * 2**20
    finally:
        server.stop()
