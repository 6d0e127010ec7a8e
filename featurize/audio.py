"""Audio decoding: any common codec -> mono float32 at the target rate, then self-concatenation.

soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3, aiff, ...) is tried first and read in
blocks, mixing to mono and resampling with a streaming soxr resampler as it goes, so memory is
about one copy of the output signal; a signal longer than :data:`DISK_SIGNAL_SECONDS` is written
to a temporary file instead and returned as a read-only array over its memory map
(:mod:`featurize.signal`), so memory no longer grows with a recording's length. An MP3 without a
Xing/Info/VBRI frame count is read through a pipe, where libsndfile has no length estimate to stop
at (:func:`_mp3_stream`). audioread (ffmpeg, gstreamer or the platform's decoder) is the
fallback for anything libsndfile cannot open (m4a/aac, for one); a URL source is decoded from a
local temporary copy.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from soundception.featurize.signal import SignalWriter
from soundception.shared.location import is_url
from soundception.shared.text import one_line, redact

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".m4a", ".aac", ".wma")
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")  # what libsndfile reads
FFMPEG_HINT = "this format needs ffmpeg (apt install ffmpeg / conda install ffmpeg)"
_BLOCK_FRAMES = 1 << 16  # source frames per decode block (what a corrupt block can cost)
# decoded signals longer than this go to a temporary file on disk (featurize.signal); read at call time
DISK_SIGNAL_SECONDS = 600.0


def fingerprint(location: str, storage_options: dict | None = None) -> dict[str, int | str]:
    """What says an audio file changed: ``{"size": bytes, "mtime": str}``, its modification time
    in ns (an object's LastModified, or its ETag where the store keeps no time).

    Raises:
        OSError: the file cannot be reached.
    """
    if not is_url(location):
        stat = Path(location).stat()
        return {"size": stat.st_size, "mtime": str(stat.st_mtime_ns)}
    import fsspec

    filesystem, key = fsspec.core.url_to_fs(location, **(storage_options or {}))
    info = filesystem.info(key)
    changed = info.get("LastModified") or info.get("mtime") or info.get("ETag") or info.get("etag") or ""
    return {"size": int(info.get("size") or 0), "mtime": str(changed)}


HEADER_BYTES = 1 << 16  # what is fetched of a remote file to read its header
LOWEST_BYTE_RATE = 4000  # B/s (32 kbit/s): a compressed file's length is bounded from its size with this


def audio_seconds(location: str, storage_options: dict | None = None) -> float:
    """A recording's length in seconds from its header, without decoding it (0.0 if unreadable).

    Exact for what libsndfile reads (wav, flac, ogg, mp3, aiff) on a local disk. A remote file's
    header is read from its first :data:`HEADER_BYTES`; where that does not give the length (mp3,
    ogg), the length is bounded from above by the file's size at :data:`LOWEST_BYTE_RATE`. (A
    file's size over 88,200 B/s, CD-quality PCM, is 5-10x low for FLAC or MP3: never used.)
    """
    import soundfile

    try:
        if not is_url(location):
            info = soundfile.info(str(location))
            return max(0.0, info.frames / info.samplerate)
        import io

        import fsspec

        filesystem, key = fsspec.core.url_to_fs(location, **(storage_options or {}))
        size = filesystem.size(key)
        try:
            info = soundfile.info(io.BytesIO(filesystem.cat_file(key, start=0, end=HEADER_BYTES)))
            return info.frames / info.samplerate if 0 < info.frames < (1 << 62) else size / LOWEST_BYTE_RATE
        except Exception:
            return size / LOWEST_BYTE_RATE
    except Exception:
        return 0.0


class DecodeError(RuntimeError):
    """A file could not be decoded into audio; the message is one line."""


class Decoded(NamedTuple):
    """A decoded recording: mono float32 ``samples`` ``(n,)`` at the target rate, the source's
    ``duration`` in seconds as decoded, and a one-line ``warning`` ("" when all went well).

    Above :data:`DISK_SIGNAL_SECONDS`, ``samples`` is a read-only array over a temporary file
    (see :mod:`featurize.signal`); it reads like any array."""

    samples: np.ndarray
    duration: float
    warning: str = ""


def _resampler(source_rate: float, target_rate: int):
    import soxr

    if source_rate == target_rate:
        return None
    return soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")


_RETRY_FRAMES = 4096  # after a corrupt block, re-read from its start in steps this small; a pipe reads in these
_MP3_SLACK_FRAMES = 2 * 1152  # two MPEG frames: encoder delay and padding a decoder may count differently
_PCM_WAVE_TAGS = (0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE)  # PCM, float, A-law, mu-law, extensible


def _riff_frames(path: Path) -> int | None:
    """Frames a WAV (RIFF or RF64) header promises: the ``data`` chunk's size / block align."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        tag = block_align = long_size = None
        for _ in range(256):  # chunks before the data: fmt, fact, LIST, ds64, ...
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"data":
                size = long_size if head[:4] == b"RF64" and size == 0xFFFFFFFF else size
                if not size or size == 0xFFFFFFFF or not block_align or tag not in _PCM_WAVE_TAGS:
                    return None  # a streaming writer's placeholder, or a compressed codec
                return size // block_align
            body = handle.read(min(size, 64)) if name in (b"fmt ", b"ds64") else b""
            if name == b"fmt " and len(body) >= 14:
                tag, block_align = int.from_bytes(body[0:2], "little"), int.from_bytes(body[12:14], "little")
            if name == b"ds64" and len(body) >= 16:
                long_size = int.from_bytes(body[8:16], "little")
            handle.seek(size + (size & 1) - len(body), 1)
    return None


def _aiff_frames(path: Path) -> int | None:
    """Frames an AIFF/AIFC header promises (``COMM`` chunk's numSampleFrames)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if head[:4] != b"FORM" or head[8:12] not in (b"AIFF", b"AIFC"):
            return None
        for _ in range(256):
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], int.from_bytes(chunk[4:], "big")
            if name == b"COMM":
                body = handle.read(6)
                return int.from_bytes(body[2:6], "big") if len(body) == 6 else None
            handle.seek(size + (size & 1), 1)
    return None


def _id3v2_end(path: Path) -> int:
    """Where the audio starts: the byte after a leading ID3v2 tag (syncsafe size, optional
    footer), or 0 without one."""
    with open(path, "rb") as handle:
        start = handle.read(10)
    if start[:3] != b"ID3" or len(start) < 10:
        return 0
    size = sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(start[6:10]))
    return 10 + size + (10 if start[5] & 0x10 else 0)


def _mp3_counts_frames(path: Path) -> bool:
    """True when the first MPEG frame carries a Xing/Info (with a frame count) or VBRI header.

    Without one, libsndfile estimates the length from the file size and bitrate: measured on
    intact VBR files, 0 to 28 % above what decodes, so such an estimate promises nothing.
    """
    with open(path, "rb") as handle:
        handle.seek(_id3v2_end(path))
        frame = handle.read(200)
    for tag in (b"Xing", b"Info"):
        at = frame.find(tag)
        if 0 <= at <= 40 and len(frame) >= at + 8:
            return bool(int.from_bytes(frame[at + 4 : at + 8], "big") & 1)  # flag 1: frame count present
    return frame.find(b"VBRI") == 36


def _ogg_ends_cleanly(path: Path) -> bool:
    """True when the file ends with a complete Ogg page that carries the end-of-stream flag.

    A page is at most 65,307 bytes, so the last one lies in the file's tail. Candidates are tried
    from the end, so a stray ``OggS`` inside the last page's payload cannot hide it.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 65_536 - 282))
        tail = handle.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        if len(tail) - at >= 27 and len(tail) - at >= 27 + tail[at + 26]:
            segments = tail[at + 27 : at + 27 + tail[at + 26]]
            if at + 27 + len(segments) + sum(segments) == len(tail):
                return bool(tail[at + 5] & 0x04)
    return False


def _promised_frames(path: Path, audio) -> tuple[int | None, int]:
    """``(frames the header promises, slack)``: fewer decoded frames than ``promise - slack``
    means the file was cut short. ``None`` where the header promises nothing exact.

    libsndfile shrinks a WAV's or AIFF's frame count to the bytes present, so their own headers
    are read here; FLAC's STREAMINFO and an MP3's Xing/Info/VBRI frame count are what
    ``audio.frames`` reports. Measured on intact files written by soundfile: no slack for any
    of them; the MP3 slack allows for decoders that count the encoder delay differently.
    """
    kind = audio.format
    if kind in ("WAV", "WAVEX", "RF64"):
        return _riff_frames(path), 0
    if kind == "AIFF":
        return _aiff_frames(path), 0
    if kind == "FLAC":
        return (audio.frames if audio.frames > 0 else None), 0
    if kind == "MP3" and _mp3_counts_frames(path):
        return audio.frames, _MP3_SLACK_FRAMES
    return None, 0


def _truncation(path: Path, audio, n_source: int) -> str:
    """The warning for a stream that ended cleanly but early ("" when it is whole)."""
    kept = n_source / audio.samplerate
    if audio.format == "OGG":
        if _ogg_ends_cleanly(path):
            return ""
        return f"truncated or corrupt after {kept:.1f} s (the Ogg stream has no end-of-stream page); kept that part"
    promised, slack = _promised_frames(path, audio)
    if promised is None or n_source >= promised - slack:
        return ""
    return (f"truncated or corrupt after {kept:.1f} s of the {promised / audio.samplerate:.1f} s "
            f"its header promised; kept that part")


# Read as int16 and scaled here: exactly libsndfile's own float conversion (x / 32768), which is
# the slow part of its float read (measured: 60 s of 44.1 kHz PCM_16 WAV in 8.5 ms, as int16 in 1.2)
_SHORT_SUBTYPES = frozenset({"PCM_16", "PCM_S8", "PCM_U8"})


def _read_block(audio, frames: int) -> np.ndarray:
    """Up to ``frames`` float32 ``(frames, channels)`` from the current position, as
    ``audio.read(frames, dtype="float32", always_2d=True)`` reads them, but for an MP3 without
    the seek soundfile makes after every read: mpg123 re-enters the stream there without the bit
    reservoir of the frame before, and about 560 samples after each block's end decode wrong
    (measured: errors up to 0.1 on a VBR tone of amplitude 0.5). soundfile has no public read
    that skips the seek, so libsndfile's ``sf_readf_float`` is called on the open handle.
    """
    if audio.format != "MP3":
        if audio.subtype in _SHORT_SUBTYPES:  # integer samples of <= 16 bits: the same floats, 7x faster
            return audio.read(frames, dtype="int16", always_2d=True) * np.float32(1 / 32768)
        return audio.read(frames, dtype="float32", always_2d=True)
    import soundfile

    block = np.empty((frames, audio.channels), dtype=np.float32)
    done = soundfile._snd.sf_readf_float(audio._file, soundfile._ffi.cast("float *", block.ctypes.data), frames)
    if error := soundfile._snd.sf_error(audio._file):
        raise soundfile.LibsndfileError(error)
    return block[: max(done, 0)]


def _soundfile_blocks(audio, state: dict[str, object], step: int = _BLOCK_FRAMES):
    """Yield float32 ``(frames, channels)`` blocks of ``step`` frames; on a corrupt block of
    :data:`_BLOCK_FRAMES`, re-read its clean start (a stream that cannot seek loses that block).

    ``state["frames"]`` counts the frames yielded; ``state["error"]`` is set when the stream
    broke after some audio (re-raised when none decoded).
    """
    while True:
        try:
            block = _read_block(audio, step)
        except Exception as error:  # corrupt or truncated stream: keep what decodes cleanly
            if step == _BLOCK_FRAMES:  # the failed block may start with good audio: retry it finely
                try:
                    audio.seek(state["frames"])
                    step = _RETRY_FRAMES
                    state["error"] = error
                    continue
                except Exception:
                    pass
            state["error"] = state.get("error", error)
            if state["frames"] == 0:
                raise state["error"] from None
            return
        if block.shape[0] == 0:
            return
        state["frames"] += block.shape[0]
        yield block


def _writer(expected_seconds: float, sample_rate: int) -> SignalWriter:
    return SignalWriter(math.ceil(max(expected_seconds, 0.0) * sample_rate) + 64,
                        spill_samples=DISK_SIGNAL_SECONDS * sample_rate)


def _decode_soundfile(path: Path, sample_rate: int) -> Decoded:
    import soundfile

    with soundfile.SoundFile(str(path)) as audio:
        if audio.format != "MP3" or _mp3_counts_frames(path):
            return _read_soundfile(path, audio, sample_rate)
        estimate = audio.frames
    # No frame count: libsndfile stops at mpg123's size/bitrate estimate, which can cut an intact
    # VBR file to under half. Through a pipe there is no size to estimate from: it reads to the end.
    with _mp3_stream(path) as stream:  # a frame count only mpg123 finds still ends it, as in a file
        return _read_soundfile(path, stream, sample_rate, estimate=estimate, step=_RETRY_FRAMES)


def _read_soundfile(path: Path, audio, sample_rate: int, *, estimate: int | None = None,
                    step: int = _BLOCK_FRAMES) -> Decoded:
    """Decode an open ``soundfile.SoundFile`` to the end; ``estimate`` (source frames) sizes the
    output when ``audio.frames`` is unknown."""
    source_rate = audio.samplerate
    if source_rate <= 0:
        raise DecodeError(f"invalid sample rate {source_rate}")
    resampler = _resampler(source_rate, sample_rate)
    collector = _writer((audio.frames if estimate is None else estimate) / source_rate, sample_rate)
    state: dict[str, object] = {"frames": 0}
    for block in _soundfile_blocks(audio, state, step):
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        collector.add(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None:
        collector.add(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    n_source = int(state["frames"])
    if "error" in state:
        warning = (f"truncated or corrupt after {n_source / source_rate:.1f} s "
                   f"({one_line(state['error'])}); kept that part")
    else:
        warning = _truncation(path, audio, n_source)
    return Decoded(collector.result(), n_source / source_rate, warning)


_PIPE_BYTES = 1 << 16  # what a pipe holds on Linux


@contextmanager
def _mp3_stream(path: Path):
    """A ``soundfile.SoundFile`` reading ``path`` from a pipe that a thread fills.

    On a pipe libsndfile hands mpg123 no file size, so an MP3 without a frame count gets no
    length estimate: ``frames`` is 2**63 - 1, it cannot seek, and reads go on until the stream
    ends. mpg123 then reports an error at a frame cut short, where a seekable read ends quietly.
    A leading ID3v2 tag is left out: on a pipe libsndfile cannot skip one over about 100 KB
    (cover art), and says "Format not recognised".
    """
    import soundfile

    read_end, write_end = os.pipe()

    def feed() -> None:
        try:
            with open(path, "rb") as source:
                source.seek(_id3v2_end(path))
                while chunk := source.read(_PIPE_BYTES):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(write_end, view):]
        except OSError:  # BrokenPipeError: the reader stopped early, at a corrupt frame
            pass
        finally:
            os.close(write_end)  # the reader sees the end of the stream

    feeder = threading.Thread(target=feed, name="soundception-mp3-feed", daemon=True)
    feeder.start()
    try:
        with soundfile.SoundFile(read_end, closefd=False) as stream:
            yield stream
    finally:
        os.close(read_end)
        feeder.join()


def _decode_audioread(path: Path, sample_rate: int) -> Decoded:
    import audioread

    with audioread.audio_open(str(path)) as audio:
        channels, source_rate = audio.channels, audio.samplerate
        if channels <= 0 or source_rate <= 0:
            raise DecodeError(f"invalid stream (channels={channels}, rate={source_rate})")
        resampler = _resampler(source_rate, sample_rate)
        collector = _writer(getattr(audio, "duration", 0) or 0, sample_rate)
        n_source, leftover = 0, b""
        for buffer in audio:
            data = leftover + bytes(buffer)
            usable = len(data) - len(data) % (2 * channels)
            data, leftover = data[:usable], data[usable:]
            block = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            block = block.reshape(-1, channels).mean(axis=1, dtype=np.float32)
            n_source += block.shape[0]
            collector.add(resampler.resample_chunk(block) if resampler else block)
        if resampler is not None:
            collector.add(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return Decoded(collector.result(), n_source / source_rate)


def _cannot_decode(name: str, soundfile_error: Exception, audioread_error: Exception) -> str:
    """One line for a file neither decoder read. A format libsndfile does not read (m4a, aac,
    wma, ...) with no audioread backend installed gets the hint to install ffmpeg; a file of a
    format libsndfile reads is broken, whatever audioread says."""
    import audioread

    if isinstance(audioread_error, audioread.NoBackendError) and Path(name).suffix.lower() not in SOUNDFILE_EXTENSIONS:
        return f"cannot decode {name}: {FFMPEG_HINT}; soundfile: {one_line(soundfile_error)}"
    return f"cannot decode audio: soundfile: {one_line(soundfile_error)}; audioread: {one_line(audioread_error)}"


_COPY_BYTES = 1 << 22  # a URL source is copied to a local file in pieces this large


@contextmanager
def local_copy(url: str, storage_options: dict | None = None) -> Iterator[Path]:
    """A local temporary copy of the object at ``url`` (fsspec), deleted on exit.

    Copied in 4 MiB pieces: soundfile reads fsspec file objects too, but the WAV/AIFF/MP3/Ogg
    header checks and audioread's decoders need a real file, and each of libsndfile's small seeks
    and reads on a remote file object is a request. Messages name the URL without credentials.
    """
    import fsspec

    name = redact(url)
    suffix = PurePosixPath(url.split("?")[0]).suffix
    handle, temporary = tempfile.mkstemp(prefix="soundception-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as target:
            try:
                with fsspec.open(url, "rb", **(storage_options or {})) as source:
                    shutil.copyfileobj(source, target, _COPY_BYTES)
            except FileNotFoundError:
                raise DecodeError(f"not a file: {name}") from None
            except DecodeError:
                raise
            except Exception as error:
                raise DecodeError(f"cannot read {name}: {type(error).__name__}: {redact(one_line(error))}") from None
        yield Path(temporary)
    finally:
        os.unlink(temporary)


def decode(source: str | Path, *, sample_rate: int, storage_options: dict | None = None) -> Decoded:
    """Decode an audio file (a local path or an fsspec URL) to mono float32 at ``sample_rate`` Hz.

    Channels are averaged. A stream that breaks or ends before its header's length after some
    audio decoded cleanly (a truncated download, say) keeps that audio and says so in
    ``warning``. Raises :class:`DecodeError` with a one-line reason when neither soundfile nor
    audioread can read the file (for m4a/aac/wma without ffmpeg: the hint to install it), or it
    holds no samples. A URL (``s3://bucket/a.flac``) is read with ``storage_options`` through a
    local temporary copy (see :func:`local_copy`).
    """
    if is_url(str(source)):
        with local_copy(str(source), storage_options) as path:
            return _decode_file(path, sample_rate, PurePosixPath(str(source).split("?")[0]).name)
    path = Path(source)
    if not path.is_file():
        raise DecodeError(f"not a file: {path}")
    return _decode_file(path, sample_rate, path.name)


def _decode_file(path: Path, sample_rate: int, name: str) -> Decoded:
    """:func:`decode` of a local file; ``name`` is the source's name for messages."""
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        decoded = _decode_soundfile(path, sample_rate)
    except Exception as first:  # libsndfile could not read it: try the system decoders
        try:
            decoded = _decode_audioread(path, sample_rate)
        except Exception as second:
            raise DecodeError(_cannot_decode(name, first, second)) from None
    if decoded.samples.size == 0:
        raise DecodeError("no audio samples (0 frames)")
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
