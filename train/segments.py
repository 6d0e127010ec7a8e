"""Scores per time segment of a recording, localised by the temporal attention (paper 3.2, figure 4).

A window's softmax says which species are in its 15 s; its temporal attention (one sigmoid per
stride-16 step, 0.08 s) says when a bird is active. A segment's score for species ``c`` is

    score[s, c] = max over windows w touching s of  p_w[c] * a_w[s]

where ``a_w[s]`` is the highest attention of window ``w``'s steps inside segment ``s`` (steps
mapped back to the original recording, so self-concatenated repeats land on the same segment).
A segment with no activity in any window therefore scores low even when a neighbouring call
makes its window confident, and with overlapping windows each segment takes the window that
sees it best. Scores stay in [0, 1]; they are not calibrated probabilities (see the README).

The time-frequency attention gives each segment a frequency band: its mass over the main
branch's rows, summed over the steps inside the segment. Where a few rows hold most of it the
band is those rows; where it is spread the band is the full range (not confident).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soundception.train.inference import FileWindows
from soundception.train.windows import original_seconds, segment_bounds, segment_of, step_seconds


@dataclass(frozen=True)
class Segments:
    """One recording's segments.

    Attributes:
        bounds: float64 ``(S, 2)`` start and end in seconds of the original recording.
        scores: float32 ``(S, n_classes)`` in [0, 1].
        activity: float32 ``(S,)`` the best temporal attention seen inside each segment.
        bands: float64 ``(S, 2)`` low and high frequency (Hz) from the time-frequency attention.
    """

    bounds: np.ndarray
    scores: np.ndarray
    activity: np.ndarray
    bands: np.ndarray


def step_times(windows: FileWindows, n_steps: int, *, width: int, n_frames: int, duration: float,
               pixels_per_second: float) -> np.ndarray:
    """float64 ``(n_windows, n_steps)``: each attention step's time in the original recording (NaN: padding)."""
    seconds = np.stack([step_seconds(int(s), n_steps, width=width, n_frames=n_frames,
                                     pixels_per_second=pixels_per_second) for s in windows.starts])
    return np.where(np.isnan(seconds), np.nan, original_seconds(np.nan_to_num(seconds), duration))


def segment_activity(windows: FileWindows, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's highest attention inside each segment it touches, as sparse triples.

    Returns int ``(n,)`` windows, int ``(n,)`` segments and float32 ``(n,)`` attention, one per
    touching (window, segment) pair: a window touches a few segments, so memory grows with the
    recording's length, never with its square.
    """
    n_segments = int(segment.max()) + 1 if segment.size else 0
    rows = np.repeat(np.arange(segment.shape[0]), segment.shape[1])
    flat, values = segment.ravel(), windows.temporal.ravel()
    keep = flat >= 0
    keys = rows[keep] * n_segments + flat[keep]
    values = values[keep].astype(np.float32)
    order = np.lexsort((values, keys))  # by pair, then attention: each pair's last is its maximum
    keys, values = keys[order], values[order]
    last = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True])
    return keys[last] // max(n_segments, 1), keys[last] % max(n_segments, 1), values[last]


def _fill_untouched(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], windows: FileWindows, times: np.ndarray,
                    bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A segment shorter than one step may hold no step centre: give it the nearest step's attention."""
    untouched = np.setdiff1d(np.arange(len(bounds)), pairs[1])
    extra = []
    for s in untouched:
        distance = np.nan_to_num(np.abs(times - bounds[s].mean()), nan=np.inf)
        w, j = np.unravel_index(np.argmin(distance), distance.shape)
        extra.append((w, s, windows.temporal[w, j]))
    if not extra:
        return pairs
    w, s, a = (np.array(column) for column in zip(*extra))
    return np.r_[pairs[0], w], np.r_[pairs[1], s], np.r_[pairs[2], a].astype(np.float32)


PAIRS_PER_CHUNK = 4096  # bounds the (pairs, classes) products held at once


def frequency_bands(windows: FileWindows, *, width: int, n_frames: int, duration: float, pixels_per_second: float,
                    bounds: np.ndarray, nyquist: float, confident_mass: float = 0.8,
                    confident_share: float = 0.5) -> np.ndarray:
    """float64 ``(S, 2)`` low/high Hz per segment from the time-frequency attention (full band if unsure).

    The rows (highest frequency first) holding ``confident_mass`` of the segment's attention, taken
    from the largest down, must span at most ``confident_share`` of the rows to count as confident.
    """
    full = np.tile([0.0, nyquist], (len(bounds), 1))
    if windows.time_frequency is None or windows.time_frequency.ndim != 3:
        return full
    n_rows, n_steps = windows.time_frequency.shape[1:]
    segment = segment_of(step_times(windows, n_steps, width=width, n_frames=n_frames, duration=duration,
                                    pixels_per_second=pixels_per_second), bounds)
    mass = np.zeros((len(bounds), n_rows))
    for w in range(segment.shape[0]):
        for s in np.unique(segment[w][segment[w] >= 0]):
            mass[s] += windows.time_frequency[w][:, segment[w] == s].sum(axis=1)
    bands = full.copy()
    for s in range(len(bounds)):
        total = mass[s].sum()
        if not total > 0:
            continue
        order = np.argsort(mass[s])[::-1]
        needed = order[: int(np.searchsorted(np.cumsum(mass[s][order]) / total, confident_mass) + 1)]
        top, bottom = needed.min(), needed.max()  # row 0 is the highest frequency
        if (bottom - top + 1) <= confident_share * n_rows:
            bands[s] = [nyquist * (1 - (bottom + 1) / n_rows), nyquist * (1 - top / n_rows)]
    return bands


def segment_scores(windows: FileWindows, *, width: int, n_frames: int, duration: float, pixels_per_second: float,
                   segment_seconds: float, nyquist: float) -> Segments:
    """Scores per ``segment_seconds`` segment of one recording (see the module docstring).

    Args:
        windows: the file's window results, with the temporal attention ``(n_windows, T16)``.
        width: window width, px; ``n_frames``: the image's valid width, px.
        duration: the original recording's length, s (before self-concatenation).
        pixels_per_second: image columns per second; ``nyquist``: the image's top frequency, Hz.
    """
    if windows.temporal is None or windows.temporal.ndim != 2:
        raise ValueError("segment scores need the temporal attention per time step (aux_attention 'temporal')")
    bounds = segment_bounds(duration, segment_seconds)
    times = step_times(windows, windows.temporal.shape[1], width=width, n_frames=n_frames, duration=duration,
                       pixels_per_second=pixels_per_second)
    windows_of, segments_of, attention = _fill_untouched(segment_activity(windows, segment_of(times, bounds)),
                                                         windows, times, bounds)
    scores = np.zeros((len(bounds), windows.probabilities.shape[1]), dtype=np.float32)
    for start in range(0, len(attention), PAIRS_PER_CHUNK):
        chunk = slice(start, start + PAIRS_PER_CHUNK)
        np.maximum.at(scores, segments_of[chunk], windows.probabilities[windows_of[chunk]] * attention[chunk, None])
    activity = np.zeros(len(bounds), dtype=np.float32)
    np.maximum.at(activity, segments_of, attention)
    bands = frequency_bands(windows, width=width, n_frames=n_frames, duration=duration,
                            pixels_per_second=pixels_per_second, bounds=bounds, nyquist=nyquist)
    return Segments(bounds=bounds, scores=scores, activity=activity, bands=bands)
