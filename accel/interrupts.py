"""How a command stops on Ctrl-C or SIGTERM: its clean-up runs, then the process ends at once.

An exception raised from a signal handler (Python's ``KeyboardInterrupt``) can land anywhere: inside a
lock-protected section of ``threading`` or ``multiprocessing`` (which then waits forever), or inside a
finalizer or a fork hook (where it is printed and dropped, and the run goes on). So under
:func:`stop_cleanly` SIGINT and SIGTERM raise nothing: the handler runs the registered clean-ups (newest
first: kill a sweep's grid-point processes, remove a staging folder and the parent folders created for it),
prints ``accel: interrupted`` or ``accel: terminated`` and ends the process with status 130 or 143.
Code that must not be cut in half (the renames that put a finished folder in place, a fork) runs under
:func:`signals_blocked`; a signal arriving meanwhile is handled when it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator

__all__ = ["on_stop", "signals_blocked", "stop_cleanly"]

STOP_SIGNALS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}

_cleanups: list[Callable[[], None]] = []


@contextlib.contextmanager
def on_stop(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if the process is stopped by Ctrl-C or SIGTERM while the block runs."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        _cleanups.remove(cleanup)


def _stop(signum: int, frame) -> None:
    status, word = STOP_SIGNALS[signum]
    for cleanup in reversed(list(_cleanups)):
        with contextlib.suppress(Exception):
            cleanup()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        print(f"\naccel: {word}", file=sys.stderr, flush=True)
    os._exit(status)


@contextlib.contextmanager
def stop_cleanly(prog: str = "accel") -> Iterator[None]:
    """Handle SIGINT and SIGTERM as described above while the block runs (main thread only; elsewhere the
    block runs with the handlers as they are)."""
    try:
        previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (this thread and what it forks); a signal that
    arrived meanwhile is handled as the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
