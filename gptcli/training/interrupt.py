"""Ctrl-C during training: finish the step, save it, say how to continue."""

import signal
import threading

from gptcli.errors import GptError


class TrainingInterrupted(GptError):
    """Ctrl-C: the last complete step was saved."""

    exit_code = 130


class StopOnInterrupt:
    """Ctrl-C asks the loop to stop after the current step (which is then saved); a second one stops at once.

    Stopping at a step boundary keeps the saved state exact: no half-applied update, no batch drawn
    for a step that never happened.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
