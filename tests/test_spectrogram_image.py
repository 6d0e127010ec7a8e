"""The pure featurizer core against librosa, closed forms and hand-computed cases."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import SR, noise, tone

from featurize.audio import self_concatenate
from featurize.clip import clip_bounds, to_uint8
from featurize.image import MultiscaleImage, multiscale_image, resize_frequency
from featurize.spectrogram import frame_count, frames_at, log_power
from shared.config import FeaturizerConfig
from shared.schema import freq_coordinate, time_coordinate

CONFIG = FeaturizerConfig()


@pytest.mark.parametrize("n_fft, hop", [(128, 32), (512, 128), (2048, 512), (512, 110)])
def test_log_power_matches_librosa(n_fft, hop):
    signal = noise(1.3, seed=1) + tone(3000.0, 1.3)
    n = frame_count(signal.size, hop_length=hop)
    ours = log_power(frames_at(signal, np.arange(n), n_fft=n_fft, hop_length=hop))
    reference = librosa.power_to_db(
        np.abs(librosa.stft(signal, n_fft=n_fft, hop_length=hop, center=True, pad_mode="constant")) ** 2,
        ref=1.0, amin=1e-10, top_db=None,
    ).T
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(reference).max())


def test_frames_in_blocks_equal_frames_at_once():
    signal = noise(2.0, seed=2)
    n = frame_count(signal.size, hop_length=110)
    whole = frames_at(signal, np.arange(n), n_fft=2048, hop_length=110)
    parts = np.concatenate([frames_at(signal, np.arange(a, min(a + 37, n)), n_fft=2048, hop_length=110)
                            for a in range(0, n, 37)])
    assert np.array_equal(whole, parts)


def test_frame_range_equals_gathered_frames_at_the_ends_and_inside():
    """The strided frames (zero-padded near the ends) are the gathered, zero-padded frames."""
    from featurize.spectrogram import frame_range

    rng = np.random.default_rng(3)
    for size in (50, 127, 300, 5000):
        signal = rng.standard_normal(size).astype(np.float32)
        for n_fft, hop in ((128, 32), (512, 128), (2048, 512), (2048, 110)):
            n = frame_count(size, hop_length=hop)
            ranges = [(0, n), (0, 1), (n - 1, n), (n // 3, n // 2 + 1)] + [
                tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(5)]
            for start, stop in ranges:
                expected = frames_at(signal, np.arange(start, stop), n_fft=n_fft, hop_length=hop)
                assert np.array_equal(frame_range(signal, start, stop, n_fft=n_fft, hop_length=hop), expected)


def test_width_formula():
    assert CONFIG.width_for(15.0) == 2990
    assert CONFIG.width_for(60.0) == 11960
    assert CONFIG.width_for(1.5) == 299
    assert FeaturizerConfig(image_height=100, image_seconds=2.0).width_for(10.0) == 500


def test_self_concatenation_whole_copies():
    clip = np.arange(7, dtype=np.float32)
    out, repeats = self_concatenate(clip, min_samples=20)
    assert repeats == 3 and out.shape == (21,)
    assert np.array_equal(out, np.concatenate([clip, clip, clip]))
    same, once = self_concatenate(clip, min_samples=5)
    assert once == 1 and same is clip


def test_short_clip_becomes_at_least_min_duration_image():
    image = multiscale_image(self_concatenate(tone(2000.0, 25.0), min_samples=60 * SR)[0], CONFIG)
    # 25 s -> 3 copies = 75 s -> 299 / 1.5 * 75 px
    assert image.shape == (3, 299, round(299 / 1.5 * 75))


def test_pure_tone_lands_on_its_frequency_row_in_every_channel():
    frequencies = freq_coordinate(CONFIG)
    row_spacing = frequencies[0] - frequencies[1]
    for f in (5512.5, 2756.25, 8268.75):  # centres of bins of the 128-sample window
        image = multiscale_image(tone(f, 6.0) + noise(6.0, seed=3, amplitude=1e-3), CONFIG)
        for channel in range(3):
            profile = image[channel].astype(np.float64).mean(axis=1)
            rows = np.flatnonzero(profile == profile.max())
            assert abs(frequencies[rows].mean() - f) <= 0.5 * row_spacing + 1e-3, (channel, f, frequencies[rows])


def test_click_lands_on_its_time_column():
    signal = noise(10.0, seed=4, amplitude=1e-3)
    for t in (2.0, 4.321, 7.5):
        signal[int(round(t * SR))] = 1.0
    image = multiscale_image(signal, CONFIG)
    times = time_coordinate(image.shape[2], CONFIG)
    for t in (2.0, 4.321, 7.5):
        window = (times > t - 0.5) & (times < t + 0.5)
        for channel in range(3):
            # the broadband click is loudest in the upper half of the spectrum
            energy = image[channel, :150][:, window].astype(np.float64).sum(axis=0)
            assert abs(times[window][energy.argmax()] - t) <= 0.010, (channel, t)


def test_to_uint8_clips_outliers_and_uses_full_range():
    values = np.array([-500.0, -60.0, -30.0, 0.0, 400.0], dtype=np.float32)
    out = to_uint8(values, low=-60.0, high=0.0)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]
    assert clip_bounds(np.arange(101.0), percentiles=(10.0, 90.0)) == (10.0, 90.0)


def test_image_is_uint8_and_spans_the_range():
    image = multiscale_image(noise(4.0, seed=6) + tone(4000.0, 4.0, amplitude=0.2), CONFIG)
    assert image.dtype == np.uint8
    for channel in image:
        assert channel.min() == 0 and channel.max() == 255


def test_silent_signal_gives_a_zero_image_and_no_nan():
    planned = MultiscaleImage.plan(np.zeros(SR * 2, np.float32), CONFIG)
    assert planned.silent
    image = planned.block(0, planned.width)
    assert np.all(np.isfinite(planned.bounds)) and not image.any()


def test_blocks_equal_the_whole_image():
    planned = MultiscaleImage.plan(noise(12.0, seed=7) + tone(1500.0, 12.0, amplitude=0.1), CONFIG)
    whole = planned.block(0, planned.width)
    pieces = np.concatenate([block for _, block in planned.blocks(500)], axis=2)
    assert np.array_equal(whole, pieces)


@pytest.mark.parametrize("resize", ["max", "area", "bilinear"])
def test_one_pass_equals_two_passes(monkeypatch, resize):
    """An image computed once and kept gives the bytes of the two-pass path long recordings take.

    ``area`` averages bins with a matrix product, whose BLAS kernels round differently for another
    number of rows (sampled columns versus a block): there the bounds agree to float precision and
    pixels to one grey level."""
    import featurize.image as image_module

    config = FeaturizerConfig(time_resize=resize, frequency_resize=resize, min_duration=0.0, percentile_columns=300)
    signal = noise(9.0, seed=8) + tone(3000.0, 9.0, amplitude=0.3) * (np.arange(9 * SR) % SR < SR // 3)
    kept = MultiscaleImage.plan(signal, config)
    monkeypatch.setattr(image_module, "ONE_PASS_BYTES", 0)
    recomputed = MultiscaleImage.plan(signal, config)
    assert kept.values is not None and recomputed.values is None
    once, twice = kept.block(0, kept.width), recomputed.block(0, recomputed.width)
    if resize == "area":
        np.testing.assert_allclose(kept.bounds, recomputed.bounds, rtol=1e-6)
        assert np.abs(once.astype(int) - twice).max() <= 1
    else:
        assert kept.bounds == recomputed.bounds and np.array_equal(once, twice)


def test_clip_bounds_and_medians_equal_numpy():
    """The sort-based percentiles and row medians give numpy's values exactly (ties, odd and even counts)."""
    from featurize.clip import column_medians

    rng = np.random.default_rng(9)
    for trial in range(200):
        values = (rng.standard_normal((int(rng.integers(1, 400)), int(rng.integers(1, 30)))) * 20 - 40).astype(np.float32)
        if trial % 2:
            values = np.round(values)
        percentiles = (float(rng.uniform(0, 5)), float(rng.uniform(95, 100))) if trial % 5 else (0.0, 100.0)
        assert clip_bounds(values, percentiles=percentiles) == tuple(np.percentile(values, percentiles))
        assert np.array_equal(column_medians(values), np.median(values, axis=0))


