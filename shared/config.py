"""The frozen featurizer config: every number that decides what a stored image looks like.

It is written into the store's attributes (and, by the trainer, into every checkpoint); readers
take it from there instead of re-typing flags. Two stores with the same :func:`config_hash`
hold images made the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from soundception.shared.errors import UserError
from soundception.shared.text import check_known_keys

RESIZE_METHODS = ("max", "area", "bilinear")


@dataclass(frozen=True)
class FeaturizerConfig:
    """How one recording becomes one multiscale RGB image (paper section 2.1).

    Attributes:
        sample_rate: Hz every recording is resampled to before anything else.
        min_duration: seconds. A shorter clip is self-concatenated (whole copies) until it is at
            least this long; longer clips keep their length.
        fft_windows: samples. One log-spectrogram per window; they become the image channels in
            this order (R, G, B).
        hop_lengths: samples between STFT frames, one per window (default: a quarter of the
            window, 32/128/512). A hop much longer than a quarter window leaves short sounds
            between frame centres nearly invisible (a 3 ms note loses 18 dB with 128/110).
        time_resize: how STFT frames become image columns (``sample_rate / pixels_per_second`` =
            110.6 samples each). ``"max"``: the loudest of the frames centred inside the column;
            ``"area"``: their mean (in dB); ``"bilinear"``: interpolate at the column centre (the
            paper's word). A window whose hop is longer than a column always interpolates.
        frequency_resize: how FFT bins become the ``image_height`` rows: ``"max"``, ``"area"`` or
            ``"bilinear"`` likewise (only when there are more bins than rows; fewer are
            interpolated). The README gives the measurements behind both defaults.
        window: STFT window name (``scipy.signal.get_window``).
        amin: power floor before ``10 * log10`` so silence stays finite.
        background_percentile: percentile of a channel's dB values (empty bands left out) taken as
            the recording's background level (50: the median; most of a recording is background).
        floor_db: the clip floor, mapped to 0, sits this many dB above the background level. What
            lies under it (the background, and the quiet detail a lossy codec drops or re-noises)
            is black in every encoding of the same sound; sounds above it keep their contrast.
        ceiling_percentile: percentile of a channel's dB values mapped to 255 (the loudest
            0.1 % of values, outliers, are clipped).
        dynamic_range_db: (least, most) dB between floor and ceiling. The floor rises to at most
            ``most`` under the ceiling (a recording whose background is digital silence, or the
            holes of an earlier lossy encoding); the ceiling rises to at least ``least`` above the
            floor, so a recording of background alone stays dim instead of being stretched into
            bright noise. ``background_percentile=1, floor_db=0, dynamic_range_db=(0, inf)`` gives
            the bounds of schema 3 (the 1st and 99.9th percentiles), which lossy codecs move.
        empty_band_db: a frequency band whose rows sit more than this many dB under the recorded
            band's background (the 90th percentile of the rows' median levels) holds no sound: a
            lossy codec's cut-off band, or the empty top of audio recorded at a lower rate. Its
            rows are left out of the percentiles, so that a 16 kHz recording gets the floor of a
            WAV of the same sound.
        percentile_columns: at most this many image columns, evenly spaced over the recording, are
            used to estimate the clip bounds. This keeps memory bounded for long recordings and
            makes the bounds independent of how the recording is cut into blocks.
        image_height: pixels on the frequency axis (299, Inception's input height).
        image_seconds: seconds of audio per ``image_height`` pixels of width (1.5 s per 299 px).
        min_samples: recordings with fewer samples (after resampling) than this are recorded as
            failed rather than self-concatenated from almost nothing.
    """

    sample_rate: int = 22050
    min_duration: float = 60.0
    fft_windows: tuple[int, ...] = (128, 512, 2048)
    hop_lengths: tuple[int, ...] = ()
    time_resize: str = "max"
    frequency_resize: str = "max"
    window: str = "hann"
    amin: float = 1e-10
    background_percentile: float = 50.0
    floor_db: float = 6.0
    ceiling_percentile: float = 99.9
    dynamic_range_db: tuple[float, float] = (20.0, 60.0)
    empty_band_db: float = 50.0
    percentile_columns: int = 1024
    image_height: int = 299
    image_seconds: float = 1.5
    min_samples: int = 128
    channel_names: tuple[str, ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise UserError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.min_duration < 0:
            raise UserError(f"min_duration must be >= 0 s, got {self.min_duration}")
        if not self.fft_windows or any(int(w) < 2 for w in self.fft_windows):
            raise UserError(f"fft_windows must be window sizes >= 2 samples, got {self.fft_windows}")
        if not self.hop_lengths:
            object.__setattr__(self, "hop_lengths", tuple(max(1, int(w) // 4) for w in self.fft_windows))
        object.__setattr__(self, "hop_lengths", tuple(int(h) for h in self.hop_lengths))
        if len(self.hop_lengths) != len(self.fft_windows) or min(self.hop_lengths) <= 0:
            raise UserError(f"hop_lengths must give one positive hop per FFT window, got {self.hop_lengths}")
        for name in ("time_resize", "frequency_resize"):
            if getattr(self, name) not in RESIZE_METHODS:
                raise UserError(f"{name} must be one of {RESIZE_METHODS}, got {getattr(self, name)!r}")
        if not 0.0 <= self.background_percentile < self.ceiling_percentile <= 100.0:
            raise UserError("background_percentile and ceiling_percentile must satisfy 0 <= background < ceiling "
                             f"<= 100, got {self.background_percentile} and {self.ceiling_percentile}")
        least, most = self.dynamic_range_db
        if not 0.0 <= least <= most:
            raise UserError(f"dynamic_range_db must be (least, most) dB with 0 <= least <= most, got {self.dynamic_range_db}")
        if not math.isfinite(self.floor_db):
            raise UserError(f"floor_db must be a finite number of dB, got {self.floor_db}")
        if self.image_height < 2 or self.image_seconds <= 0:
            raise UserError("image_height must be >= 2 px and image_seconds > 0 s")
        if not self.empty_band_db > 0:
            raise UserError(f"empty_band_db must be positive dB (inf: keep every row), got {self.empty_band_db}")
        if self.percentile_columns < 1:
            raise UserError("percentile_columns must be >= 1")
        object.__setattr__(self, "fft_windows", tuple(int(w) for w in self.fft_windows))
        object.__setattr__(self, "dynamic_range_db", (float(least), float(most)))
        for name in ("background_percentile", "floor_db", "ceiling_percentile"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.channel_names:
            object.__setattr__(self, "channel_names", tuple(f"fft{w}" for w in self.fft_windows))
        if len(self.channel_names) != len(self.fft_windows):
            raise UserError("channel_names must name every FFT window")

    @property
    def pixels_per_second(self) -> float:
        """Columns per second of audio (299 / 1.5 = 199.33 by default)."""
        return self.image_height / self.image_seconds

    def width_for(self, duration: float) -> int:
        """Image width in pixels for ``duration`` seconds of (already self-concatenated) audio."""
        return max(1, int(round(self.pixels_per_second * duration)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturizerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        if "clip_percentiles" in data:
            raise UserError("this featurizer config is from before schema 4 (clip_percentiles): its images were "
                             "scaled by another rule; featurize the audio into a new store")
        check_known_keys(data, (f.name for f in dataclasses.fields(cls)), "featurizer config")
        values = dict(data)
        for key in ("fft_windows", "hop_lengths", "dynamic_range_db", "channel_names"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def config_hash(config: FeaturizerConfig) -> str:
    """Short stable hash of a config (16 hex digits of SHA-256 over its sorted JSON)."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_differences(old: FeaturizerConfig, new: FeaturizerConfig) -> list[str]:
    """Human-readable ``"name: old -> new"`` lines for every field that differs."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b.get(k)]
