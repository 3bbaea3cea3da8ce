"""Signals: Ctrl-C (SIGINT), a kill (SIGTERM: `kill`, `timeout`, a job scheduler's time limit)
and a hang-up (SIGHUP: the terminal or ssh session closed) handled for the length of some work,
then the caller's handlers again (a forked worker of a later pool must not inherit ours). Python
handles signals in the main thread only, so elsewhere these leave the handlers alone."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def handlers_kept(signums: Iterable[int]) -> Iterator[None]:
    """After the block, the handlers of these signals that it found, whatever it set (torch's
    launcher sets its own and leaves them set)."""
    previous = {s: signal.getsignal(s) for s in signums} if _main_thread() else {}
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back; the default then
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


@contextmanager
def on_signals(handler: Callable[[], None], signums: Iterable[int]) -> Iterator[None]:
    """handler() on each of these signals inside the block, but one ignored when it starts stays
    ignored: SIGHUP under `nohup`, SIGINT in a script's background job."""
    signums = (
        [s for s in signums if signal.getsignal(s) != signal.SIG_IGN] if _main_thread() else []
    )
    with handlers_kept(signums):
        for signum in signums:
            signal.signal(signum, lambda number, frame: handler())
        yield


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt() -> None:
    raise KeyboardInterrupt


KILLS = (signal.SIGTERM, signal.SIGHUP)  # by default they end a process there and then


def sigterm_as_interrupt():
    """Inside the block a kill or a hang-up (KILLS) stops the work as Ctrl-C does
    (KeyboardInterrupt), so that what is in progress is cleaned up or saved on the way out."""
    return on_signals(_interrupt, KILLS)
