"""Windows over a recording's image and where their attention steps fall in the original recording.

The model sees windows of the training crop's width (2,990 px = 15 s). Evaluation tiles an image
with windows one width apart; prediction overlaps them (default hop: half a window). Either way the
last window ends at the image's end, and an image narrower than one window is one zero-padded
window.

A short clip is self-concatenated before featurizing (``min_duration``): its image shows the
recording several times over. Times in the image are therefore mapped back to the original
recording by ``t mod duration``, so a 20 s clip shown three times still gets 20 s of answers.
"""

from __future__ import annotations

import math

import numpy as np


def window_starts(n_frames: int, width: int, hop: int | None = None) -> list[int]:
    """First columns of windows ``width`` px wide, ``hop`` px apart, covering ``[0, n_frames)``.

    Args:
        n_frames: the image's valid width, px.
        width: window width, px.
        hop: px between window starts (default ``width``: tiles). The last window is aligned to
            the image end and may overlap the one before; an image narrower than ``width`` gives ``[0]``.
    """
    hop = width if hop is None else int(hop)
    if width < 1 or hop < 1:
        raise ValueError(f"window width and hop must be >= 1 px, got {width} and {hop}")
    if n_frames <= width:
        return [0]
    starts = list(range(0, n_frames - width, hop))
    return starts + [n_frames - width]


def original_seconds(image_seconds: np.ndarray, duration: float) -> np.ndarray:
    """Image time (s) -> time in the original recording: ``t mod duration`` (self-concatenation undone).

    Times at or past the end of an image that is not self-concatenated stay within ``[0, duration)``.
    """
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    folded = np.mod(np.asarray(image_seconds, dtype=np.float64), duration)
    return np.minimum(folded, np.nextafter(duration, 0))


def step_seconds(start: int, n_steps: int, *, width: int, n_frames: int, pixels_per_second: float) -> np.ndarray:
    """Image time (s) of the centre of each of a window's ``n_steps`` attention steps; NaN over padding.

    The feature map's steps divide the window's ``width`` px evenly (stride 16: 187 steps for
    2,990 px); steps whose centre lies past the image's valid width (a zero-padded window) are NaN.
    """
    centres = start + (np.arange(n_steps, dtype=np.float64) + 0.5) * width / n_steps
    seconds = centres / pixels_per_second
    return np.where(centres < n_frames, seconds, np.nan)


def segment_bounds(duration: float, segment_seconds: float) -> np.ndarray:
    """``(n_segments, 2)`` start and end (s) of consecutive segments covering ``[0, duration]`` exactly.

    The last segment ends at ``duration`` and may be shorter than ``segment_seconds``.
    """
    if not segment_seconds > 0 or not duration > 0:
        raise ValueError(f"segment length and duration must be positive, got {segment_seconds} and {duration}")
    count = max(1, math.ceil(duration / segment_seconds - 1e-9))
    starts = np.arange(count, dtype=np.float64) * segment_seconds
    ends = np.minimum(starts + segment_seconds, duration)
    return np.stack([starts, ends], axis=1)


def segment_of(seconds: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Index of the segment holding each original time (``-1`` for NaN), same shape as ``seconds``."""
    seconds = np.asarray(seconds, dtype=np.float64)
    index = np.searchsorted(bounds[:, 0], np.nan_to_num(seconds, nan=-1.0), side="right") - 1
    index = np.clip(index, 0, len(bounds) - 1)
    return np.where(np.isnan(seconds), -1, index)
