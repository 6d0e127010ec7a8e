"""Decoding real codecs, resampling, channel mixing, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SR, noise, tone, write

from soundception.featurize.audio import DecodeError, decode


def peak_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("extension,kwargs,rate", [
    (".wav", {}, 44100), (".flac", {}, 44100), (".ogg", {"format": "OGG", "subtype": "VORBIS"}, 44100),
    (".mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}, 44100),
    (".opus", {"format": "OGG", "subtype": "OPUS"}, 48000), (".aiff", {"format": "AIFF"}, 44100),
    (".WAV", {"subtype": "PCM_24"}, 48000), (".wav", {"subtype": "ULAW"}, 8000),
])
def test_codecs_decode_to_the_same_tone(tmp_path, extension, kwargs, rate):
    path = write(tmp_path / f"a{extension}", tone(1234.0, 2.0, sample_rate=rate), rate, **kwargs)
    samples, duration, _ = decode(path, sample_rate=SR)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size / SR - 2.0) < 0.06  # lossy codecs pad a few ms
    assert abs(duration - 2.0) < 0.06
    assert abs(peak_frequency(samples, SR) - 1234.0) < 2.0


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 96000])
def test_odd_sample_rates_resample_to_22050(tmp_path, rate):
    path = write(tmp_path / f"r{rate}.wav", tone(1000.0, 1.5, sample_rate=rate), rate)
    samples, duration, _ = decode(path, sample_rate=SR)
    assert samples.size == pytest.approx(1.5 * SR, abs=2)
    assert duration == pytest.approx(1.5)
    assert abs(peak_frequency(samples, SR) - 1000.0) < 2.0
    assert np.abs(samples).max() == pytest.approx(0.5, abs=0.02)


def test_multichannel_is_averaged_to_mono(tmp_path):
    left, right = tone(500.0, 1.0), tone(3000.0, 1.0)
    four = np.stack([left, right, np.zeros_like(left), np.zeros_like(left)], axis=1)
    samples, _, _ = decode(write(tmp_path / "quad.wav", four, subtype="FLOAT"), sample_rate=SR)
    np.testing.assert_allclose(samples, (left + right) / 4, atol=1e-6)


def test_long_file_decodes_in_blocks_exactly(tmp_path):
    signal = tone(440.0, 30.0, sample_rate=44100)  # more than one 2**18-frame block
    samples, _, _ = decode(write(tmp_path / "long.wav", signal, 44100, subtype="FLOAT"), sample_rate=44100)
    np.testing.assert_array_equal(samples, signal)


@pytest.mark.parametrize("subtype,container", [("PCM_16", "WAV"), ("PCM_U8", "WAV"), ("PCM_S8", "AIFF"),
                                               ("PCM_16", "FLAC")])
def test_integer_samples_decode_to_libsndfiles_floats(tmp_path, subtype, container):
    """Samples of 16 bits or fewer are read as int16 and scaled here: exactly libsndfile's floats."""
    import soundfile

    stereo = np.stack([noise(3.0, seed=3, sample_rate=SR), tone(700.0, 3.0)], axis=1).clip(-1, 1)
    path = write(tmp_path / f"int.{container.lower()}", stereo, SR, subtype=subtype, format=container)
    samples, _, _ = decode(path, sample_rate=SR)  # same rate: no resampling, only the channel mean
    floats = soundfile.read(str(path), dtype="float32")[0]
    np.testing.assert_array_equal(samples, floats.mean(axis=1, dtype=np.float32))


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        decode(path, sample_rate=SR)


def test_non_audio_is_a_clear_one_line_error(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("these are field notes, not audio\n" * 20)
    with pytest.raises(DecodeError, match="cannot decode audio") as error:
        decode(path, sample_rate=SR)
    assert "\n" not in str(error.value)


def test_zero_samples_is_a_clear_error(tmp_path):
    path = write(tmp_path / "nothing.wav", np.zeros(0, np.float32))
    with pytest.raises(DecodeError, match="no audio samples"):
        decode(path, sample_rate=SR)


def test_truncated_wav_keeps_what_is_there(tmp_path):
    path = write(tmp_path / "cut.wav", tone(1000.0, 2.0), subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 2 * SR])  # header claims 2 s, 1 s of data remains
    samples, _, _ = decode(path, sample_rate=SR)
    assert samples.size == pytest.approx(SR, abs=1)


def test_truncated_flac_keeps_the_clean_part_with_a_warning(tmp_path):
    path = write(tmp_path / "cut.flac", tone(1000.0, 10.0) + noise(10.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    samples, _, warning = decode(path, sample_rate=SR)
    assert 2 * SR < samples.size < 6 * SR and "truncated or corrupt after" in warning
    assert abs(peak_frequency(samples, SR) - 1000.0) < 2.0


def test_flac_broken_from_the_start_is_a_clear_error(tmp_path):
    path = write(tmp_path / "cut.flac", tone(1000.0, 3.0) + noise(3.0))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DecodeError, match="lost sync"):
        decode(path, sample_rate=SR)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="not a file"):
        decode(tmp_path / "nope.wav", sample_rate=SR)

