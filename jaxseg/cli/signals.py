"""Ctrl-C and SIGTERM stop a command-line run cleanly.

Both raise ``KeyboardInterrupt`` in the main thread (SIGTERM as :class:`Terminated`), which
the run loop turns into a clean stop, and both say at once that the run is stopping: it
ends only after the device call in progress, which cannot be cut short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM's scancel and time limits, Kubernetes, ``kill``), raised in the main
    thread so that the run stops as cleanly as on Ctrl-C."""


def _announce(prog: str, name: str) -> None:
    # os.write, not print: the handler may run while the main thread is inside a print to
    # the same stream, and a buffered stream refuses that reentrant call.
    with contextlib.suppress(OSError):
        os.write(2, f"{prog}: {name} received: stopping once the work in progress ends (a "
                    f"device call cannot be cut short)\n".encode())


@contextlib.contextmanager
def stop_on_signals(prog: str) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and Ctrl-C ``KeyboardInterrupt``,
    each after a line on stderr naming ``prog``; the previous handlers come back after it.

    Nothing changes outside the main thread (only it can set handlers), and Ctrl-C is left
    alone where it would not raise ``KeyboardInterrupt`` anyway: a background job that
    ignores SIGINT keeps ignoring it.
    """
    def terminate(signum, frame) -> None:
        _announce(prog, "SIGTERM")
        raise Terminated()

    def interrupt(signum, frame) -> None:
        _announce(prog, "Ctrl-C")
        raise KeyboardInterrupt()

    previous = {}  # the handlers replaced here
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, terminate)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
