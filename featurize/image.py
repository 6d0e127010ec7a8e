"""The tri-channel time-frequency image (paper 2.1, steps 6-9), built block by block.

For each FFT window: log-power spectrogram -> clip outliers at percentile bounds -> bilinear resize
to ``image_height`` rows and ``pixels_per_second`` columns -> scale to 0..255. The three results
are the R, G, B channels of one uint8 image.

Memory is bounded: the clip bounds come from at most ``percentile_frames`` evenly spaced frames
(first pass), then the image is produced in column blocks that each compute only the STFT frames
they need (second pass). A two-hour recording never holds its float spectrograms at once.

Geometry (shared by all channels, see :mod:`shared.schema`):
    row ``r``    -> frequency ``(H - 1 - r) / (H - 1) * sample_rate / 2`` (align corners)
    column ``c`` -> time ``(c + 0.5) / pixels_per_second`` s -> fractional STFT frame
                    ``time * sample_rate / hop_length``
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from featurize.spectrogram import frame_count, frame_range, frames_at, log_power
from shared.config import FeaturizerConfig


def _linear_weights(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights for linear interpolation at fractional ``positions``."""
    positions = np.clip(positions, 0.0, size - 1)
    low = np.floor(positions).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    weight = (positions - low).astype(np.float32)
    return low, high, weight


