"""Continuous batching: one background thread decodes every request in flight together.

    scheduler = Scheduler(engine, max_batch=16)
    scheduler.start()
    scheduler.submit(Job(prompt_ids, SampleConfig(num_samples=2, max_new_tokens=50), emit=outbox.put))
    ...                                    # emit(ChoiceDelta(index, text, finish_reason)), then JobEnd()
    scheduler.stop()

The batch is a Decoder with `max_batch` rows (slots), each with the whole context in its KV cache
and its own position. One round of the loop (`iterate`):

1. admit: jobs waiting in the inbox (a thread-safe queue) take free slots, first come first served;
   each prompt is prefilled apart from the batch (a few of one length together) and its row copied
   into its slots (one per choice, with its LoRA adapter). The prefix cache (gptcli.serving.prefix_cache)
   gives the keys and values of the prompt's leading blocks seen before: only the rest is prefilled.
2. choose: each row's next token from its own logits: one argmax for the greedy rows, and per job
   a draw from its own seeded generator with its own temperature / top-k / top-p
   (gptcli.generation.sampling's pick_next, its filtering batched over the jobs that share
   settings), so a job's text does not depend on what else is running.
3. hand out: token bytes -> text (gptcli.generation.text.SampleText: UTF-8 and stop strings);
   a choice ends at end-of-text ("stop"), a stop string ("stop") or max_new_tokens ("length").
4. retire: a job whose choices have all ended, whose client went away (`Job.cancel`) or that failed
   leaves at once; its slots are free for the next round. What its rows hold (prompt and generated
   tokens) goes to the prefix cache: a chat's next turn repeats them.
5. step: one decode step of the first rows in use (a power of two of them) over the cache positions
   in use (a multiple of 64). A row whose context is full is prefilled again from its last 3/4, as
   the engine does; free rows run along, held in place.

The choices of one job stay in the batch until the whole job ends (a finished one runs along,
ignored), and draw from one generator as `gpt generate -n` does: the same seed gives the same texts.
An exception while handling one job fails that job only; one in the shared decode step fails the
jobs in the batch, and the loop goes on. An encoder-decoder's prompts are encoded (Decoder.encode)
and its rows start from <|endoftext|>; a full row ends with "length"; no prefix cache.
"""

import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gptcli.config import SampleConfig
from gptcli.errors import GptError
from gptcli.generation.cpu_matmul import torch_threads
from gptcli.generation.decoder import Decoder
from gptcli.generation.engine import Engine, keep_tokens
from gptcli.generation.sampling import NO_TOKEN, NOT_FINITE, candidates, draw, draw_noise
from gptcli.generation.text import SampleState, SampleText
from gptcli.models.multi_lora import bank_of
from gptcli.serving.prefix_cache import Block, PrefixCache, PrefixCacheStats

PREFILL_ROWS = 4  # prompts of one length prefilled together (its cache: this many rows of the context)

# ---------------------------------------------------------------------------------------------
# what goes in and what comes out


@dataclass
class ChoiceDelta:
    index: int  # the choice, numbered across the request (Job.first_index + its number in the job)
    text: str  # text that became final
    finish_reason: str | None = None  # "stop" | "length" on the choice's last delta
    tokens: int = 0  # tokens the choice generated, on its last delta


@dataclass
class JobEnd:
    error: str | None = None  # None: every choice has ended; else why the job failed


@dataclass
class Job:
    """One prompt and its config.num_samples choices, handed to the scheduler."""

    prompt_ids: list[int]
    config: SampleConfig
    emit: Callable[[ChoiceDelta | JobEnd], None]  # called in the scheduler's thread
    first_index: int = 0
    end_ids: tuple[int, ...] | None = None  # where a choice ends (a chat template's end); None: end-of-text
    cancelled: bool = False  # the client went away: the job leaves the batch at the next round
    cached_tokens: int = 0  # set on admission: prompt tokens whose keys and values the prefix cache gave
    adapter: str | None = None  # the LoRA adapter its rows apply (gpt serve --adapter NAME); None: the base

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class SchedulerStats:
    running: int = 0  # rows of the batch in use now
    waiting: int = 0  # jobs not admitted yet
    max_running: int = 0  # the most rows ever decoded in one step
    steps: int = 0
    jobs_done: int = 0
    tokens: int = 0  # generated, all jobs
    prefix_cache: PrefixCacheStats = field(default_factory=PrefixCacheStats)


