"""The tri-channel time-frequency image (paper 2.1, steps 6-9), built block by block.

For each FFT window: STFT frames at that window's own hop (:mod:`featurize.spectrogram`) ->
resize to the image's columns and rows -> log power -> clip outliers at percentile bounds, empty
bands left out, and scale to 0..255 (:mod:`featurize.clip`). The three results are the R, G, B
channels of one uint8 image.

Why each window has its own hop and the resize pools: a column is ``sample_rate /
pixels_per_second`` = 110.6 samples wide. A 128-point frame hopped by that much sees a 3 ms note
between two frame centres at a fraction of its power (measured: -18 dB). With a hop of at most a
quarter window every sound is near some frame centre, and ``max`` pooling of the frames inside a
column keeps the loudest, so a short note's brightness no longer depends on where it falls.
The same holds on the frequency axis: 1,025 bins of the 2048-point spectrum shrink to 299 rows,
and ``max`` over each row's bins keeps a pure tone's level wherever its frequency lies (bilinear
sampling reads only 597 of the bins). ``bilinear`` (the paper's word) and ``area`` (mean) stay
available; the README gives the measurements behind the default.

Memory is bounded: the clip bounds come from at most ``percentile_columns`` evenly spaced columns.
An image whose float values fit in :data:`ONE_PASS_BYTES` (about three minutes of audio) is
computed once and kept until it is quantised, and its bounds are read from the kept values. A
longer one takes two passes: the sampled columns alone (first pass), then column blocks that each
compute only the STFT frames they need (second pass), so a two-hour recording never holds its
float spectrograms at once, and a disk-backed signal (:mod:`featurize.signal`) has its pages
dropped after each pass and block. Both give the same bytes, since every column's values depend on
its own frames only (``area``: to a grey level, as its matrix product rounds by the number of rows).

Geometry (shared by all channels, see :mod:`shared.schema`):
    row ``r``    -> frequency ``(H - 1 - r) / (H - 1) * sample_rate / 2`` (align corners); with
                    pooling, row ``r`` covers the bins within half a row spacing of it
    column ``c`` -> samples ``[c, c + 1) * P`` with ``P = sample_rate / pixels_per_second``,
                    centred at ``(c + 0.5) / pixels_per_second`` s; with pooling it holds the
                    frames centred inside it, otherwise it interpolates at its centre
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from soundception.featurize.clip import channel_bounds, to_uint8
from soundception.featurize.signal import is_disk_backed, release_pages
from soundception.featurize.spectrogram import frame_count, frame_range, frames_at, magnitude, to_decibels
from soundception.shared.config import RESIZE_METHODS, FeaturizerConfig


def _linear_weights(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights for linear interpolation at fractional ``positions``."""
    positions = np.clip(positions, 0.0, size - 1)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    weight = (positions - low).astype(np.float32)
    return low, high, weight


