"""BirdCLEF time codes, ``hh:mm:ss-hh:mm:ss``: the one rule the run-file writer
(:mod:`train.tables`) and the scorer (:mod:`train.score`) share.

The rule: **both ends go to the nearest whole second (halves up), and the span lasts at least one
second** (an end that rounds onto its start moves one second on). Why this rule:

* whole seconds map to themselves, so the challenge's grid (``00:00:05-00:00:10``) is written as
  given and a time code parsed from a truth file formats back to the same text;
* the segments predict writes are multiples of the segment length computed in floating point
  (``3 * 1.6666...``): a tiny error either way still lands on the grid, where a floor or a
  ceiling would move a whole second for ``4.9999999`` or ``10.0000001``;
* a short last segment (``4.0`` to ``4.193`` s) keeps a one-second code instead of an empty one.
"""

from __future__ import annotations

import math
import re

_CLOCK = re.compile(r"(\d{2,}):([0-5]\d):([0-5]\d)")


def clock(seconds: int) -> str:
    """Whole ``seconds`` as ``hh:mm:ss``; hours have at least two digits and keep counting past 24."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _nearest_second(seconds: float) -> int:
    return math.floor(seconds + 0.5)  # halves up (Python's round() would send 2.5 to 2)


def format_tc(start_s: float, end_s: float) -> str:
    """``hh:mm:ss-hh:mm:ss`` for a segment from ``start_s`` to ``end_s`` seconds (rule in the module docstring).

    Raises:
        ValueError: a time that is negative or not finite, or an end before the start.
    """
    if not (math.isfinite(start_s) and math.isfinite(end_s)) or start_s < 0:
        raise ValueError(f"segment times must be finite and >= 0, got {start_s} to {end_s}")
    if end_s < start_s:
        raise ValueError(f"segment {start_s} to {end_s} s ends before it starts")
    start = _nearest_second(start_s)
    end = max(_nearest_second(end_s), start + 1)
    return f"{clock(start)}-{clock(end)}"


def parse_tc(text: str) -> tuple[float, float]:
    """``(start_s, end_s)`` in seconds from ``hh:mm:ss-hh:mm:ss`` (hours two digits or more).

    Raises:
        ValueError: any other form, minutes or seconds above 59, or an end not after the start.
    """
    parts = text.strip().split("-")
    clocks = [_CLOCK.fullmatch(part) for part in parts]
    if len(parts) != 2 or not all(clocks):
        raise ValueError(f"time code {text!r} is not hh:mm:ss-hh:mm:ss")
    start, end = (int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (c.groups() for c in clocks))
    if end <= start:
        raise ValueError(f"time code {text!r} does not end after it starts")
    return float(start), float(end)


def canonical_tc(text: str) -> str:
    """A time code as :func:`format_tc` writes it (``0:00:05`` is refused, ``100:00:00`` kept)."""
    return format_tc(*parse_tc(text))