# ---------------------------------------------------------------------------------------------
# the scheduler's own bookkeeping


@dataclass(kw_only=True)
class _Choice(SampleState):
    """A SampleState (text, ids, finish_reason) in a slot of the batch."""

    slot: int
    index: int
    visible: list[int]  # the tokens its cache row holds (a full context is re-prefilled from these)


@dataclass
class _Running:
    job: Job
    choices: list[_Choice]
    generator: torch.Generator | None
    steps: int = 0


class Scheduler:
    """The batch loop: slots, admit, choose, hand out, retire, step (see the module docstring)."""

    def __init__(self, engine: Engine, max_batch: int = 16, prefix_cache_mb: float = 0.0):
        model = engine.model
        if not getattr(model, "static_decode", False):
            raise GptError(f"gpt serve batches requests through a fixed-shape decode step; "
                           f"{type(model).__name__} has none")  # fmt: skip
        self.engine, self.max_batch = engine, max_batch
        self.encdec = engine.encoder_decoder  # its rows hold the decoder's tokens, its prompts are encoded
        self.block_size, self.device = engine.block_size, engine.device
        self.keep = keep_tokens(self.block_size)  # tokens kept when a row's context is full, as the engine
        self.batch = Decoder(model, max_batch, self.block_size, engine.compile)
        self.prefiller = Decoder(model, min(max_batch, PREFILL_ROWS), self.block_size)
        self.adapters = bank_of(model, max_batch, self.device)  # each row's adapter (--adapter)
        self.logits: torch.Tensor | None = None  # (max_batch, V): each row's logits for its next token
        self.free = list(range(max_batch))
        self.running: list[_Running] = []
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.prefix_cache = PrefixCache(0 if self.encdec else int(prefix_cache_mb * 2**20))  # 0 MiB: off
        self.stats = SchedulerStats(prefix_cache=self.prefix_cache.stats)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # finish what is in flight, then end
        self._abort = threading.Event()  # end now: what is in flight fails

    # --- the thread ----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Hand a job over (any thread); it joins the batch at the next round that has room for it."""
        if self._stopping.is_set():
            raise GptError("the server is shutting down")
        if job.config.num_samples > self.max_batch:
            raise GptError(f"a job of {job.config.num_samples} choices does not fit a batch of "
                           f"{self.max_batch}")  # fmt: skip
        self.inbox.put(job)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpt-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs in flight (for at most `timeout` seconds; the rest fail), then end the thread."""
        self._stopping.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join()

    def _loop(self) -> None:
        with torch_threads(self.engine.threads):  # 1 where the products run in OpenBLAS's threads
            self._rounds()

    def _rounds(self) -> None:
        while not self._abort.is_set():
            idle = not self.running and not self.waiting and self.inbox.empty()
            if idle and self._stopping.is_set():
                break
            try:
                self.iterate(wait=0.05)
            except Exception as e:  # the shared step failed: every job in the batch fails, the loop goes on
                for run in list(self.running):
                    self._retire(run, f"the decode step failed: {type(e).__name__}: {e}")
        for run in list(self.running):
            self._retire(run, "the server is shutting down")
        for job in self._take_all():
            self._send(job, JobEnd("the server is shutting down"))

    # --- one round -----------------------------------------------------------------------------

    def iterate(self, wait: float = 0.0) -> None:
        """One round: admit, choose, hand out, retire, step. With nothing to do, wait up to `wait` s."""
        self._collect(wait if not self.running and not self.waiting else 0.0)
        self._admit()
        running = sum(len(r.choices) for r in self.running)
        self.stats.max_running = max(self.stats.max_running, running)
        if self.running:
            ids = self._choose()  # (max row in use + 1,) on the device
            tokens = ids.tolist()  # the one host sync per step
            for run in list(self.running):
                self._hand_out(run, tokens)
            if self.running:
                self._step(ids, tokens)
        self.stats.running = sum(len(r.choices) for r in self.running)
        self.stats.waiting = len(self.waiting) + self.inbox.qsize()

    def _collect(self, wait: float) -> None:
        if wait > 0 and self.inbox.empty():
            try:
                self.waiting.append(self.inbox.get(timeout=wait))
            except queue.Empty:
                return
        self.waiting.extend(self._take_all())

    def _take_all(self) -> list[Job]:
        jobs = []
        while not self.inbox.empty():  # (this thread alone takes from it: get_nowait finds a job)
            jobs.append(self.inbox.get_nowait())
        return jobs

    def _admit(self) -> None:
        """Waiting jobs, in order, while the first one's choices fit in the free slots; prompts of one length
        and cached length are prefilled together, PREFILL_ROWS at a time (one read of the weights for all)."""
        groups: dict[tuple[int, int], list[tuple[Job, list[int], list[Block]]]] = {}
        while self.waiting and (
            self.waiting[0].cancelled or len(self.free) >= self.waiting[0].config.num_samples
        ):
            job = self.waiting.popleft()
            if job.cancelled:
                self._send(job, JobEnd("cancelled"))
                continue
            slots = [self.free.pop(0) for _ in range(job.config.num_samples)]  # the lowest free rows
            visible = self._visible(job)
            job.cached_tokens, blocks = self.prefix_cache.lookup(visible[:-1], job.adapter)  # -1: for logits
            groups.setdefault((job.cached_tokens, len(visible)), []).append((job, slots, blocks))
        for group in groups.values():
            for i in range(0, len(group), PREFILL_ROWS):
                self._prefill(group[i : i + PREFILL_ROWS])

    def _visible(self, job: Job) -> list[int]:
        return list(job.prompt_ids[-self.block_size :])  # a longer prompt: the model sees its end

    def _prefill(self, group: list[tuple[Job, list[int], list[Block]]]) -> None:
        """Prefill these jobs together and start them; if that fails, each alone, so that only a job
        that fails by itself fails."""
        try:
            slots, rows, blocks, adapters = zip(*[(s, self._visible(j), b, j.adapter) for j, s, b in group])
            self._load(slots, rows, blocks, adapters)
        except Exception as e:
            if len(group) > 1:
                for one in group:
                    self._prefill([one])
                return
            job, slots, _ = group[0]
            self._release(slots)
            return self._send(job, JobEnd(f"prefill failed: {type(e).__name__}: {e}"))
        for job, slots, _ in group:
            self.running.append(self._start(job, slots))

    def _start(self, job: Job, slots: list[int]) -> _Running:
        config = job.config
        generator = None
        if config.temperature > 0:
            seed = config.seed if config.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        row = [self.engine.start_id] if self.encdec else self._visible(job)  # the tokens its rows hold
        choices = [
            _Choice(SampleText(config.stop), slot=slot, index=job.first_index + i, visible=list(row))
            for i, slot in enumerate(slots)
        ]
        return _Running(job, choices, generator)

    def _load(self, slots: list[list[int]], rows: list[list[int]], blocks: list, adapters: list) -> None:
        """Prefill rows of one length together after their cached blocks (as many for each), each with its
        adapter, then keep their blocks; row i's cache, logits and adapter go to each slot of slots[i]."""
        prefiller = self.prefiller.view(len(rows))
        start = [self.prefix_cache.load(prefiller.cache, i, b) for i, b in enumerate(blocks)][0]  # alike
        with self.adapters.prefilling(adapters, slots):  # then slots[i] apply adapters[i]
            if self.encdec:  # rows: the prompts, for the encoder
                logits = prefiller.encode(rows, self.engine.start_id)
            else:
                logits = prefiller.extend([row[start:] for row in rows], start)  # (len(rows), V)
        for i, row in enumerate(rows):
            self.prefix_cache.store(row, prefiller.cache, i, adapters[i])
        if self.logits is None:
            self.logits = torch.zeros(self.max_batch, logits.size(-1), dtype=logits.dtype, device=self.device)
        for i, targets in enumerate(slots):
            for slot in targets:
                self.batch.load_row(slot, prefiller, row=i)
                self.logits[slot] = logits[i]

    def _choose(self) -> torch.Tensor:
        """Every used row's next token: one argmax for the greedy rows, one draw for the sampling ones.

        This is pick_next, per job, split up: the candidates (temperature, top-k, top-p: row by row)
        are found once for all the jobs that share those settings, each job draws its noise from its
        own generator, and one draw uses it for them all. A row that gets NO_TOKEN (its
        probabilities are not finite) fails its job when the tokens are handed out."""
        ids = torch.zeros(self._rows_in_use(), dtype=torch.long, device=self.device)
        greedy = [run for run in self.running if run.generator is None]
        if greedy:
            rows = self._rows_of(greedy)
            ids[rows] = self.logits[rows].argmax(dim=-1)
        alike: dict[tuple, list[_Running]] = {}
        for run in self.running:
            if run.generator is not None:
                config = run.job.config
                alike.setdefault((config.temperature, config.top_k, config.top_p), []).append(run)
        for (temperature, top_k, top_p), runs in alike.items():
            try:
                rows = self._rows_of(runs)
                probs, choices = candidates(self.logits[rows], temperature, top_k, top_p)
                noise, first = [], 0
                for run in runs:  # (n, K) of probs each, in the order of rows
                    noise.append(draw_noise(probs[first : first + len(run.choices)], run.generator))
                    first += len(run.choices)
                ids[rows] = draw(probs, choices, torch.cat(noise))
            except Exception as e:  # these settings fail: the jobs that share them fail, the others go on
                for run in runs:
                    self._retire(run, f"sampling failed: {type(e).__name__}: {e}")
        return ids

    def _rows_of(self, runs: list[_Running]) -> slice | torch.Tensor:
        """These jobs' rows of the batch, in order: a slice when they are consecutive (a view of the
        logits, not a copy of 16 x 50,257 of them), else an index tensor."""
        slots = [choice.slot for run in runs for choice in run.choices]
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def _hand_out(self, run: _Running, tokens: list[int]) -> None:
        """The job's new tokens -> text deltas; retire it when it has ended, went away or failed."""
        if run.job.cancelled:
            return self._retire(run, "cancelled")
        if any(tokens[c.slot] == NO_TOKEN for c in run.choices if c.finish_reason is None):
            return self._retire(run, f"sampling failed: {NOT_FINITE}")
        try:
            run.steps += 1
            for choice in run.choices:
                if choice.finish_reason is None:
                    self._add_token(run, choice, tokens[choice.slot])
        except Exception as e:
            return self._retire(run, f"{type(e).__name__}: {e}")
        if all(c.finish_reason is not None for c in run.choices):
            self._retire(run, None)

    def _add_token(self, run: _Running, choice: _Choice, token: int) -> None:
        config, tokenizer = run.job.config, self.engine.tokenizer
        eos = run.job.end_ids if run.job.end_ids is not None else tokenizer.eot_id
        text = choice.take(token, tokenizer, None if config.ignore_eos else eos)
        if choice.finish_reason == "eos":  # OpenAI says "stop" for the end of text too
            return self._finish(run, choice, "stop", text)
        self.stats.tokens += 1
        if choice.finish_reason == "stop":
            self._finish(run, choice, "stop", text)
        elif run.steps == config.max_new_tokens or (self.encdec and len(choice.visible) == self.block_size):
            self._finish(run, choice, "length", text + choice.text.add(b"", final=True))
        elif text:
            self._send(run.job, ChoiceDelta(choice.index, text))

    def _finish(self, run: _Running, choice: _Choice, reason: str, text: str) -> None:
        choice.finish_reason = reason
        self._send(run.job, ChoiceDelta(choice.index, text, reason, len(choice.ids)))

    def _step(self, ids: torch.Tensor, tokens: list[int]) -> None:
        """Feed every running row its token: one decode step of the rows in use; a full row is
        prefilled again from its last 3/4 instead; free rows run along and are put back."""
        rows = self._rows_in_use()
        advance = [False] * rows  # the rows this step feeds; the others are held where they are
        full = []
        for run in self.running:
            for choice in run.choices:  # ended choices too: a job's rows stay in step, as in the engine
                if len(choice.visible) >= self.block_size:
                    full.append(choice)
                else:
                    advance[choice.slot] = True
                choice.visible.append(tokens[choice.slot])
        refilled = self._refill(full)
        if not any(advance):
            return
        held = torch.tensor([not a for a in advance], device=self.device)
        positions = self.batch.positions[:rows]
        before = positions.clone()
        decoder = self.batch.view(rows, self._length_in_use())
        # (rows, V); held rows wrote at their position, harmlessly; a failed row's NO_TOKEN (now free) -> 0
        logits = decoder.step(ids[:rows].clamp(min=0))
        positions.copy_(torch.where(held, before, positions))
        self.logits[:rows] = logits
        for slot, row in refilled.items():
            self.logits[slot] = row
        self.stats.steps += 1

    def _refill(self, full: list[_Choice]) -> dict[int, torch.Tensor]:
        """Rows whose context is full, prefilled again from their last 3/4 -> their new logits by slot.
        An encoder-decoder's cannot slide: they have ended, and are held at their last position."""
        if self.encdec:
            self.batch.positions[[c.slot for c in full]] = self.block_size - 1
            return {}
        for i in range(0, len(full), PREFILL_ROWS):
            group = full[i : i + PREFILL_ROWS]  # all of one length: `keep`
            for choice in group:
                choice.visible = choice.visible[-self.keep :]
            adapters = [self.adapters.slots[c.slot] for c in group]
            self._load([[c.slot] for c in group], [c.visible for c in group], [[]] * len(group), adapters)
        return {c.slot: self.logits[c.slot].clone() for c in full}

    def _rows_in_use(self) -> int:
        """How many of the batch's first rows a step covers: the highest slot in use + 1, rounded up to a
        power of two (so few step shapes exist: each is compiled once with --compile)."""
        top = max(c.slot for r in self.running for c in r.choices) + 1
        return min(self.max_batch, 1 << (top - 1).bit_length())

    def _length_in_use(self) -> int:
        """Cache positions a step reads: past every running row's newest token, rounded up to a multiple
        of 64 (a short context does not pay for the whole buffer); compiled, all (one shape per row count)."""
        if self.batch.compiled:
            return self.block_size
        # a row's newest token goes at len(visible) - 1; a held (re-prefilled) row writes at len(visible)
        longest = max(len(c.visible) for r in self.running for c in r.choices) + 1
        return min(self.block_size, -(-longest // 64) * 64)

    # --- leaving -------------------------------------------------------------------------------

    def _retire(self, run: _Running, error: str | None) -> None:
        if run not in self.running:
            return
        self.running.remove(run)
        if self.prefix_cache.enabled and (error is None or run.job.cancelled):  # (a failed step: unsure)
            held = self.batch.positions[[c.slot for c in run.choices]].tolist()  # tokens in each row's cache
            for choice, n in zip(run.choices, held):  # (the last token chosen was never fed)
                self.prefix_cache.store(choice.visible[:n], self.batch.cache, choice.slot, run.job.adapter)
        self._release([c.slot for c in run.choices])
        self.stats.jobs_done += 1
        self._send(run.job, JobEnd(error))

    def _release(self, slots: list[int]) -> None:
        self.batch.positions[slots] = 0  # a free row runs along at position 0, out of everyone's way
        self.free = sorted(self.free + slots)

    def _send(self, job: Job, event: ChoiceDelta | JobEnd) -> None:
        try:
            job.emit(event)
        except Exception:  # nobody is listening any more (the client's event loop is gone)
            job.cancel()