def _interpolate(values: np.ndarray, low: np.ndarray, weight: np.ndarray, axis: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``values[low] + weight * (values[low + 1] - values[low])`` along ``axis`` (0 or 1), float32.

    ``low`` and ``weight`` come from :func:`_linear_weights` (at the last index the step is 0).
    The neighbours' differences are taken once on the input, usually the smaller array. Gathers
    use ``np.take``, whose result is C-ordered: ``array[:, low]`` comes back in column order, and
    the arithmetic on it then went through strided copies (measured: 1.8x the time on 1,024
    columns of 65 bins to 299 rows). Written into ``out`` when given (then returned).
    """
    steps = np.empty_like(values)
    if axis == 0:
        np.subtract(values[1:], values[:-1], out=steps[:-1])
        steps[-1] = 0
    else:
        np.subtract(values[:, 1:], values[:, :-1], out=steps[:, :-1])
        steps[:, -1] = 0
    # mode="clip": no buffering; the indices are valid
    out = np.take(values, low, axis=axis, out=out, mode="clip")
    step = np.take(steps, low, axis=axis, mode="clip")
    step *= weight if axis == 1 else weight[:, None]
    out += step
    return out


def _ceil_div(numerator: np.ndarray, denominator: int) -> np.ndarray:
    return -(-numerator // denominator)


@lru_cache(maxsize=32)
def _row_weights(bins: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_linear_weights` at each row's frequency, highest first (``bins`` evenly spaced to Nyquist)."""
    weights = _linear_weights(np.arange(height)[::-1] * (bins - 1) / (height - 1), bins)
    for array in weights:
        array.setflags(write=False)
    return weights


@lru_cache(maxsize=32)
def row_bins(bins: int, height: int) -> np.ndarray:
    """First bin of each row's band, ascending frequency, int ``(height + 1,)`` (the last is ``bins``).

    Row ``a`` (counted from 0 Hz) covers the bins whose centre lies in ``[a - 1/2, a + 1/2)`` row
    spacings; needs ``bins > height`` so every band holds at least one bin. Exact integer arithmetic.
    """
    a = np.arange(height + 1, dtype=np.int64)
    edges = _ceil_div((2 * a - 1) * (bins - 1), 2 * (height - 1))
    edges = np.clip(edges, 0, bins)
    edges[-1] = bins
    edges.setflags(write=False)
    return edges


@lru_cache(maxsize=32)
def band_gather(bins: int, height: int) -> np.ndarray:
    """int ``(height, widest band)``: each row's bins, the last repeated to fill (for a max)."""
    edges = row_bins(bins, height)
    widest = int(np.diff(edges).max())
    gather = np.minimum(edges[:-1, None] + np.arange(widest)[None, :], edges[1:, None] - 1)
    gather.setflags(write=False)
    return gather


@lru_cache(maxsize=32)
def area_matrix(bins: int, height: int) -> np.ndarray:
    """float32 ``(bins, height)``: row ``a`` (ascending) is the mean of the bins it overlaps.

    Bin ``k`` spans ``[k - 1/2, k + 1/2]`` bin spacings and row ``a`` spans ``[a - 1/2, a + 1/2]``
    row spacings; each weight is the overlap length, normalised so every row's weights sum to 1.
    """
    scale = (bins - 1) / (height - 1)
    k = np.arange(bins)[:, None]
    a = np.arange(height)[None, :]
    overlap = np.minimum(k + 0.5, (a + 0.5) * scale) - np.maximum(k - 0.5, (a - 0.5) * scale)
    weights = np.clip(overlap, 0.0, None)
    weights /= weights.sum(axis=0, keepdims=True)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def resize_frequency(spectrogram: np.ndarray, *, height: int, method: str = "max",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Resize the frequency axis to ``height`` rows, highest frequency first.

    Args:
        spectrogram: ``(frames, bins)``, bins evenly spaced from 0 Hz to Nyquist (dB or magnitude).
        height: output rows; row ``r`` is frequency ``(height-1-r)/(height-1)*Nyquist``.
        method: ``"max"`` (loudest bin in each row's band), ``"area"`` (overlap-weighted mean of the
            bins) or ``"bilinear"`` (linear interpolation at each row's frequency). With fewer bins
            than rows there is nothing to pool and every method interpolates linearly.

    Returns:
        float32 ``(frames, height)``: a new array, or ``out`` when given.
    """
    spectrogram = np.asarray(spectrogram, dtype=np.float32)
    if spectrogram.ndim != 2 or spectrogram.shape[1] < 2:
        raise ValueError(f"spectrogram must be (frames, bins >= 2), got {spectrogram.shape}")
    bins = spectrogram.shape[1]
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    if method == "bilinear" or bins <= height:
        low, _, weight = _row_weights(bins, height)
        return _interpolate(spectrogram, low, weight, axis=1, out=out)
    if method == "max":  # one gather per position in the band, highest row first (2x a 3-D gather)
        gather = band_gather(bins, height)[::-1]
        rows = np.take(spectrogram, gather[:, 0], axis=1, out=out, mode="clip")
        for position in range(1, gather.shape[1]):
            np.maximum(rows, np.take(spectrogram, gather[:, position], axis=1, mode="clip"), out=rows)
        return rows
    rows = spectrogram @ area_matrix(bins, height)
    if out is None:
        return np.ascontiguousarray(rows[:, ::-1])
    out[...] = rows[:, ::-1]
    return out



@lru_cache(maxsize=32)
def column_period(config: FeaturizerConfig) -> Fraction:
    """Samples per image column, exactly: ``sample_rate * image_seconds / image_height`` (110.6)."""
    return Fraction(config.sample_rate) * Fraction(config.image_seconds).limit_denominator(10**6) / config.image_height


@lru_cache(maxsize=32)
def frames_per_column(config: FeaturizerConfig, hop_length: int) -> Fraction:
    """STFT frames per image column, exactly: :func:`column_period` / ``hop_length``."""
    return column_period(config) / hop_length


@lru_cache(maxsize=32)
def pools_time(config: FeaturizerConfig, hop_length: int) -> bool:
    """True when columns pool frames (every column holds at least one frame centre)."""
    return config.time_resize != "bilinear" and hop_length <= column_period(config)


def column_frames(columns: np.ndarray, *, hop_length: int, config: FeaturizerConfig,
                  n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """First and end (exclusive) frame of each column: frames centred in ``[c, c + 1) * P`` samples.

    Args:
        columns: int ``(k,)`` column indices.
        hop_length: this window's hop; must satisfy :func:`pools_time`.
        n_frames: frames of the recording; indices are clamped so each column keeps >= 1 frame.

    Returns:
        int ``(k,)`` first frames and int ``(k,)`` end frames.
    """
    step = frames_per_column(config, hop_length)
    columns = np.asarray(columns, dtype=np.int64)
    first = _ceil_div(columns * step.numerator, step.denominator)
    end = _ceil_div((columns + 1) * step.numerator, step.denominator)
    first = np.minimum(first, n_frames - 1)
    end = np.maximum(np.minimum(end, n_frames), first + 1)
    return first, end


def column_frame_positions(columns: np.ndarray, *, hop_length: int, config: FeaturizerConfig) -> np.ndarray:
    """Fractional STFT frame index at the centre of each image column, shape like ``columns``."""
    return (np.asarray(columns, dtype=np.float64) + 0.5) * float(frames_per_column(config, hop_length))


def _frames(signal: np.ndarray, first: np.ndarray, end: np.ndarray, *, n_fft: int, hop_length: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The frames ``first[i] .. end[i] - 1`` of every column, concatenated, and each column's offset."""
    counts = end - first
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if np.all(first[1:] == end[:-1]):  # contiguous columns: one strided read
        return frame_range(signal, int(first[0]), int(end[-1]), n_fft=n_fft, hop_length=hop_length), offsets
    indices = np.repeat(first - offsets, counts) + np.arange(int(counts.sum()))
    return frames_at(signal, indices, n_fft=n_fft, hop_length=hop_length), offsets


def _max_of_groups(values: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row-wise max of ``values[offsets[i] : offsets[i] + counts[i]]``: float32 ``(len(offsets), ...)``.

    Same as ``np.maximum.reduceat``; for the few frames per column here a gather per position is
    3.5x faster (measured on 60 s of 128-point frames).
    """
    if counts.max() > 8:
        return np.maximum.reduceat(values, offsets, axis=0)
    out = values[offsets]
    last = offsets + counts - 1
    for step in range(1, int(counts.max())):
        np.maximum(out, values[np.minimum(offsets + step, last)], out=out)
    return out


def channel_columns(signal: np.ndarray, columns: np.ndarray, *, n_fft: int, hop_length: int,
                    config: FeaturizerConfig, out: np.ndarray | None = None) -> np.ndarray:
    """One channel's values in dB at the given image columns, before clipping.

    Reductions come before expansions: where columns pool frames, each column first takes, bin
    by bin, the loudest (``max``) or mean dB (``area``) of the frames centred in it, then its
    bins become rows; where a column interpolates between frames, each frame's bins become rows
    first. (Max pooling commutes with the dB conversion, so it runs on magnitudes.)

    Args:
        signal: mono float32 ``(n,)`` at ``config.sample_rate``.
        columns: int ``(k,)`` increasing column indices (a block, or a sparse sample of the image).
        n_fft, hop_length: this channel's STFT window and hop, samples.
        out: float32 ``(k, image_height)`` to write the result into (else a new array).

    Returns:
        float32 ``(k, image_height)``: row ``r`` is frequency ``(H-1-r)/(H-1) * Nyquist``.
    """
    n_frames = frame_count(signal.size, hop_length=hop_length)
    columns = np.asarray(columns, dtype=np.int64)
    height, amin = config.image_height, config.amin
    if pools_time(config, hop_length):
        first, end = column_frames(columns, hop_length=hop_length, config=config, n_frames=n_frames)
        frames, offsets = _frames(signal, first, end, n_fft=n_fft, hop_length=hop_length)
        values = magnitude(frames, window=config.window)
        if config.time_resize == "max":
            values = to_decibels(_max_of_groups(values, offsets, end - first), amin=amin)
        else:
            values = np.add.reduceat(to_decibels(values, amin=amin), offsets, axis=0)
            values /= (end - first)[:, None].astype(np.float32)
        return resize_frequency(values, height=height, method=config.frequency_resize, out=out)
    positions = np.clip(column_frame_positions(columns, hop_length=hop_length, config=config), 0, n_frames - 1)
    low, high, weight = _linear_weights(positions, n_frames)
    if columns[-1] - columns[0] == columns.size - 1:  # a block (columns increase): one strided read
        frames = frame_range(signal, int(low[0]), int(high[-1]) + 1, n_fft=n_fft, hop_length=hop_length)
        low, high = low - low[0], high - low[0]
    else:  # a sparse sample of columns: only the frames they read
        needed = np.unique(np.concatenate([low, high]))
        frames = frames_at(signal, needed, n_fft=n_fft, hop_length=hop_length)
        low, high = np.searchsorted(needed, low), np.searchsorted(needed, high)
    values = magnitude(frames, window=config.window)
    if config.frequency_resize == "max" and values.shape[1] > height:  # pool bins before the dB conversion
        rows = to_decibels(resize_frequency(values, height=height, method="max"), amin=amin)
    else:
        rows = resize_frequency(to_decibels(values, amin=amin), height=height, method=config.frequency_resize)
    return _interpolate(rows, low, weight, axis=0, out=out)


COMPUTE_COLUMNS = 1024  # columns computed at a time: bounds the frames and spectra held (a few MB)


def block_values(signal: np.ndarray, start: int, stop: int, *, n_fft: int, hop_length: int,
                 config: FeaturizerConfig) -> np.ndarray:
    """:func:`channel_columns` for the columns ``[start, stop)``, :data:`COMPUTE_COLUMNS` at a time.

    Returns float32 dB ``(stop - start, image_height)``, the same values as one call.
    """
    out = np.empty((stop - start, config.image_height), dtype=np.float32)
    for piece in range(start, stop, COMPUTE_COLUMNS):
        end = min(piece + COMPUTE_COLUMNS, stop)
        channel_columns(signal, np.arange(piece, end), n_fft=n_fft, hop_length=hop_length, config=config,
                        out=out[piece - start : end - start])
    return out


FINITE_CHECK_SAMPLES = 1 << 22  # 16 MB of float32 at a time


def all_finite(signal: np.ndarray) -> bool:
    """``np.isfinite(signal).all()`` in pieces: no boolean copy of a long signal, and a
    disk-backed one (:mod:`featurize.signal`) keeps no more than a piece resident."""
    for start in range(0, signal.size, FINITE_CHECK_SAMPLES):
        if not np.isfinite(signal[start : start + FINITE_CHECK_SAMPLES]).all():
            return False
        release_pages(signal)
    return True


TRANSPOSE_TILE = 256  # image columns turned into rows at a time

ONE_PASS_BYTES = 128 << 20  # float32 values of an image computed once and kept (3.6 kB a column: 3 min)

SAMPLED_GROUP = 64  # sampled columns read at a time from a disk-backed signal


def _sampled_columns(signal: np.ndarray, columns: np.ndarray, *, n_fft: int, hop_length: int,
                     config: FeaturizerConfig) -> np.ndarray:
    """:func:`channel_columns` at sparse ``columns``; from a disk-backed signal in groups of
    :data:`SAMPLED_GROUP`, its pages dropped after each. Every column's values depend on its own
    frames only, so the groups give the same values. (Each scattered read maps about 180 kB of
    the file around it, measured: 1,024 columns held 190 MB per channel.)"""
    if not is_disk_backed(signal):
        return channel_columns(signal, columns, n_fft=n_fft, hop_length=hop_length, config=config)
    pieces = []
    for start in range(0, columns.size, SAMPLED_GROUP):
        pieces.append(channel_columns(signal, columns[start : start + SAMPLED_GROUP], n_fft=n_fft,
                                      hop_length=hop_length, config=config))
        release_pages(signal)
    return np.concatenate(pieces)


@dataclass(frozen=True)
class MultiscaleImage:
    """A recording's image, described before it is computed.

    Build with :meth:`plan`; then :meth:`blocks` yields the pixels in column blocks.

    Attributes:
        signal: mono float32 ``(n,)`` at ``config.sample_rate`` (already self-concatenated).
        config: the featurizer config.
        width: image width in pixels, ``round(pixels_per_second * n / sample_rate)``.
        bounds: per channel ``(floor, ceiling)`` clip bounds in dB (:mod:`featurize.clip`).
        silent: every channel's sampled values are one constant (digital silence): the image is
            all zeros.
        values: per channel float32 dB ``(width, image_height)`` when the image was computed in
            one pass (it fits in :data:`ONE_PASS_BYTES`), else ``None`` (blocks are computed as read).
    """

    signal: np.ndarray
    config: FeaturizerConfig
    width: int
    bounds: tuple[tuple[float, float], ...]
    silent: bool = False
    values: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def plan(cls, signal: np.ndarray, config: FeaturizerConfig) -> MultiscaleImage:
        """Validate the signal and compute the clip bounds: from the whole image computed once when
        it fits in :data:`ONE_PASS_BYTES`, else from the sampled columns alone (a first pass)."""
        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim != 1 or signal.size == 0:
            raise ValueError(f"signal must be a non-empty 1-D array, got shape {signal.shape}")
        if not all_finite(signal):
            raise ValueError("signal contains NaN or infinite samples")
        width = config.width_for(signal.size / config.sample_rate)
        sampled = np.unique(np.linspace(0, width - 1, min(width, config.percentile_columns)).round()).astype(np.int64)
        channels = tuple(zip(config.fft_windows, config.hop_lengths))
        if not is_disk_backed(signal) and 4 * width * config.image_height * len(channels) <= ONE_PASS_BYTES:
            values = tuple(block_values(signal, 0, width, n_fft=n_fft, hop_length=hop, config=config)
                           for n_fft, hop in channels)
            samples = [channel[sampled] for channel in values]
        else:
            values = None
            samples = [_sampled_columns(signal, sampled, n_fft=n_fft, hop_length=hop, config=config)
                       for n_fft, hop in channels]
        bounds = tuple(channel_bounds(sample, config) for sample in samples)
        silent = all(sample.min() == sample.max() for sample in samples)
        return cls(signal=signal, config=config, width=width, bounds=bounds, silent=silent, values=values)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Columns ``[start, stop)`` of the image: uint8 ``(channels, image_height, stop - start)``."""
        if not 0 <= start < stop <= self.width:
            raise ValueError(f"column block [{start}, {stop}) outside image of width {self.width}")
        config = self.config
        out = np.empty((len(config.fft_windows), config.image_height, stop - start), dtype=np.uint8)
        for channel, (n_fft, hop, (low, high)) in enumerate(zip(config.fft_windows, config.hop_lengths, self.bounds)):
            if self.values is not None:
                values = self.values[channel][start:stop]
            else:
                values = block_values(self.signal, start, stop, n_fft=n_fft, hop_length=hop, config=config)
            for first in range(0, stop - start, TRANSPOSE_TILE):  # (columns, rows) -> (rows, columns) by
                tile = values[first : first + TRANSPOSE_TILE]  # tiles that stay in cache while quantised
                out[channel, :, first : first + TRANSPOSE_TILE] = to_uint8(tile, low=low, high=high).T
        release_pages(self.signal)  # a disk-backed signal keeps only the block being computed resident
        return out

    def blocks(self, block_columns: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_column, pixels)`` for consecutive blocks of ``block_columns`` columns."""
        if block_columns <= 0:
            raise ValueError("block_columns must be positive")
        for start in range(0, self.width, block_columns):
            yield start, self.block(start, min(start + block_columns, self.width))


def multiscale_image(signal: np.ndarray, config: FeaturizerConfig) -> np.ndarray:
    """The whole image of a (self-concatenated) signal: uint8 ``(channels, image_height, width)``.

    Convenience for short signals and tests; the store writer uses :class:`MultiscaleImage` blocks.
    """
    image = MultiscaleImage.plan(signal, config)
    return image.block(0, image.width)
