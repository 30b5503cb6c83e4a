"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log.

    for shape in progress(shapes, desc="preparing shapes", unit="shape"):
        ...

On a terminal (the stream's ``isatty()``) this is a tqdm bar. Anywhere else -- a log file, a pipe,
CI -- redrawing a bar writes thousands of carriage-return frames, so instead one plain line is
written every ``interval`` seconds and one at the end:

    preparing shapes: 120/6778 shapes (2%), 1.9 shapes/s, 58:24 left

Both kinds offer the same calls: iteration, ``update(n)``, ``set_postfix(**values)``, ``write(line)``
(a message that does not break the bar) and ``close()`` (also on leaving a ``with`` block).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LOG_INTERVAL", "progress", "LogProgress"]

LOG_INTERVAL = 10.0
"""Seconds between two progress lines in a log."""


def progress(
    iterable: Iterable | None = None, *, file: TextIO | None = None, interval: float = LOG_INTERVAL, **options: Any
) -> tqdm | LogProgress:
    """A progress reporter over ``iterable`` (or, without one, advanced by ``update``).

    Args:
        iterable: what to iterate over; its ``len`` is the total when it has one.
        file: where to write; default ``sys.stderr`` at the time of the call.
        interval: seconds between lines when ``file`` is not a terminal.
        options: ``total`` (steps, when ``iterable`` has no length), ``desc`` (what is being done,
            the start of every line), ``unit`` ("shape", "image"), ``disable`` (report nothing, e.g.
            on non-main processes; iteration still works), as :class:`LogProgress` and tqdm take them.
    """
    file = sys.stderr if file is None else file
    if _is_terminal(file):
        return tqdm(iterable, file=file, dynamic_ncols=True, **options)
    return LogProgress(iterable, file=file, interval=interval, **options)


def _is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Progress as plain lines: one every ``interval`` seconds while work goes on, one at the end."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        interval: float = LOG_INTERVAL,
        leave: bool = True,
    ):
        self.iterable = iterable
        self.leave = leave  # False: no closing line (as tqdm's leave=False: the caller reports the result)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.file = sys.stderr if file is None else file
        self.interval = interval
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line, e.g. ``iou=0.53``."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def write(self, line: str) -> None:
        if not self.disable:
            print(line, file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.leave:
                self._print(time.monotonic(), final=True)

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The progress line as it would be written now."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}s" if self.desc else f"{count} {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}s/s")
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self, now: float, final: bool = False) -> None:
        if not self.disable and (self.n or final and self.total):
            print(self.line(now, final=final), file=self.file, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
