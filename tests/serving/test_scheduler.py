"""The continuous-batching scheduler, driven round by round: jobs that join and leave a running batch
each get what the engine gives them alone (greedy and seeded), through a full context; a cancelled
or failing job leaves without disturbing the others."""

import pytest

from gptcli.config import SampleConfig
from gptcli.generation import Engine
from gptcli.serving.scheduler import ChoiceDelta, Job, JobEnd, Scheduler
from tests.serving.helpers import save_tiny_checkpoint

GREEDY = dict(temperature=0.0)
SEEDED = dict(temperature=1.0, top_k=40, top_p=0.9, seed=5)


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine.from_checkpoint(checkpoint, device="cpu")


class Answer:
    """What a job emitted: text and finish reason per choice, and how it ended."""

    def __init__(self, n: int):
        self.texts, self.reasons, self.end = [""] * n, [None] * n, None

    def emit(self, event):
        assert self.end is None, "an event after the job's end"
        if isinstance(event, JobEnd):
            self.end = event
        else:
            assert isinstance(event, ChoiceDelta) and self.reasons[event.index] is None
            self.texts[event.index] += event.text
            self.reasons[event.index] = event.finish_reason


def job(engine, prompt: str, **sampling) -> tuple[Job, Answer]:
    config = SampleConfig(**sampling)
    answer = Answer(config.num_samples)
    return Job(engine.encode_prompt(prompt), config, answer.emit), answer


def alone(engine, prompt: str, **sampling) -> tuple[list[str], list[str]]:
    result = engine.generate(prompt, SampleConfig(**sampling))
    reasons = ["stop" if s.finish_reason == "eos" else s.finish_reason for s in result.samples]
    return [s.text for s in result.samples], reasons


def run_rounds(scheduler: Scheduler, arrivals: dict[int, list[Job]], answers: list[Answer]) -> list[int]:
    """Submit each job at its round; run until every answer has ended -> rows running after each round."""
    running = []
    for round in range(1000):
        for j in arrivals.get(round, []):
            scheduler.submit(j)
        scheduler.iterate()
        running.append(scheduler.stats.running)
        if all(a.end is not None for a in answers) and round >= max(arrivals):
            return running
    raise AssertionError("the jobs never ended")


def test_jobs_joining_and_leaving_each_get_what_they_get_alone(engine):
    """A batch that grows and shrinks: greedy and seeded jobs, n > 1, a stop string, a prompt longer
    than the context and generation past it (a row re-prefilled while the others step)."""
    long_prompt = "x" * 100  # context 64
    cases = [
        (0, "Once upon", dict(max_new_tokens=90, ignore_eos=True, **GREEDY)),
        (3, "To be", dict(max_new_tokens=20, num_samples=3, **SEEDED)),
        (5, long_prompt, dict(max_new_tokens=40, **GREEDY)),
        (6, "abc", dict(max_new_tokens=12, **SEEDED)),
        (30, "", dict(max_new_tokens=25, num_samples=2, stop=["e"], **SEEDED)),
    ]
    scheduler = Scheduler(engine, max_batch=8)
    jobs = [
        (at, *job(engine, prompt, **sampling), alone(engine, prompt, **sampling))
        for at, prompt, sampling in cases
    ]
    arrivals = {}
    for at, j, _, _ in jobs:
        arrivals.setdefault(at, []).append(j)
    running = run_rounds(scheduler, arrivals, [a for _, _, a, _ in jobs])
    for (_, _, answer, (texts, reasons)), case in zip(jobs, cases):
        assert answer.end == JobEnd(None), case
        assert (answer.texts, answer.reasons) == (texts, reasons), case
    assert scheduler.stats.max_running == max(running) >= 5  # the batch grew ...
    assert running[-1] == 0 and min(running[10:40]) < max(running[:10])  # ... and shrank as jobs left
    assert scheduler.free == list(range(8))


def test_a_cancelled_job_leaves_at_the_next_round_and_frees_its_rows(engine):
    scheduler = Scheduler(engine, max_batch=4)
    keep, kept = job(engine, "stay", max_new_tokens=30, ignore_eos=True, **GREEDY)
    gone, left = job(engine, "go", max_new_tokens=30, num_samples=2, ignore_eos=True, **GREEDY)
    scheduler.submit(keep)
    scheduler.submit(gone)
    for _ in range(3):
        scheduler.iterate()
    assert scheduler.stats.running == 3
    gone.cancel()
    scheduler.iterate()
    assert left.end == JobEnd("cancelled") and scheduler.stats.running == 1 and len(scheduler.free) == 3
    run_rounds(scheduler, {0: []}, [kept])
    assert (kept.texts, kept.reasons) == alone(engine, "stay", max_new_tokens=30, ignore_eos=True, **GREEDY)


def test_a_job_that_fails_fails_alone(engine):
    """A temperature so small that 1/T overflows: that job's draw fails; its neighbour goes on."""
    scheduler = Scheduler(engine, max_batch=4)
    bad, broken = job(engine, "boom", max_new_tokens=10, temperature=1e-40, top_k=None)
    good, fine = job(engine, "fine", max_new_tokens=10, **GREEDY)
    run_rounds(scheduler, {0: [bad, good]}, [broken, fine])
    assert broken.end.error.startswith("sampling failed")
    assert fine.end == JobEnd(None)
    assert (fine.texts, fine.reasons) == alone(engine, "fine", max_new_tokens=10, **GREEDY)
    assert scheduler.free == list(range(4))


def test_a_job_waits_for_room_then_runs(engine):
    scheduler = Scheduler(engine, max_batch=2)
    first, a = job(engine, "one", max_new_tokens=8, num_samples=2, ignore_eos=True, **GREEDY)
    second, b = job(engine, "two", max_new_tokens=8, ignore_eos=True, **GREEDY)
    scheduler.submit(first)
    scheduler.submit(second)
    scheduler.iterate()
    assert scheduler.stats.running == 2 and scheduler.stats.waiting == 1
    run_rounds(scheduler, {0: []}, [a, b])
    assert b.end == JobEnd(None) and scheduler.stats.max_running == 2
    assert (b.texts, b.reasons) == alone(engine, "two", max_new_tokens=8, ignore_eos=True, **GREEDY)


def test_a_full_context_is_prefilled_again_while_other_rows_step(tmp_path):
    """Context 256: its last 3/4 (192 tokens) is a multiple of 64, the cache length a step reads."""
    engine = Engine.from_checkpoint(save_tiny_checkpoint(tmp_path / "ctx256", block_size=256), device="cpu")
    scheduler = Scheduler(engine, max_batch=4)
    sampling = dict(max_new_tokens=30, ignore_eos=True, **GREEDY)
    near_full, a = job(engine, "y" * 250, **sampling)  # fills the context after 6 tokens
    short, b = job(engine, "short", **sampling)
    run_rounds(scheduler, {0: [near_full, short]}, [a, b])
    assert (a.texts, a.reasons) == alone(engine, "y" * 250, **sampling)
    assert (b.texts, b.reasons) == alone(engine, "short", **sampling)
