"""Outlier clipping (paper 2.1, step 8): each channel's clip bounds and its 0..255 scaling.

The bounds are percentiles of a channel's dB values (``clip_percentiles``, from at most
``percentile_columns`` sampled columns, see :mod:`featurize.image`), with the rows of empty
frequency bands left out; values outside them are clipped, and the rest map linearly onto 0..255.
Pure array functions, exact against numpy's own ``percentile`` and ``median``.
"""

from __future__ import annotations

import numpy as np

from shared.config import FeaturizerConfig


SELECT_MIN = 1 << 14  # fewer values than this are simply sorted
SELECT_SAMPLE = 1 << 13  # about this many evenly spaced values estimate where a tail ends


def clip_bounds(values: np.ndarray, *, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Low and high percentile of ``values`` (any shape), in the values' units (dB).

    Equals ``np.percentile(values, percentiles)`` (linear interpolation), with the order
    statistics read from each tail alone (:func:`order_statistics`).
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    sample = np.sort(flat[:: max(1, flat.size // SELECT_SAMPLE)]) if flat.size > SELECT_MIN else None
    low, high = (_percentile(flat, q, sample) for q in percentiles)
    return low, high


def order_statistics(flat: np.ndarray, below: int, above: int, sample: np.ndarray | None = None
                     ) -> tuple[np.float32, np.float32]:
    """``np.sort(flat)[below]`` and ``[above]`` (``below <= above``), exactly, without sorting it all.

    A clip percentile sits in a tail (1 % or 0.1 % of the values): a sorted, evenly spaced
    ``sample`` of ``flat`` gives a threshold a little past the wanted rank, the values on the tail's
    side of it are sorted alone, and their count proves the threshold was far enough (all values
    up to it are there, so their order is the full order). When it was not, ``flat`` is sorted
    whole. Measured on 1,024 x 299 values: 0.6 ms against 1.8 ms for one sort.
    """
    n = flat.size
    if sample is None or sample.size < 2:
        ordered = np.sort(flat)
        return ordered[below], ordered[above]
    step = n / sample.size  # values per sample value
    if below < n - 1 - above:  # the low tail: the smallest values, up to rank `above`
        position = min(sample.size - 1, int(1.25 * (above + 1) / step) + 16)
        tail = np.sort(flat[flat <= sample[position]])
        if tail.size > above:
            return tail[below], tail[above]
    else:  # the high tail: the largest values, down to rank `below`
        position = max(0, sample.size - 1 - int(1.25 * (n - below) / step) - 16)
        tail = np.sort(flat[flat >= sample[position]])
        if tail.size >= n - below:
            offset = n - tail.size
            return tail[below - offset], tail[above - offset]
    ordered = np.sort(flat)  # the sample misled the threshold (structured values): sort everything
    return ordered[below], ordered[above]


def _percentile(flat: np.ndarray, q: float, sample: np.ndarray | None) -> float:
    """``np.percentile(flat, q)`` of a 1-D array, with numpy's arithmetic."""
    virtual = (flat.size - 1) * (q / 100.0)
    below = min(max(int(np.floor(virtual)), 0), flat.size - 1)
    above = min(below + 1, flat.size - 1)
    gamma = virtual - below
    low, high = order_statistics(flat, below, above, sample)
    difference = np.float64(high - low)  # float32 difference, as numpy's lerp
    if gamma >= 0.5:
        return float(high - difference * (1.0 - gamma))
    return float(low + difference * gamma)


def column_medians(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=0)`` of float32 ``(columns, rows)``, read from one sort (3x faster).

    Each row's values are made contiguous first: sorting along the strided axis cost 1.2x.
    """
    ordered = np.sort(np.ascontiguousarray(values.T), axis=1)
    half = ordered.shape[1] // 2
    if ordered.shape[1] % 2:
        return ordered[:, half]
    return (ordered[:, half - 1] + ordered[:, half]) / ordered.dtype.type(2)


def _reached(seeds: np.ndarray, passable: np.ndarray) -> np.ndarray:
    """bool: rows at or after a seed row with only passable rows since it (a run grown forward)."""
    index = np.arange(seeds.size)
    last_seed = np.maximum.accumulate(np.where(seeds, index, -1))
    last_wall = np.maximum.accumulate(np.where(passable, -1, index))
    return (last_seed >= 0) & (last_seed >= last_wall)


ROLLOFF_DB = 10.0  # an empty band extends through its neighbours more than this far under the band level


def empty_rows(values: np.ndarray, *, empty_band_db: float) -> np.ndarray:
    """bool ``(rows,)``: rows of a frequency band that holds no sound.

    A row's median over time is its background level; the 90th percentile of those is the level
    of the recorded band. A row more than ``empty_band_db`` under it is empty (a lossy codec's
    cut-off band, the top of audio recorded at a lower rate), and so are its neighbours, row by
    row, while they stay more than :data:`ROLLOFF_DB` under it (the filter's roll-off). Quiet but
    recorded bands and quiet stretches of time are kept: only whole rows far below count.

    Args:
        values: dB ``(columns, rows)``, one channel at sampled columns.
    """
    medians = column_medians(np.asarray(values, dtype=np.float32))
    level = np.percentile(medians, 90)
    quiet = medians < level - ROLLOFF_DB
    empty = medians < level - empty_band_db
    # grow the empty rows through the quiet rows next to them, in both directions
    return _reached(empty, quiet) | _reached(empty[::-1], quiet[::-1])[::-1]


def channel_bounds(values: np.ndarray, config: FeaturizerConfig) -> tuple[float, float]:
    """Clip bounds of one channel's sampled dB values ``(columns, rows)``, empty bands left out.

    In the percentiles an empty band would drag the low bound down and brighten the whole image:
    measured on calls over noise, the same sound as WAV and as 16 kHz audio resampled up differed
    by 125 grey levels on average below 5 kHz; with empty bands left out by 2 (MP3: 117 -> 14).
    """
    kept = np.compress(~empty_rows(values, empty_band_db=config.empty_band_db), values, axis=1)  # C-ordered
    return clip_bounds(kept, percentiles=config.clip_percentiles)


def to_uint8(values: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """Clip to ``[low, high]`` and map linearly onto 0..255 (rounded). All zeros if ``high <= low``."""
    if not high > low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scale = np.float32(255.0 / (high - low))
    scaled = np.clip(values, np.float32(low), np.float32(high))
    scaled *= scale
    scaled += np.float32(0.5) - np.float32(low) * scale  # + 0.5: round half up on the cast
    return scaled.astype(np.uint8)
