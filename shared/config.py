"""The frozen featurizer config: every number that decides what a stored image looks like.

It is written into the store's attributes (and, by the trainer, into every checkpoint); readers
take it from there instead of re-typing flags. Two stores with the same :func:`config_hash`
hold images made the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from shared.text import check_known_keys

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
        clip_percentiles: (low, high) percentiles of each log-spectrogram's values. Values outside
            are clipped before scaling to 0..255, so a few very loud or empty bins do not squeeze
            the rest of the image into a handful of grey levels.
        empty_band_db: a frequency band whose rows sit more than this many dB under the recorded
            band's background (the 90th percentile of the rows' median levels) holds no sound: a
            lossy codec's cut-off band, or the empty top of audio recorded at a lower rate. Its
            rows, and the roll-off next to them, are left out of the clip percentiles, so an MP3
            or a 16 kHz recording gets the contrast of a WAV of the same sound (see the README).
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
    clip_percentiles: tuple[float, float] = (1.0, 99.9)
    empty_band_db: float = 50.0
    percentile_columns: int = 1024
    image_height: int = 299
    image_seconds: float = 1.5
    min_samples: int = 128
    channel_names: tuple[str, ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.min_duration < 0:
            raise ValueError(f"min_duration must be >= 0 s, got {self.min_duration}")
        if not self.fft_windows or any(int(w) < 2 for w in self.fft_windows):
            raise ValueError(f"fft_windows must be window sizes >= 2 samples, got {self.fft_windows}")
        if not self.hop_lengths:
            object.__setattr__(self, "hop_lengths", tuple(max(1, int(w) // 4) for w in self.fft_windows))
        object.__setattr__(self, "hop_lengths", tuple(int(h) for h in self.hop_lengths))
        if len(self.hop_lengths) != len(self.fft_windows) or min(self.hop_lengths) <= 0:
            raise ValueError(f"hop_lengths must give one positive hop per FFT window, got {self.hop_lengths}")
        for name in ("time_resize", "frequency_resize"):
            if getattr(self, name) not in RESIZE_METHODS:
                raise ValueError(f"{name} must be one of {RESIZE_METHODS}, got {getattr(self, name)!r}")
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}")
        if self.image_height < 2 or self.image_seconds <= 0:
            raise ValueError("image_height must be >= 2 px and image_seconds > 0 s")
        if not self.empty_band_db > 0:
            raise ValueError(f"empty_band_db must be positive dB (inf: keep every row), got {self.empty_band_db}")
        if self.percentile_columns < 1:
            raise ValueError("percentile_columns must be >= 1")
        object.__setattr__(self, "fft_windows", tuple(int(w) for w in self.fft_windows))
        object.__setattr__(self, "clip_percentiles", (float(low), float(high)))
        if not self.channel_names:
            object.__setattr__(self, "channel_names", tuple(f"fft{w}" for w in self.fft_windows))
        if len(self.channel_names) != len(self.fft_windows):
            raise ValueError("channel_names must name every FFT window")

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
    def from_dict(cls, data: dict[str, Any]) -> "FeaturizerConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        check_known_keys(data, (f.name for f in dataclasses.fields(cls)), "featurizer config")
        values = dict(data)
        for key in ("fft_windows", "hop_lengths", "clip_percentiles", "channel_names"):
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
