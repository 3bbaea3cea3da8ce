"""Signals: Ctrl-C (SIGINT) and a kill (SIGTERM: `kill`, `timeout`, a job scheduler's time limit)
handled for the length of some work, then the caller's handlers again (a forked worker of a
later pool must not inherit ours). Python handles signals in the main thread only, so elsewhere
these leave the handlers alone."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def on_signals(handler: Callable[[], None], signums: Iterable[int]) -> Iterator[None]:
    """handler() on each of these signals inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: handler()) for s in signums}
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back; the default then
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def _interrupt() -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt():
    """Inside the block a kill stops the work as Ctrl-C does (KeyboardInterrupt), so that what
    is in progress is cleaned up or saved on the way out."""
    return on_signals(_interrupt, [signal.SIGTERM])
