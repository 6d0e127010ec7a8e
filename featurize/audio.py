"""Audio decoding: any common codec -> mono float32 at the target rate, then self-concatenation.

soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, aiff, ...) is tried first and read in
blocks, mixing to mono and resampling with a streaming soxr resampler as it goes, so memory is
about one copy of the output signal. audioread (ffmpeg, gstreamer or the platform's decoder) is
the fallback for anything libsndfile cannot open (m4a/aac, for one).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from shared.text import one_line

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".m4a", ".aac", ".wma")
_BLOCK_FRAMES = 1 << 16  # source frames per decode block (what a corrupt block can cost)


class DecodeError(RuntimeError):
    """A file could not be decoded into audio; the message is one line."""


class Decoded(NamedTuple):
    """A decoded recording: mono float32 ``samples`` ``(n,)`` at the target rate, the source's
    ``duration`` in seconds as decoded, and a one-line ``warning`` ("" when all went well)."""

    samples: np.ndarray
    duration: float
    warning: str = ""


def _resampler(source_rate: float, target_rate: int):
    import soxr

    if source_rate == target_rate:
        return None
    return soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")


class _Collector:
    """Appends decoded blocks into one preallocated buffer (sized from the header), so a long
    recording costs one copy of its signal instead of a list of blocks plus their concatenation."""

    def __init__(self, expected: int) -> None:
        self.buffer = np.empty(max(expected, 0), dtype=np.float32)
        self.size = 0
        self.overflow: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        room = self.buffer.size - self.size
        if block.size <= room and not self.overflow:
            self.buffer[self.size : self.size + block.size] = block
            self.size += block.size
        else:  # the header under-stated the length: keep going in pieces
            self.overflow.append(block.copy())

    def result(self) -> np.ndarray:
        head = self.buffer[: self.size]
        return np.concatenate([head, *self.overflow]) if self.overflow else head


def _decode_soundfile(path: Path, sample_rate: int) -> Decoded:
    import soundfile

    warning = ""
    with soundfile.SoundFile(str(path)) as audio:
        source_rate = audio.samplerate
        if source_rate <= 0:
            raise DecodeError(f"invalid sample rate {source_rate}")
        resampler = _resampler(source_rate, sample_rate)
        collector = _Collector(math.ceil(max(audio.frames, 0) * sample_rate / source_rate) + 64)
        n_source = 0
        while True:
            try:
                block = audio.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except Exception as error:  # corrupt or truncated stream: keep what decoded cleanly
                if n_source == 0:
                    raise
                kept = n_source / source_rate
                warning = f"truncated or corrupt after {kept:.1f} s ({one_line(error)}); kept that part"
                break
            if block.shape[0] == 0:
                break
            n_source += block.shape[0]
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            collector.add(resampler.resample_chunk(mono) if resampler else mono)
        if resampler is not None:
            collector.add(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return Decoded(collector.result(), n_source / source_rate, warning)


def _decode_audioread(path: Path, sample_rate: int) -> Decoded:
    import audioread

    with audioread.audio_open(str(path)) as audio:
        channels, source_rate = audio.channels, audio.samplerate
        if channels <= 0 or source_rate <= 0:
            raise DecodeError(f"invalid stream (channels={channels}, rate={source_rate})")
        resampler = _resampler(source_rate, sample_rate)
        pieces, n_source, leftover = [], 0, b""
        for buffer in audio:
            data = leftover + bytes(buffer)
            usable = len(data) - len(data) % (2 * channels)
            data, leftover = data[:usable], data[usable:]
            block = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            block = block.reshape(-1, channels).mean(axis=1, dtype=np.float32)
            n_source += block.shape[0]
            pieces.append(resampler.resample_chunk(block) if resampler else block)
        if resampler is not None:
            pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return Decoded(samples, n_source / source_rate)


def decode(path: str | Path, *, sample_rate: int) -> Decoded:
    """Decode an audio file to mono float32 at ``sample_rate`` Hz.

    Channels are averaged. A stream that breaks after some audio decoded cleanly (a truncated
    download, say) keeps that audio and says so in ``warning``. Raises :class:`DecodeError` with
    a one-line reason when neither soundfile nor audioread can read the file, or it holds no
    samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        decoded = _decode_soundfile(path, sample_rate)
    except Exception as first:  # libsndfile could not read it: try the system decoders
        try:
            decoded = _decode_audioread(path, sample_rate)
        except Exception as second:
            raise DecodeError(
                f"cannot decode audio: soundfile: {one_line(first)}; audioread: {one_line(second)}"
            ) from None
    if decoded.samples.size == 0:
        raise DecodeError("no audio samples (0 frames)")
    if not np.all(np.isfinite(decoded.samples)):
        decoded = decoded._replace(samples=np.nan_to_num(decoded.samples, nan=0.0, posinf=0.0, neginf=0.0))
    return decoded


def self_concatenate(samples: np.ndarray, *, min_samples: int) -> tuple[np.ndarray, int]:
    """Repeat a clip end to end, in whole copies, until it has at least ``min_samples`` samples.

    Args:
        samples: mono signal, shape ``(n,)``, ``n >= 1``.
        min_samples: target length in samples (``min_duration * sample_rate``).

    Returns:
        ``(signal, repeats)``: signal shape ``(n * repeats,)`` with ``repeats = ceil(min_samples / n)``
        (1 when the clip is already long enough, in which case ``samples`` is returned as is).
    """
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {samples.shape}")
    repeats = max(1, math.ceil(min_samples / samples.size))
    return (np.tile(samples, repeats) if repeats > 1 else samples), repeats
