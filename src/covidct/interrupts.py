"""Ctrl-C and SIGTERM: held back where raising them is unsafe, SIGTERM made a clean stop like Ctrl-C,
and what the CLI says after either.

A KeyboardInterrupt raised while torch and MONAI are imported or a model is built can leave a module
lock held (the next import then waits forever) or abort the process from C++ ("terminate called ...
pybind11::error_already_set"). Measured on ``covidct analyze`` (16-slice phantom): 4 of 85 Ctrl-Cs timed
0.5-2 s into the run hung that way; none of 155 (0.3-9 s) once model loading held it back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# What a command can tell the user after Ctrl-C (e.g. how to resume); the CLI prints it on the
# "covidct: interrupted" line. Typer turns the KeyboardInterrupt into exit code 130, so it cannot carry it.
_interrupt_hint: list[str] = []


def set_interrupt_hint(text: str) -> None:
    """Say ``text`` after "covidct: interrupted" if this command is interrupted from now on."""
    _interrupt_hint[:] = [text]


def interrupt_hint() -> str:
    return _interrupt_hint[0] if _interrupt_hint else ""


# The stop signals: Ctrl-C, and SIGTERM (what `kill`, `timeout` and job schedulers send).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_terminated: list[bool] = []


def _on_sigterm(signum, frame) -> None:
    _terminated[:] = [True]
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: outputs staged, helpers stopped


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM stops the command like Ctrl-C, so it cleans up (for the console entry point only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def was_terminated() -> bool:
    """Whether the stop came from SIGTERM rather than Ctrl-C."""
    return bool(_terminated)


def leave_stops_to_the_parent() -> None:
    """In a helper process: Ctrl-C, which a terminal sends to the whole process group, is the parent's to
    handle (it stops its helpers, so they print nothing of their own), and SIGTERM keeps its default so
    the parent can stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Held:
    """A stop signal's handler while it is held: it only remembers the signal."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum, frame) -> None:
        self.pressed = True


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) held back inside the block, then delivered at its end if it came (as
    KeyboardInterrupt, unless another handler was installed).

    For short unsafe stretches (imports, model loading): it delays stopping by at most the block's
    duration. Main thread only (signal handlers live there); elsewhere, or nested, a no-op.
    """
    if threading.current_thread() is not threading.main_thread() or isinstance(signal.getsignal(signal.SIGINT), _Held):
        yield
        return
    held = {sig: _Held() for sig in STOP_SIGNALS}
    previous = {sig: signal.signal(sig, h) for sig, h in held.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, (signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
                          if handler is None else handler)
    for sig, h in held.items():
        if h.pressed:  # delivered again, to whatever handled it before (Python's KeyboardInterrupt, a server's own)
            signal.raise_signal(sig)
