"""A progress display that suits where the output goes.

On a terminal it is a tqdm bar; anywhere else (a log file, a batch job's output) it prints one
plain line every ``every_percent`` per cent instead of a stream of carriage-return updates.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """``update(done)`` with the absolute count; ``close()`` at the end. Usable as a context manager.

    Args:
        total: the count that means finished (``None`` when unknown: plain lines then only at close).
        desc: a short label printed before the counts.
        unit: what is counted ("file", "step").
        stream: where to write (default ``sys.stderr``).
        every_percent: plain-line spacing when the stream is not a terminal.
        disable: print nothing at all.
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", stream: TextIO | None = None,
                 every_percent: float = 5.0, disable: bool = False) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_percent = every_percent
        self.disable = disable
        self.done = 0
        self._start = time.perf_counter()
        self._next_percent = every_percent
        self._bar: Any = None
        self._closed = False
        self.postfix = ""
        if not disable and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_total(self, total: int) -> None:
        """Change the total (for work whose size is known only after it starts)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        """Extra text shown after the counts (loss, rate...)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, done: int) -> None:
        """Set the absolute count of finished items."""
        if self.disable:
            return
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
            return
        if self.total:
            percent = 100.0 * done / self.total
            if percent >= self._next_percent and done < self.total:
                self._line()
                while self._next_percent <= percent:
                    self._next_percent += self.every_percent

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disable and self.done:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._start
        of = f"/{self.total}" if self.total else ""
        percent = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        extra = f"  {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.done}{of} {self.unit}{percent} in {elapsed:.1f} s{extra}",
              file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
