"""Progress reporting and cancellation for long work.

Algorithms take an optional :class:`Progress`; they call
``progress.update(fraction, message)`` now and then, which raises
:class:`~imagio.errors.Cancelled` once someone called ``cancel()`` (from a
widget's Cancel button, a signal handler, another thread).
"""

from __future__ import annotations

import re
import sys
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


# ---------------------------------------------------------------------------------------------- terminal printer
_OPEN_LIVE_LINES: list = []  # streams holding an unfinished live line (ended before an error is printed)


class TerminalLine:
    """The one writer of progress to a terminal, shared by every command-line path.

    On a terminal (``stream.isatty()``, or ``tty=True``): :meth:`draw` rewrites one live line in place
    (``\\r`` + erase-line + text); :meth:`line` erases it, prints a whole line, and the next :meth:`draw` starts the
    live line again; :meth:`end` ends it with a newline. Elsewhere (a log file, a pipe, CI) :meth:`draw` prints
    nothing and :meth:`line` prints plain lines. ``stream`` None: the current ``sys.stdout``, looked up at each
    write. A closed stream (a finished pipe) is ignored: progress is optional. An open live line is ended by
    :func:`end_live_lines` before an error message is printed.
    """

    def __init__(self, stream=None, tty: bool | None = None):
        self._stream, self._tty = stream, tty

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    @property
    def live(self) -> bool:
        if self._tty is not None:
            return self._tty
        try:
            return bool(getattr(self.stream, "isatty", lambda: False)())
        except (ValueError, OSError):
            return False

    def _write(self, text: str) -> None:
        out = self.stream
        try:
            out.write(text)
            out.flush()
        except (ValueError, OSError):
            pass

    def draw(self, text: str) -> None:
        """Redraw the live line (on a terminal only)."""
        if not self.live:
            return
        self._write("\r\033[K" + text)
        if self.stream not in _OPEN_LIVE_LINES:
            _OPEN_LIVE_LINES.append(self.stream)

    def line(self, text: str) -> None:
        """Print a whole line (erasing the live line first on a terminal)."""
        out = self.stream
        if self.live:
            self._write("\r\033[K")
            if out in _OPEN_LIVE_LINES:
                _OPEN_LIVE_LINES.remove(out)
        self._write(text + "\n")

    def end(self) -> None:
        """End the live line, if one is open on this stream."""
        out = self.stream
        if out in _OPEN_LIVE_LINES:
            _OPEN_LIVE_LINES.remove(out)
            self._write("\n")


def _phase(message: str) -> str:
    """A message with its numbers blanked: "Window 3 of 288" and "Window 4 of 288" are one phase."""
    return re.sub(r"[-+]?\d[\d.,:]*", "#", message.strip())


def terminal_progress(stream=None, step: float = 0.1, width: int = 70, tty: bool | None = None) -> ProgressCallback:
    """The command line's progress printer: a callback for :class:`Progress`, writing through :class:`TerminalLine`.

    On a terminal: one live line, rewritten in place (``[ 42.0%] message``) and ended at 100 %.
    Otherwise (a log file, a pipe, CI): a line only when the progress advanced by ``step`` (10 %)
    since the last line, when a message of a new kind appears (numbers in messages do not count,
    so "Window 3 of 288" and "Window 4 of 288" are one kind), and at 100 %: a few lines per run.
    ``stream`` defaults to the current ``sys.stdout`` (stderr is kept for the one-line error).
    """
    out = TerminalLine(stream, tty=tty)
    state = {"last": None, "phases": set(), "done": False}

    def show(fraction: float, message: str = "") -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        text = f"[{f * 100:5.1f}%] {message}"
        if out.live:
            out.draw(text[: width + 9])
            if f >= 1.0:
                out.end()
            return
        phase = _phase(message)
        new_phase = phase not in state["phases"]
        state["phases"].add(phase)
        last = state["last"]
        if f >= 1.0:
            due = not state["done"]
            state["done"] = True
        else:
            due = last is None or new_phase or f - last >= step - 1e-9
        if due:
            state["last"] = f
            out.line(text)

    return show


def end_live_lines() -> None:
    """End a live progress line left open (before an error message is printed)."""
    while _OPEN_LIVE_LINES:
        out = _OPEN_LIVE_LINES.pop()
        try:
            out.write("\n")
            out.flush()
        except (ValueError, OSError):
            pass
