"""Log-power spectrograms, computed for any set of STFT frames so long recordings go in blocks.

The STFT is centred (``librosa.stft(center=True, pad_mode="constant")``): frame ``j`` is centred
on sample ``j * hop_length`` and the signal is zero-padded by ``n_fft // 2`` at both ends, so a
recording of ``n`` samples has ``1 + n // hop_length`` frames. Each FFT window has its own hop
(see :class:`shared.config.FeaturizerConfig`); frames are independent, so computing them in blocks
gives exactly the values of computing them all at once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft


def frame_count(n_samples: int, *, hop_length: int) -> int:
    """Number of centred STFT frames for ``n_samples`` samples."""
    if n_samples < 0 or hop_length <= 0:
        raise ValueError("n_samples must be >= 0 and hop_length > 0")
    return 1 + n_samples // hop_length


@lru_cache(maxsize=16)
def analysis_window(name: str, n_fft: int) -> np.ndarray:
    """Periodic analysis window, float32 ``(n_fft,)`` (``scipy.signal.get_window(name, n_fft)``).

    The Hann window is written out so the common case does not import ``scipy.signal`` (about
    0.4 s per worker process).
    """
    if name == "hann":
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    else:
        import scipy.signal

        window = scipy.signal.get_window(name, n_fft, fftbins=True)
    window = window.astype(np.float32)
    window.setflags(write=False)
    return window


def frames_at(signal: np.ndarray, frame_indices: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Gather centred, zero-padded analysis frames.

    Args:
        signal: mono float32, shape ``(n,)``.
        frame_indices: int, shape ``(f,)``; frame ``j`` is centred on sample ``j * hop_length``.
        n_fft: frame length in samples.
        hop_length: samples between frame centres.

    Returns:
        float32 array ``(f, n_fft)``, a new array.
    """
    signal = np.asarray(signal, dtype=np.float32)
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    if signal.ndim != 1:
        raise ValueError(f"signal must be 1-D, got shape {signal.shape}")
    n = signal.shape[0]
    starts = frame_indices * hop_length - n_fft // 2
    out = np.zeros((frame_indices.shape[0], n_fft), dtype=np.float32)
    inside = (starts >= 0) & (starts + n_fft <= n)
    if inside.any():
        out[inside] = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[starts[inside]]
    for row in np.flatnonzero(~inside):  # at most a few dozen frames at each end
        start = starts[row]
        lo, hi = max(start, 0), min(start + n_fft, n)
        if hi > lo:
            out[row, lo - start : hi - start] = signal[lo:hi]
    return out


def frame_range(signal: np.ndarray, start: int, stop: int, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Frames ``start .. stop - 1``, shape ``(stop - start, n_fft)``, like :func:`frames_at`.

    A strided read-only view: of the signal itself away from its ends, else of a zero-padded
    copy of the samples the frames span (a few times fewer values than gathering the frames).
    """
    signal = np.asarray(signal, dtype=np.float32)
    if stop <= start:
        return np.zeros((0, n_fft), dtype=np.float32)
    first = start * hop_length - n_fft // 2
    end = (stop - 1) * hop_length - n_fft // 2 + n_fft  # one past the last frame's last sample
    n = signal.shape[0]
    if first < 0 or end > n:
        padded = np.zeros(end - first, dtype=np.float32)
        lo, hi = max(first, 0), min(end, n)
        if hi > lo:
            padded[lo - first : hi - first] = signal[lo:hi]
        signal, first = padded, 0
    return np.lib.stride_tricks.as_strided(signal[first:], shape=(stop - start, n_fft), writeable=False,
                                           strides=(hop_length * signal.strides[0], signal.strides[0]))


def magnitude(frames: np.ndarray, *, window: str = "hann") -> np.ndarray:
    """``|rfft(frame * window)|`` of each frame: float32 ``(f, n_fft // 2 + 1)``, 0 Hz to Nyquist.

    Equals ``abs(librosa.stft(...))`` transposed for the same frames and window.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[1] < 2:
        raise ValueError(f"frames must have shape (f, n_fft >= 2), got {frames.shape}")
    spectrum = scipy.fft.rfft(frames * analysis_window(window, frames.shape[1]), axis=1, workers=1)
    return np.abs(spectrum)  # on complex64: about half the time of squaring real and imaginary parts


def to_decibels(magnitudes: np.ndarray, *, amin: float = 1e-10) -> np.ndarray:
    """Power in dB of STFT magnitudes, in place: ``10 log10(max(|X|**2, amin))`` = ``20 log10(max(|X|, sqrt(amin)))``.

    Equals ``librosa.power_to_db(|X|**2, ref=1, amin=amin, top_db=None)``. Returns its (float32) input.
    """
    np.maximum(magnitudes, np.float32(np.sqrt(amin)), out=magnitudes)
    np.log(magnitudes, out=magnitudes)  # numpy's float32 log: 2.5 ns a value here (AVX2), log2 6, log10 12
    magnitudes *= np.float32(20.0 / np.log(10.0))
    return magnitudes
