"""Progress reporting and cancellation for long work.

Algorithms take an optional :class:`Progress`; they call
``progress.update(fraction, message)`` now and then, which raises
:class:`~imagio.errors.Cancelled` once someone called ``cancel()`` (from a
widget's Cancel button, a signal handler, another thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]


class Progress:
    """Reports progress in [0, 1] to a callback and carries a cancel flag."""

    def __init__(self, callback: ProgressCallback | None = None, cancel_event: threading.Event | None = None,
                 start: float = 0.0, stop: float = 1.0):
        self._callback = callback
        self._cancel = cancel_event if cancel_event is not None else threading.Event()
        self._start = float(start)
        self._stop = float(stop)

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1 of this range); raise Cancelled if cancelled."""
        if self._cancel.is_set():
            raise Cancelled()
        if self._callback is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self._callback(self._start + f * (self._stop - self._start), message)

    def sub(self, start: float, stop: float) -> Progress:
        """A Progress for the sub-range [start, stop] of this one (sharing the cancel flag)."""
        span = self._stop - self._start
        return Progress(self._callback, self._cancel, self._start + start * span, self._start + stop * span)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise Cancelled if cancelled, without reporting."""
        if self._cancel.is_set():
            raise Cancelled()


def ensure(progress: Progress | None) -> Progress:
    """Return ``progress`` or a silent Progress, so algorithms can always call update()."""
    return progress if progress is not None else Progress()
