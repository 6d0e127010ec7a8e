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

from train.inference import FileWindows
from train.windows import original_seconds, segment_bounds, segment_of, step_seconds


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


def segment_activity(windows: FileWindows, segment: np.ndarray, n_segments: int) -> np.ndarray:
    """float32 ``(n_windows, S)``: each window's highest attention inside each segment (-1: not touched)."""
    activity = np.full((len(windows.starts), n_segments), -1.0, dtype=np.float32)
    rows = np.repeat(np.arange(segment.shape[0]), segment.shape[1])
    flat, values = segment.ravel(), windows.temporal.ravel()
    keep = flat >= 0
    np.maximum.at(activity, (rows[keep], flat[keep]), values[keep])
    return activity


def _fill_untouched(activity: np.ndarray, windows: FileWindows, times: np.ndarray, bounds: np.ndarray) -> None:
    """A segment shorter than one step may hold no step centre: give it the nearest step's attention."""
    for s in np.flatnonzero((activity < 0).all(axis=0)):
        distance = np.nan_to_num(np.abs(times - bounds[s].mean()), nan=np.inf)
        w, j = np.unravel_index(np.argmin(distance), distance.shape)
        activity[w, s] = windows.temporal[w, j]


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
    segment = segment_of(times, bounds)
    activity = segment_activity(windows, segment, len(bounds))
    _fill_untouched(activity, windows, times, bounds)
    weighted = windows.probabilities[:, None, :] * np.clip(activity, 0, None)[:, :, None]  # (W, S, K)
    scores = np.where(activity[:, :, None] >= 0, weighted, 0).max(axis=0).astype(np.float32)
    bands = frequency_bands(windows, width=width, n_frames=n_frames, duration=duration,
                            pixels_per_second=pixels_per_second, bounds=bounds, nyquist=nyquist)
    return Segments(bounds=bounds, scores=scores, activity=activity.max(axis=0).astype(np.float32), bands=bands)
