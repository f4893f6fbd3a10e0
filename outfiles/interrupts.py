"""How a command stops on Ctrl-C, SIGTERM or SIGHUP: its clean-up runs, then the process ends at once.

An exception raised from a signal handler (Python's ``KeyboardInterrupt``) can land anywhere: inside a
lock-protected section of ``threading`` or ``multiprocessing`` (which then waits forever), or inside a
finalizer or a fork hook (where it is printed and dropped, and the run goes on). So under
:func:`stop_cleanly` they raise nothing: the handler runs the registered clean-ups (newest first: kill a
sweep's grid-point processes, remove a staging folder and the parent folders created for it), prints
``accel: interrupted`` (``terminated``, ``hung up``) and ends the process by the signal itself (a shell
sees status 130, 143 or 129, and a script stops on Ctrl-C as it would for any program).
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

# Signals that stop a run, with the status a shell sees and the word printed.
STOP_SIGNALS = {
    signal.SIGINT: (130, "interrupted"),
    signal.SIGTERM: (143, "terminated"),
    signal.SIGHUP: (129, "hung up"),
}

_cleanups: list[Callable[[], None]] = []
_critical = 0  # depth of signals_blocked() sections in the main thread
_pending: list[int] = []  # a stop signal that arrived inside one, handled as the outermost ends


@contextlib.contextmanager
def on_stop(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if the process is stopped by Ctrl-C, SIGTERM or SIGHUP while the block runs."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        _cleanups.remove(cleanup)


def _stop(signum: int, frame) -> None:
    if _critical:  # inside a section that must not be cut in half: later
        _pending.append(signum)
        return
    status, word = STOP_SIGNALS[signum]
    for cleanup in reversed(list(_cleanups)):
        with contextlib.suppress(Exception):
            cleanup()
    with contextlib.suppress(Exception):
        print(f"\naccel: {word}", file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    # Die of the signal itself, so that a shell script running accel stops on Ctrl-C as it would for any
    # other program (a plain exit status 130 lets the script go on).
    with contextlib.suppress(Exception):
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(status)


@contextlib.contextmanager
def stop_cleanly(prog: str = "accel") -> Iterator[None]:
    """Handle the stop signals as described above while the block runs (main thread only; elsewhere the
    block runs with the handlers as they are). A signal the process inherited as ignored (a background job
    of a script, ``trap '' INT``) stays ignored."""
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _stop)
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
    """Hold the stop signals back while the block runs: the handler (which runs in the main thread, whichever
    thread the kernel gave the signal to) defers them to the end of the outermost such block, and this
    thread, and any process it forks, blocks them meanwhile (a forked child starts without the chance to
    run its parent's clean-up)."""
    global _critical
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if not _critical and _pending:
            _stop(_pending.pop(0), None)
