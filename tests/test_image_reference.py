"""The image against things computed independently: position sweeps of short sounds, a pure tone
swept in frequency, and a whole image rebuilt in the test from librosa's STFT."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from conftest import SR, noise, tone

from soundception.featurize.image import MultiscaleImage, channel_columns, multiscale_image
from soundception.shared.config import FeaturizerConfig
from soundception.shared.schema import freq_coordinate, time_coordinate

CONFIG = FeaturizerConfig(min_duration=0.0)
COLUMN = SR * 1.5 / 299  # samples per image column (110.6)
TWO_DB = int(2 * 255 / 60)  # grey levels in 2 dB where the image spans its most, 60 dB (as in _scene)


def _scene(seconds: float = 4.0) -> np.ndarray:
    """Faint noise plus a steady 1 kHz tone that fixes the ceiling (it fills > 0.1 % of pixels), about
    50 dB over the noise: inside the 60 dB the image spans at most, as in a recording."""
    return noise(seconds, seed=11, amplitude=1e-3) + tone(1000.3, seconds, amplitude=0.05)


def _tone_burst(at: int) -> np.ndarray:
    signal = _scene()
    n = int(0.003 * SR)  # 3 ms at 5 kHz
    signal[at : at + n] += (0.1 * np.sin(2 * np.pi * 5000 * np.arange(n) / SR) * np.hanning(n)).astype(np.float32)
    return signal


def _click(at: int) -> np.ndarray:
    signal = _scene()
    signal[at : at + 8] += 0.1  # 8 samples
    return signal


@pytest.mark.parametrize("make", [_tone_burst, _click], ids=["3ms-tone-burst", "8-sample-click"])
def test_short_sound_brightness_does_not_depend_on_where_it_falls(make):
    """Slide the sound across one column period in 10 steps: its peak grey level per channel
    moves by at most 2 dB (with one shared 110-sample hop a 3 ms note in the 128-point channel lost up to 18 dB)."""
    base = 2 * SR
    peaks = []
    for k in range(10):
        at = base + int(round(k * COLUMN / 10))
        image = multiscale_image(make(at), CONFIG)
        column = int(at / COLUMN)
        peaks.append(image[:, :250, column - 10 : column + 10].reshape(3, -1).max(axis=1))  # rows above 1 kHz
    peaks = np.array(peaks, dtype=int)
    spread = peaks.max(axis=0) - peaks.min(axis=0)
    assert np.all(spread <= TWO_DB), (peaks.min(axis=0), peaks.max(axis=0))
    assert np.all(peaks.min(axis=0) > 60)  # and the sound is clearly visible in every channel


def test_pure_tone_brightness_does_not_depend_on_its_exact_frequency():
    """A tone swept over one row spacing keeps its grey level in every channel (bilinear rows
    read only 597 of the 2048-point spectrum's 1,025 bins: its level swung by 45 grey levels under the earlier scaling)."""
    spacing = SR / 2 / 298
    peaks = []
    for k in range(12):
        signal = _scene(3.0)
        signal[SR : 2 * SR] += tone(5000 + spacing * k / 12, 3.0, amplitude=0.02)[SR : 2 * SR]
        image = multiscale_image(signal, CONFIG)
        peaks.append(image[:, :250, 250:350].reshape(3, -1).max(axis=1))
    peaks = np.array(peaks, dtype=int)
    assert np.all(peaks.max(axis=0) - peaks.min(axis=0) <= TWO_DB), (peaks.min(axis=0), peaks.max(axis=0))


def test_fine_time_channel_resolves_two_clicks_20_ms_apart():
    signal = _scene()
    first = 2 * SR + 37
    for at in (first, first + int(0.020 * SR)):
        signal[at : at + 8] += 0.1
    image = multiscale_image(signal, CONFIG)
    times = time_coordinate(image.shape[2], CONFIG)
    near = np.flatnonzero((times > first / SR - 0.02) & (times < first / SR + 0.04))
    profile = image[0, :250, near].astype(int).max(axis=1)  # fft128, per column
    peak_columns = near[np.argsort(profile)[-2:]]
    peak_times = np.sort(times[peak_columns])
    np.testing.assert_allclose(peak_times, [first / SR, first / SR + 0.020], atol=1.5 / 199.33)
    between = profile[(near > peak_columns.min()) & (near < peak_columns.max())]
    assert between.min() < profile.max() - 40  # a clear gap between the two clicks


def _reference_image(signal: np.ndarray, config: FeaturizerConfig) -> np.ndarray:
    """The documented image, rebuilt from librosa's STFT with plain loops (no project code)."""
    height, width = config.image_height, int(round(signal.size / SR * 299 / 1.5))
    nyquist = SR / 2
    row_freq = nyquist * (height - 1 - np.arange(height)) / (height - 1)
    channels = []
    for n_fft, hop in zip(config.fft_windows, config.hop_lengths):
        power = np.abs(librosa.stft(signal, n_fft=n_fft, hop_length=hop, center=True, pad_mode="constant")) ** 2
        db = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)  # (bins, frames)
        bin_freq = np.linspace(0, nyquist, db.shape[0])
        frame_centre = np.arange(db.shape[1]) * hop
        pooled = hop <= COLUMN
        if pooled:  # reductions first: each column, bin by bin, the loudest frame centred inside it
            db = np.stack([db[:, (frame_centre >= c * COLUMN) & (frame_centre < (c + 1) * COLUMN)].max(axis=1)
                           for c in range(width)], axis=1)
        if db.shape[0] > height:  # each row: the loudest bin within half a row spacing of it
            half = nyquist / (height - 1) / 2
            values = np.stack([db[(bin_freq >= f - half) & (bin_freq < f + half)].max(axis=0) for f in row_freq])
        else:
            values = np.stack([np.interp(row_freq, bin_freq, db[:, j]) for j in range(db.shape[1])], axis=1)
        if not pooled:  # expansions last: interpolate at the column centre
            positions = (np.arange(width) + 0.5) * COLUMN / hop
            values = np.stack([np.interp(positions, np.arange(db.shape[1]), r) for r in values])
        # grey 0 at 6 dB over the median, 255 at the 99.9th percentile, 20 to 60 dB apart (no empty band here)
        background, ceiling = np.percentile(values, [config.background_percentile, config.ceiling_percentile])
        low = max(background + config.floor_db, ceiling - config.dynamic_range_db[1])
        high = max(ceiling, low + config.dynamic_range_db[0])
        channels.append(np.round((np.clip(values, low, high) - low) / (high - low) * 255))
    return np.stack(channels)