def test_clip_bounds_from_the_tails_equal_numpy_on_large_arrays():
    """Past ``SELECT_MIN`` values the percentiles are read from the tails alone (a threshold from
    an evenly spaced sample, checked by count); they still equal ``np.percentile`` exactly, on
    noise, ties, sorted values, and values laid out so the sample misleads the threshold (then
    the whole array is sorted)."""
    from featurize.clip import SELECT_MIN, SELECT_SAMPLE, order_statistics

    rng = np.random.default_rng(10)
    n = 4 * SELECT_MIN + 7
    noise = (rng.standard_normal(n) * 20 - 40).astype(np.float32)
    misleading = np.zeros(n, dtype=np.float32)
    misleading[:: n // SELECT_SAMPLE] = -1000.0  # exactly the sampled positions hold the smallest values
    cases = {"noise": noise, "ties": np.round(noise / 5), "constant": np.full(n, -7.5, np.float32),
             "ascending": np.sort(noise), "descending": np.sort(noise)[::-1].copy(), "misleading": misleading,
             "misleading high": -misleading, "image": noise[: n // 7 * 7].reshape(-1, 7)[:, :5]}
    for name, values in cases.items():
        for percentiles in ((1.0, 99.9), (0.0, 100.0), (5.0, 95.0), (0.013, 99.987), (49.0, 51.0)):
            assert clip_bounds(values, percentiles=percentiles) == tuple(np.percentile(values, percentiles)), name
    ordered = np.sort(noise)
    sample = np.sort(noise[:: n // SELECT_SAMPLE])
    for below in (0, 1, 3, 650, n // 2, n - 651, n - 2, n - 1):
        above = min(below + 1, n - 1)
        assert order_statistics(noise, below, above, sample) == (ordered[below], ordered[above])


def test_resize_frequency_hand_computed():
    spectrum = np.array([[0.0, 10.0, 20.0]], dtype=np.float32)  # bins at 0, Nyquist/2, Nyquist
    for method in ("max", "area", "bilinear"):  # fewer bins than rows: every method interpolates
        out = resize_frequency(spectrum, height=5, method=method)  # rows: Nyquist, 3/4, 1/2, 1/4, 0
        np.testing.assert_allclose(out, [[20.0, 15.0, 10.0, 5.0, 0.0]])
    # 9 bins -> 3 rows (0, Nyquist/2, Nyquist); each row's band is +-2 bins around it
    spectrum = np.array([[1, 5, 2, 0, 3, 0, 0, 7, 4]], dtype=np.float32)
    # max: bins centred in [-2, 2) = {0, 1}, [2, 6) = {2..5}, [6, 10) = {6, 7, 8}; highest row first
    np.testing.assert_allclose(resize_frequency(spectrum, height=3, method="max"), [[7, 3, 5]])
    # area: bands [-0.5, 2], [2, 6], [6, 8.5] bins; the half-covered bins 2 and 6 weigh 1/2
    np.testing.assert_allclose(resize_frequency(spectrum, height=3, method="area"),
                               [[(0.5 * 0 + 7 + 4) / 2.5, (0.5 * 2 + 0 + 3 + 0 + 0.5 * 0) / 4, (1 + 5 + 0.5 * 2) / 2.5]],
                               rtol=1e-6)
    np.testing.assert_allclose(resize_frequency(spectrum, height=3, method="bilinear"), [[4, 3, 1]])


def test_bad_signals_raise_clear_errors():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        MultiscaleImage.plan(np.zeros((2, 100), np.float32), CONFIG)
    with pytest.raises(ValueError, match="NaN"):
        MultiscaleImage.plan(np.full(1000, np.nan, np.float32), CONFIG)


def _image(signal, config):
    from featurize.image import MultiscaleImage

    plan = MultiscaleImage.plan(signal, config)
    return np.concatenate([block for _, block in plan.blocks(4096)], axis=-1).astype(np.float64)


def _codec_variants(signal, tmp_path):
    import soundfile
    import soxr

    soundfile.write(tmp_path / "x.mp3", signal, 22050)
    mp3, _ = soundfile.read(tmp_path / "x.mp3", dtype="float32")
    via_16k = soxr.resample(soxr.resample(signal, 22050, 16000), 16000, 22050).astype(np.float32)
    return {"mp3": mp3[: signal.size], "recorded at 16 kHz": via_16k[: signal.size]}


@pytest.mark.parametrize("variant", ["mp3", "recorded at 16 kHz"])
def test_a_lossy_or_band_limited_copy_keeps_the_wavs_contrast(tmp_path, variant):
    # broadband noise with a 3 kHz call: every band of the WAV sounds; the MP3 cuts its top band,
    # the 16 kHz recording has nothing above 8 kHz. Below 5 kHz the three hold the same sound.
    rng = np.random.default_rng(0)
    t = np.arange(22050 * 6) / 22050
    call = np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.5)
    signal = (0.3 * call + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    config = FeaturizerConfig(min_duration=0.0)
    reference = _image(signal, config)
    copy = _codec_variants(signal, tmp_path)[variant]
    freq = np.linspace(11025, 0, config.image_height)
    below = freq < 5000
    difference = np.abs(_image(copy, config) - reference)[:, below].mean()
    assert difference < {"mp3": 18, "recorded at 16 kHz": 5}[variant], difference  # grey levels
    old = FeaturizerConfig(min_duration=0.0, empty_band_db=float("inf"))  # every row in the percentiles
    assert np.abs(_image(copy, old) - _image(signal, old))[:, below].mean() > 80


def test_an_empty_band_and_its_roll_off_are_left_out_of_the_clip_bounds():
    from featurize.clip import channel_bounds, empty_rows

    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 3.0, size=(200, 30)).astype(np.float32)
    values[:, :4] = -100 + rng.normal(0, 1, size=(200, 4))  # a codec's empty top band (row 0 is the top)
    values[:, 4] -= 30  # its roll-off: quiet and next to the empty band
    values[:, 20] -= 30  # a quiet band elsewhere: recorded, kept
    values[:100, 25] -= 60  # a row silent half the time: its median is still its level, kept
    expected_empty = [True] * 5 + [False] * 25
    assert empty_rows(values, empty_band_db=50.0).tolist() == expected_empty
    config = FeaturizerConfig()
    np.testing.assert_allclose(channel_bounds(values, config), np.percentile(values[:, 5:], config.clip_percentiles),
                               rtol=1e-5)
