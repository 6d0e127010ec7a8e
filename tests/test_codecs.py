"""The same sound gives the same image whatever codec carried it: generated calls over noise,
written as WAV and encoded as MP3 (64 kbps CBR, libsndfile's default VBR), Ogg Vorbis and Opus,
each decoded by the featurizer's own decoder and compared pixel by pixel with the WAV's image."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import soxr

from soundception.featurize.audio import decode
from soundception.featurize.image import multiscale_image
from soundception.featurize.synthetic import render_recording, species_table
from soundception.shared.config import FeaturizerConfig

RATE = 44100  # as field recorders and archives write it; the featurizer resamples to 22,050 Hz
SECONDS = 8.0
CONFIG = FeaturizerConfig(min_duration=0.0)
MP3_64_KBPS = 1 - (64 - 32) / (320 - 32)  # libsndfile maps compression level 0..1 onto 320..32 kbps (CBR)

# name -> (soundfile format, subtype, extra options, sample rate)
ENCODINGS = {
    "mp3 64 kbps CBR": ("MP3", None, {"compression_level": MP3_64_KBPS, "bitrate_mode": "CONSTANT"}, RATE),
    "mp3 default VBR": ("MP3", None, {}, RATE),
    "ogg vorbis default": ("OGG", "VORBIS", {}, RATE),
    "opus default": ("OGG", "OPUS", {}, 48000),
}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Calls of three generated species over pink or white noise (seeded), as a 16-bit WAV."""
    rng = np.random.default_rng(4)
    main, *background = species_table(3)
    samples, _ = render_recording(duration=SECONDS, main=main, background=background, sample_rate=RATE, rng=rng,
                                  snr_db=20.0)
    folder = tmp_path_factory.mktemp("codecs")
    soundfile.write(folder / "scene.wav", samples, RATE, subtype="PCM_16")
    return folder, samples


def _image_of(path) -> np.ndarray:
    samples = decode(path, sample_rate=CONFIG.sample_rate).samples
    return multiscale_image(samples[: int(SECONDS * CONFIG.sample_rate)], CONFIG).astype(np.int16)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_lossy_copy_gives_the_wavs_image_within_3_grey_levels(scene, encoding):
    folder, samples = scene
    kind, subtype, options, rate = ENCODINGS[encoding]
    path = folder / f"scene-{encoding.replace(' ', '-')}.{'mp3' if kind == 'MP3' else 'ogg'}"
    audio = samples if rate == RATE else soxr.resample(samples, RATE, rate).astype(np.float32)
    soundfile.write(path, audio, rate, format=kind, subtype=subtype, **options)
    kbps = path.stat().st_size * 8 / SECONDS / 1000
    assert kbps < 100, kbps  # a low bitrate indeed (64 kbps CBR: 64-66 with the headers)
    reference, copy = _image_of(folder / "scene.wav"), _image_of(path)
    width = min(reference.shape[2], copy.shape[2])
    difference = np.abs(reference[..., :width] - copy[..., :width]).mean(axis=(1, 2))  # per channel
    assert np.all(difference <= 3.0), difference  # 0.1-0.5 measured; the 1st-percentile floor gave 4-10


def test_audio_recorded_at_16_khz_gets_the_wavs_image_below_8_khz(scene):
    """Nothing above 8 kHz (27 % of the rows empty): the background level, taken without the
    empty band, and so the image of the band that was recorded, stay the WAV's."""
    folder, samples = scene
    narrow = soxr.resample(samples, RATE, 16000).astype(np.float32)
    soundfile.write(folder / "scene-16k.wav", narrow, 16000, subtype="PCM_16")
    reference, copy = _image_of(folder / "scene.wav"), _image_of(folder / "scene-16k.wav")
    width = min(reference.shape[2], copy.shape[2])
    below = np.linspace(11025, 0, CONFIG.image_height) < 7500
    difference = np.abs(reference[:, below, :width] - copy[:, below, :width]).mean(axis=(1, 2))
    assert np.all(difference <= 3.0), difference
    everything = FeaturizerConfig(min_duration=0.0, empty_band_db=float("inf"))  # the empty band kept in
    kept_in = multiscale_image(decode(folder / "scene-16k.wav", sample_rate=22050).samples, everything)
    moved = np.abs(reference[:, below, :width] - kept_in[:, below, :width].astype(np.int16)).mean()
    assert moved > 5 * difference.mean() + 0.2, (moved, difference)  # measured 0.9 against 0.03