def test_whole_image_matches_an_independent_librosa_reference():
    signal = noise(3.0, seed=12, amplitude=0.02) * np.linspace(0.1, 1.0, 3 * SR, dtype=np.float32)
    signal += tone(3210.0, 3.0, amplitude=0.05)
    signal[SR + 500 : SR + 508] += 0.3
    config = FeaturizerConfig(min_duration=0.0, percentile_columns=10**6)  # bounds from every column
    ours = multiscale_image(signal, config).astype(int)
    reference = _reference_image(signal, config)
    assert ours.shape == reference.shape
    difference = np.abs(ours - reference)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01  # float32 vs float64 rounding


def test_scaling_is_floor_over_the_median_and_the_999th_percentile_not_min_max():
    """Noise swelling by 26 dB with a loud tone in its last second: grey 0 holds the values under
    6 dB over the median (and half a grey level), and about 0.1 % of pixels are 255 (a min-max scaling would put one
    pixel at each end). Bounds from numpy's percentiles of the whole image (every column sampled)."""
    signal = noise(6.0, seed=13) * np.linspace(0.05, 1.0, 6 * SR, dtype=np.float32)
    signal[5 * SR :] += tone(2500.0, 1.0, amplitude=2.0)
    config = FeaturizerConfig(min_duration=0.0, percentile_columns=10**6)
    planned = MultiscaleImage.plan(signal, config)
    image = planned.block(0, planned.width)
    for channel, values, (low, high) in zip(image, planned.values, planned.bounds):
        background, ceiling = np.percentile(values, [50, 99.9])
        assert low == pytest.approx(background + 6.0, abs=1e-4) and high == pytest.approx(ceiling, abs=1e-4)
        assert 20 < high - low < 60  # neither clamp applies here
        assert (channel == 0).mean() == pytest.approx((values < low + (high - low) / 510).mean(), abs=1e-4)  # rounded
        assert (channel == 255).mean() == pytest.approx((values >= high - (high - low) / 510).mean(), abs=1e-4)
        assert 0.0009 <= (values >= high).mean() <= 0.0011


def test_sampled_columns_equal_the_same_columns_of_a_block():
    """Clip bounds use a sparse sample of columns; they must be the very values the blocks store."""
    signal = noise(5.0, seed=14) + tone(2500.0, 5.0, amplitude=0.1)
    sparse = np.array([0, 3, 4, 100, 517, 996])
    for n_fft, hop in zip(CONFIG.fft_windows, CONFIG.hop_lengths):
        block = channel_columns(signal, np.arange(997), n_fft=n_fft, hop_length=hop, config=CONFIG)
        picked = channel_columns(signal, sparse, n_fft=n_fft, hop_length=hop, config=CONFIG)
        np.testing.assert_array_equal(picked, block[sparse])


def test_long_clip_bounds_come_from_a_bounded_sample():
    planned = MultiscaleImage.plan(noise(20.0, seed=15), FeaturizerConfig(min_duration=0.0, percentile_columns=64))
    assert planned.width == round(20 * 299 / 1.5) and len(planned.bounds) == 3
    assert freq_coordinate(CONFIG)[0] == pytest.approx(SR / 2)
