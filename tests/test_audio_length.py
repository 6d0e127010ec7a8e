"""Audio length from headers (featurize.audio.audio_seconds), the one way both estimate_width and
predict's serial-or-cluster choice measure it: exact for FLAC and MP3, where size / 88,200 is far low."""

from __future__ import annotations

import pytest
from conftest import noise, write

from soundception.featurize.audio import audio_seconds
from soundception.featurize.plan import estimate_width
from soundception.shared.config import FeaturizerConfig
from soundception.compose import total_seconds

RATE = 22050


@pytest.mark.parametrize(("extension", "options"), [("flac", {}), ("mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
                                                    ("wav", {"subtype": "PCM_16"})])
def test_length_from_the_header_is_exact(tmp_path, extension, options):
    path = write(tmp_path / f"a.{extension}", noise(7.0, sample_rate=RATE, amplitude=0.3), RATE, **options)
    assert audio_seconds(str(path)) == pytest.approx(7.0, abs=1e-9)  # 154,350 frames at 22,050 Hz
    if extension != "wav":
        assert path.stat().st_size / 88_200 < 7.0 / 2  # what dividing by CD-quality bytes would have said
    config = FeaturizerConfig(min_duration=4.0)
    assert estimate_width(str(path), config) == config.width_for(7.0 * 1.01) + 2


def test_total_seconds_sums_headers_and_stops_past_the_serial_limit(tmp_path):
    from soundception.compose import SERIAL_SECONDS

    paths = [str(write(tmp_path / f"{k}.flac", noise(3.0 + k, sample_rate=RATE), RATE)) for k in range(3)]
    assert total_seconds(paths) == pytest.approx(3.0 + 4.0 + 5.0)
    assert audio_seconds(str(tmp_path / "missing.flac")) == 0.0
    long = write(tmp_path / "long.flac", noise(SERIAL_SECONDS + 1, sample_rate=8000, amplitude=0.0), 8000)
    assert total_seconds([str(long), *paths]) == pytest.approx(SERIAL_SECONDS + 1)  # stopped after the first
