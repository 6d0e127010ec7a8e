"""Inputs that are not clean local audio: truncated files of every format, formats that need
ffmpeg, malformed label CSVs, and audio on object storage (a real moto S3 server on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import SR, noise, tone, write

from featurize.audio import DecodeError, decode

# format keyword arguments for soundfile.write, by file extension; opus is always 48 kHz
CODECS = {
    "wav": {"subtype": "PCM_16"},
    "flac": {},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "opus": {"format": "OGG", "subtype": "OPUS"},
    "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
    "aiff": {"format": "AIFF"},
}


def recording(tmp_path, extension: str, seconds: float = 10.0):
    rate = 48000 if extension == "opus" else SR
    signal = tone(1000.0, seconds, sample_rate=rate) + noise(seconds, sample_rate=rate)
    return write(tmp_path / f"a.{extension}", signal, rate, **CODECS[extension])


@pytest.mark.parametrize("extension", list(CODECS))
def test_cut_at_half_its_bytes_warns_and_keeps_the_first_half(tmp_path, extension):
    path = recording(tmp_path, extension)
    whole = decode(path, sample_rate=SR)
    assert whole.warning == "" and whole.duration == pytest.approx(10.0, abs=0.01)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cut = decode(path, sample_rate=SR)
    assert cut.warning.startswith(f"truncated or corrupt after {cut.duration:.1f} s")
    assert cut.warning.endswith("kept that part") and "\n" not in cut.warning
    # lossy codecs spend their bytes unevenly over time: "about half" is 35-55 % of 10 s
    assert 3.5 < cut.duration < 5.5
    assert cut.samples.size == pytest.approx(cut.duration * SR, abs=SR * 0.05)
    kept = min(cut.samples.size, whole.samples.size) - SR // 10  # the codec's last block may differ
    np.testing.assert_allclose(cut.samples[:kept], whole.samples[:kept], atol=1e-4)


def test_a_cut_wav_keeps_exactly_the_bytes_present(tmp_path):
    path = write(tmp_path / "cut.wav", tone(1000.0, 2.0), subtype="PCM_16")
    header = 44  # soundfile's PCM WAV header; 2 bytes a frame
    path.write_bytes(path.read_bytes()[: header + 2 * 30_000])
    cut = decode(path, sample_rate=SR)
    assert cut.samples.size == 30_000
    assert cut.warning == f"truncated or corrupt after {30_000 / SR:.1f} s of the 2.0 s its header promised; kept that part"


def test_an_mp3_without_a_frame_count_promises_nothing(tmp_path):
    """Without its Xing/Info header an intact MP3's length is an estimate: no truncation warning."""
    signal = tone(1000.0, 3.0) + noise(3.0)
    path = write(tmp_path / "a.mp3", np.stack([signal, signal[::-1]], axis=1), **CODECS["mp3"])
    data = bytearray(path.read_bytes())
    at = data.find(b"Xing")
    assert 0 <= at < 64
    data[at : at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    assert decode(path, sample_rate=SR).warning == ""
    estimate = soundfile.info(str(path)).frames  # libsndfile now estimates from the bytes: too many
    assert estimate > 1.1 * decode(path, sample_rate=SR).samples.size


@pytest.mark.parametrize("extension", ["ogg", "opus"])
def test_an_ogg_cut_between_pages_warns(tmp_path, extension):
    """Cut exactly where a page starts: every page is whole, but none carries end-of-stream."""
    path = recording(tmp_path, extension)
    data = path.read_bytes()
    page = data.find(b"OggS", len(data) // 2)
    assert data[page + 5] & 0x04 == 0  # not the last page
    path.write_bytes(data[:page])
    cut = decode(path, sample_rate=SR)
    assert "no end-of-stream page" in cut.warning and 3.5 < cut.duration < 6.5


FFMPEG = shutil.which("ffmpeg")


def m4a_file(path):
    """A real AAC-in-MP4 file of a 1 kHz tone when ffmpeg is here to make one; else just the
    start of an MP4 container (enough for the hint: neither decoder gets further)."""
    if FFMPEG:
        wav = write(path.with_suffix(".wav"), tone(1000.0, 2.0))
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    else:
        path.write_bytes(b"\0\0\0\x20ftypM4A \0\0\x02\0M4A mp42isom\0\0\0\0" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize("extension", [".m4a", ".aac", ".wma"])
def test_formats_beyond_libsndfile_decode_with_ffmpeg_or_say_to_install_it(tmp_path, extension):
    if FFMPEG and extension == ".m4a":  # ffmpeg is installed: a real m4a decodes
        decoded = decode(m4a_file(tmp_path / "a.m4a"), sample_rate=SR)
        assert decoded.duration == pytest.approx(2.0, abs=0.1) and decoded.warning == ""
        spectrum = np.abs(np.fft.rfft(decoded.samples))
        assert np.fft.rfftfreq(decoded.samples.size, 1 / SR)[spectrum.argmax()] == pytest.approx(1000.0, abs=2)
        return
    if FFMPEG:
        pytest.skip("ffmpeg is installed: its hint is tested with ffmpeg off the PATH")
    path = m4a_file(tmp_path / f"a{extension}")
    with pytest.raises(DecodeError) as error:
        decode(path, sample_rate=SR)
    message = str(error.value)
    assert message.startswith(f"cannot decode a{extension}: this format needs ffmpeg (apt install ffmpeg")
    assert "soundfile: " in message and "\n" not in message


def test_ffmpeg_hint_when_ffmpeg_is_off_the_path(tmp_path):
    """Runs in a subprocess whose PATH is empty, so this holds with or without ffmpeg installed."""
    path = m4a_file(tmp_path / "a.m4a")
    script = ("from featurize.audio import decode, DecodeError\n"
              f"try: decode({str(path)!r}, sample_rate={SR})\n"
              "except DecodeError as error: print(error)\n")
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PATH": "", "PYTHONPATH": str(repository)}
    result = subprocess.run([sys.executable, "-c", script], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.startswith("cannot decode a.m4a: this format needs ffmpeg (apt install ffmpeg / conda install")


def test_a_broken_file_of_a_libsndfile_format_gets_no_ffmpeg_hint(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_text("field notes, not audio\n" * 40)
    with pytest.raises(DecodeError, match="^cannot decode audio: soundfile: .*; audioread: ") as error:
        decode(path, sample_rate=SR)
    assert "ffmpeg" not in str(error.value)
