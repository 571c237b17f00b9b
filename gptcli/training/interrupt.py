"""Stopping cleanly: Ctrl-C, SIGTERM or SIGUSR1 finish the step, save it, say how to continue.

SIGTERM is what SLURM, Kubernetes and systemd send before they kill a job (SIGKILL follows after a
grace period); SIGUSR1 is what SLURM's `--signal=USR1@SECONDS` sends ahead of the time limit. Each
is handled like a first Ctrl-C: the loop stops after the current step, saves it, and exits with a
one-line message naming the signal and the command that continues the run. A second Ctrl-C stops
at once (a person at the terminal who means it); a repeated SIGTERM or SIGUSR1 changes nothing, since
a scheduler's hard stop is SIGKILL anyway and cutting the save short would only lose the step.

Exit codes follow the shell's 128 + signal number ("ended by signal N"): 130 for Ctrl-C, 143 for
SIGTERM, 138 for SIGUSR1 (on Linux), so a job script can tell a stop from a failure (1) and from a
finished run (0); see `exit_code`.
"""

import signal
import threading
from pathlib import Path

from gptcli.errors import GptError

# the signals that stop a run cleanly, in the order that names the stop when several came (on
# several ranks): a person's Ctrl-C, then the scheduler's stop, then its advance warning
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


def exit_code(sig: signal.Signals) -> int:
    """128 + the signal's number: 130 (SIGINT), 143 (SIGTERM), 138 (SIGUSR1 on Linux).

    SIGUSR1 gets its own code rather than 0 or SIGTERM's: the run is not finished (a scheduler must
    not mark it completed, a `set -e` script must not go on as if the model were trained), and a
    wrapper that resubmits jobs can tell "the time limit is near" (138) from "cancelled" (143).
    """
    return 128 + int(sig)


def first_signal(flags: list[bool]) -> signal.Signals | None:
    """The stop signal that names a stop, from `StopOnInterrupt.flags()` (or their union over ranks)."""
    return next((sig for sig, got in zip(STOP_SIGNALS, flags) if got), None)


class TrainingInterrupted(GptError):
    """A stop by signal: the last complete step was saved (exit code 128 + the signal's number)."""

    exit_code = 130

    def __init__(self, message: str, sig: signal.Signals = signal.SIGINT):
        super().__init__(message)
        self.signal = sig
        self.exit_code = exit_code(sig)

    @classmethod
    def cut_short(cls, step: int, saved: Path | None, run_dir: Path) -> "TrainingInterrupted":
        """A second Ctrl-C: stopped during `step`, which is not saved; what is left, said plainly."""
        return cls(cut_short_message(step, saved, run_dir))


def cut_short_message(step: int, saved: Path | None, run_dir: Path) -> str:
    """`interrupted during step N; the last checkpoint is PATH; continue with: ...`, or, before the
    first checkpoint, that nothing was saved yet."""
    if saved is None:
        return (
            f"interrupted during step {step}, before the first checkpoint: nothing was saved yet "
            f"(to start over, run the command again with --overwrite)"
        )
    return f"interrupted during step {step}; the last checkpoint is {saved}; continue with: gpt train --resume {run_dir}"


def stopped_message(sig: signal.Signals, step: int, saved: Path | None, run_dir: Path) -> str:
    """`interrupted at step N; saved PATH; continue with: ...` (Ctrl-C), `stopped by SIGTERM at ...`."""
    what = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
    where = f"saved {saved}; " if saved is not None else ""
    return f"{what} at step {step}; {where}continue with: gpt train --resume {run_dir}"


class StopOnInterrupt:
    """Ctrl-C, SIGTERM and SIGUSR1 ask the loop to stop after the current step (which is then saved).

    Stopping at a step boundary keeps the saved state exact: no half-applied update, no batch drawn
    for a step that never happened. The handlers are installed only in the main thread (Python
    allows no other) and the previous ones are put back on exit.
    """

    def __init__(self):
        self.received: list[signal.Signals] = []  # each stop signal once, in order of arrival
        self._previous: dict[signal.Signals, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def flags(self) -> list[bool]:
        """Per STOP_SIGNALS entry: did it arrive? (what ranks exchange to agree on a stop)"""
        return [sig in self.received for sig in STOP_SIGNALS]

    def _handle(self, signum, frame):
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and self.received:  # Ctrl-C while already stopping: stop now
            raise KeyboardInterrupt
        if sig not in self.received:
            self.received.append(sig)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():  # None: a handler not set from Python
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def agreed_stop(self, world, timed_out: bool, exchange: bool) -> str | None:
        """The stop every rank takes: a signal's name, 'max_time', or None to go on.

        Under torchrun the ranks agree, whether a signal reached one rank, some or all of them
        (torchrun forwards SIGTERM to every worker; a scheduler may signal each process itself):
        when `exchange` (at log steps only: an all-reduce is a host sync) they share which signals
        each has seen, and all stop at that step, named the same way.
        """
        flags = [*self.flags(), timed_out]
        if world.enabled:
            flags = world.any(*flags) if exchange else [False] * len(flags)
        *signals, timed_out = flags
        sig = first_signal(signals)
        if sig is not None:
            return sig.name
        return "max_time" if timed_out else None