@lru_cache(maxsize=32)
def frequency_weights(bins: int, *, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which spectrogram bins the frequency resize reads, and how.

    Returns ``(used, low, high, weight)``: ``used`` the sorted bin indices any row reads;
    ``low``/``high`` per output row, as positions into ``used``; ``weight`` of ``high``.
    Row ``r`` is frequency ``(height-1-r)/(height-1)*Nyquist`` (highest first).
    """
    positions = (height - 1 - np.arange(height)) * (bins - 1) / (height - 1)
    low, high, weight = _linear_weights(positions, bins)
    used, inverse = np.unique(np.concatenate([low, high]), return_inverse=True)
    arrays = (used, inverse[:height], inverse[height:], weight)
    for array in arrays:
        array.setflags(write=False)  # shared by the cache
    return arrays


def resize_frequency(spectrogram: np.ndarray, *, height: int, bins: int | None = None) -> np.ndarray:
    """Linearly resample the frequency axis to ``height`` rows, highest frequency first.

    Args:
        spectrogram: ``(frames, bins)``, bins from 0 Hz to Nyquist; or, when ``bins`` is given,
            only the columns ``frequency_weights(bins, height=height)[0]`` of such a spectrogram.
        height: output rows.
        bins: number of bins of the full spectrogram when only the used columns are passed.

    Returns:
        float32 ``(frames, height)``; column ``r`` is frequency ``(height-1-r)/(height-1)*Nyquist``.
    """
    spectrogram = np.asarray(spectrogram, dtype=np.float32)
    if spectrogram.ndim != 2 or spectrogram.shape[1] < 2:
        raise ValueError(f"spectrogram must be (frames, bins >= 2), got {spectrogram.shape}")
    used, low, high, weight = frequency_weights(bins or spectrogram.shape[1], height=height)
    if bins is None:
        low, high = used[low], used[high]
    elif spectrogram.shape[1] != used.size:
        raise ValueError(f"expected the {used.size} used bins of {bins}, got {spectrogram.shape[1]}")
    out = spectrogram[:, low]
    upper = spectrogram[:, high]
    upper -= out
    upper *= weight
    out += upper
    return out


def column_frame_positions(columns: np.ndarray, config: FeaturizerConfig) -> np.ndarray:
    """Fractional STFT frame index at the centre of each image column, shape like ``columns``."""
    seconds = (np.asarray(columns, dtype=np.float64) + 0.5) / config.pixels_per_second
    return seconds * config.sample_rate / config.hop_length


def resize_time(spectrogram: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linearly resample the frame axis at fractional frame ``positions``.

    Args:
        spectrogram: ``(frames, rows)``; frame 0 is position 0.
        positions: ``(columns,)`` fractional frame indices (clamped to the valid range).

    Returns:
        float32 ``(columns, rows)``.
    """
    low, high, weight = _linear_weights(np.asarray(positions, dtype=np.float64), spectrogram.shape[0])
    out = spectrogram[low]
    upper = spectrogram[high]
    upper -= out
    upper *= weight[:, None]
    out += upper
    return out


def clip_bounds(values: np.ndarray, *, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Low and high percentile of ``values`` (any shape), in the values' units (dB)."""
    low, high = np.percentile(np.asarray(values, dtype=np.float32), percentiles)
    return float(low), float(high)


def to_uint8(values: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """Clip to ``[low, high]`` and map linearly onto 0..255 (rounded). All zeros if ``high <= low``."""
    if not high > low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scale = np.float32(255.0 / (high - low))
    scaled = np.clip(values, np.float32(low), np.float32(high))
    scaled *= scale
    scaled += np.float32(0.5) - np.float32(low) * scale  # + 0.5: round half up on the cast
    return scaled.astype(np.uint8)


@dataclass(frozen=True)
class MultiscaleImage:
    """A recording's image, described before it is computed.

    Build with :meth:`plan`; then :meth:`blocks` yields the pixels in column blocks.

    Attributes:
        signal: mono float32 ``(n,)`` at ``config.sample_rate`` (already self-concatenated).
        config: the featurizer config.
        width: image width in pixels, ``round(pixels_per_second * n / sample_rate)``.
        bounds: per channel ``(low, high)`` clip bounds in dB.
    """

    signal: np.ndarray
    config: FeaturizerConfig
    width: int
    bounds: tuple[tuple[float, float], ...]

    @classmethod
    def plan(cls, signal: np.ndarray, config: FeaturizerConfig) -> "MultiscaleImage":
        """Validate the signal and compute the clip bounds (the first pass)."""
        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim != 1 or signal.size == 0:
            raise ValueError(f"signal must be a non-empty 1-D array, got shape {signal.shape}")
        if not np.all(np.isfinite(signal)):
            raise ValueError("signal contains NaN or infinite samples")
        n_frames = frame_count(signal.size, hop_length=config.hop_length)
        sampled = np.unique(np.linspace(0, n_frames - 1, min(n_frames, config.percentile_frames)).round())
        bounds = []
        for n_fft in config.fft_windows:
            frames = frames_at(signal, sampled.astype(np.int64), n_fft=n_fft, hop_length=config.hop_length)
            spectrum = log_power(frames, window=config.window, amin=config.amin)
            bounds.append(clip_bounds(spectrum, percentiles=config.clip_percentiles))
        width = config.width_for(signal.size / config.sample_rate)
        return cls(signal=signal, config=config, width=width, bounds=tuple(bounds))

    @property
    def silent(self) -> bool:
        """True when every channel is constant (digital silence): the image is all zeros."""
        return all(high - low <= 1e-6 for low, high in self.bounds)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Columns ``[start, stop)`` of the image: uint8 ``(channels, image_height, stop - start)``."""
        if not 0 <= start < stop <= self.width:
            raise ValueError(f"column block [{start}, {stop}) outside image of width {self.width}")
        config = self.config
        n_frames = frame_count(self.signal.size, hop_length=config.hop_length)
        positions = column_frame_positions(np.arange(start, stop), config)
        first = int(np.clip(np.floor(positions[0]), 0, n_frames - 1))
        last = int(np.clip(np.floor(positions[-1]) + 1, 0, n_frames - 1))
        out = np.empty((len(config.fft_windows), config.image_height, stop - start), dtype=np.uint8)
        for channel, (n_fft, (low, high)) in enumerate(zip(config.fft_windows, self.bounds)):
            frames = frame_range(self.signal, first, last + 1, n_fft=n_fft, hop_length=config.hop_length)
            n_bins = n_fft // 2 + 1
            # only the bins the bilinear resize reads are converted to dB (about 600 of 1,025 for 2048)
            used = frequency_weights(n_bins, height=config.image_height)[0]
            spectrum = log_power(frames, window=config.window, amin=config.amin,
                                 bins=used if used.size < n_bins else None)
            np.clip(spectrum, low, high, out=spectrum)  # outliers first, as in the paper
            rows = resize_frequency(spectrum, height=config.image_height, bins=n_bins)
            columns = resize_time(rows, np.clip(positions, 0, n_frames - 1) - first)
            out[channel] = to_uint8(columns, low=low, high=high).T
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
