"""The pure featurizer core against librosa, closed forms and hand-computed cases."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import SR, noise, tone

from soundception.featurize.audio import self_concatenate
from soundception.featurize.clip import tail_percentile, to_uint8
from soundception.featurize.image import MultiscaleImage, multiscale_image, resize_frequency
from soundception.featurize.spectrogram import frame_count, frames_at, magnitude, to_decibels
from soundception.shared.config import FeaturizerConfig
from soundception.shared.schema import freq_coordinate, time_coordinate

CONFIG = FeaturizerConfig()


@pytest.mark.parametrize("n_fft, hop", [(128, 32), (512, 128), (2048, 512), (512, 110)])
def test_log_power_matches_librosa(n_fft, hop):
    signal = noise(1.3, seed=1) + tone(3000.0, 1.3)
    n = frame_count(signal.size, hop_length=hop)
    ours = to_decibels(magnitude(frames_at(signal, np.arange(n), n_fft=n_fft, hop_length=hop)))  # as the featurizer
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
    from soundception.featurize.spectrogram import frame_range

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
    assert (tail_percentile(np.arange(101.0), 10.0), tail_percentile(np.arange(101.0), 90.0)) == (10.0, 90.0)


def test_image_is_uint8_and_a_loud_sound_spans_the_range():
    image = multiscale_image(noise(4.0, seed=6, amplitude=0.005) + tone(4000.0, 4.0, amplitude=0.5), CONFIG)
    assert image.dtype == np.uint8
    for channel in image:
        assert channel.min() == 0 and channel.max() == 255


def test_background_alone_stays_dim_and_a_quiet_recording_gets_the_loud_ones_image():
    """Noise with nothing in it is not stretched over 0..255 (the ceiling stays at least 20 dB
    over the floor), and the same sound 40 dB quieter gives the same image (the bounds follow
    the recording's own background and loud tail, not absolute levels)."""
    background = noise(6.0, seed=7)
    image = multiscale_image(background, CONFIG)
    assert (image == 0).mean() > 0.7 and image.mean() < 10 and image.max() < 128
    scene = background + tone(3000.0, 6.0, amplitude=0.3)
    loud, quiet = multiscale_image(scene, CONFIG), multiscale_image(scene * np.float32(0.01), CONFIG)
    assert np.abs(loud.astype(int) - quiet).max() <= 1


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
    import soundception.featurize.image as image_module

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


def test_tail_percentiles_and_medians_equal_numpy():
    """The sort-based percentiles and row medians give numpy's values exactly (ties, odd and even counts)."""
    from soundception.featurize.clip import column_medians

    rng = np.random.default_rng(9)
    for trial in range(200):
        values = (rng.standard_normal((int(rng.integers(1, 400)), int(rng.integers(1, 30)))) * 20 - 40).astype(np.float32)
        if trial % 2:
            values = np.round(values)
        percentiles = (float(rng.uniform(0, 5)), float(rng.uniform(95, 100))) if trial % 5 else (0.0, 100.0)
        assert tuple(tail_percentile(values, q) for q in percentiles) == tuple(np.percentile(values, percentiles))
        assert np.array_equal(column_medians(values), np.median(values, axis=0))


def test_tail_percentiles_equal_numpy_on_large_arrays():
    """Past ``SELECT_MIN`` values the percentiles are read from the tails alone (a threshold from
    an evenly spaced sample, checked by count); they still equal ``np.percentile`` exactly, on
    noise, ties, sorted values, and values laid out so the sample misleads the threshold (then
    the whole array is sorted)."""
    from soundception.featurize.clip import SELECT_MIN, SELECT_SAMPLE, order_statistics

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
            assert tuple(tail_percentile(values, q) for q in percentiles) == tuple(np.percentile(values, percentiles)), name
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


def test_clip_bounds_by_hand_and_holes_under_the_median_do_not_move_them():
    """Values -60..0 dB evenly spaced (1,000, shuffled into 100 columns x 10 rows): the background
    (median) is -30, the floor 6 dB over it, the ceiling the 99.9th percentile. Punching holes
    into the quietest 30 % (as a lossy codec zeroes what it judges inaudible) moves neither bound;
    the 1st percentile, the floor before schema 4, falls from -59.4 to -100 dB."""
    from soundception.featurize.clip import channel_bounds

    rng = np.random.default_rng(2)
    ordered = (-60 + 60 * np.arange(1000) / 999).astype(np.float32)
    values = rng.permutation(ordered).reshape(100, 10)
    ceiling = -60 + 60 * 998.001 / 999  # rank 0.999 * 999 = 998.001, interpolated
    expected = (-24.0, ceiling)
    np.testing.assert_allclose(channel_bounds(values, CONFIG), expected, atol=1e-4)
    holed = np.where(values < ordered[300], np.float32(-100), values)
    np.testing.assert_allclose(channel_bounds(holed, CONFIG), expected, atol=1e-4)
    assert np.percentile(values, 1) == pytest.approx(-59.4, abs=0.01) and np.percentile(holed, 1) == -100
    # a recording of background alone (a 10 dB spread): the ceiling is lifted to 20 dB over the floor
    quiet = (ordered / 6).reshape(100, 10)  # -10..0 dB: median -5, floor +1
    np.testing.assert_allclose(channel_bounds(quiet, CONFIG), (1.0, 21.0), atol=1e-4)
    # a background of digital silence (-100 dB, 90 %): the floor rises to 60 dB under the ceiling
    silence = np.concatenate([np.full(9000, -100, np.float32), ordered / 3]).reshape(1000, 10)
    top = np.percentile(ordered / 3, 100 - 0.1 * 10)  # the top 0.1 % of all = the top 1 % of the sounding 10 %
    np.testing.assert_allclose(channel_bounds(silence, CONFIG), (top - 60, top), atol=1e-3)


def test_an_empty_band_is_left_out_of_the_clip_bounds():
    from soundception.featurize.clip import channel_bounds, empty_rows

    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 3.0, size=(200, 30)).astype(np.float32)
    values[:, :4] = -100 + rng.normal(0, 1, size=(200, 4))  # a codec's empty top band (row 0 is the top)
    values[:, 4] -= 30  # its roll-off: quiet and next to the empty band, but recorded
    values[:, 20] -= 30  # a quiet band elsewhere: recorded, kept
    values[:100, 25] -= 60  # a row silent half the time: its median is still its level, kept
    expected_empty = [True] * 4 + [False] * 26
    assert empty_rows(values, empty_band_db=50.0).tolist() == expected_empty
    kept = values[:, 4:]
    background, ceiling = np.percentile(kept, [50, 99.9])
    np.testing.assert_allclose(channel_bounds(values, CONFIG), (background + 6, max(ceiling, background + 26)),
                               atol=1e-4)
