"""Batched data augmentation on the training device (paper 2.2); evaluation uses none.

Input is a uint8 batch of windows read from the store, ``(B, C, H, W_read)`` with
``W_read >= ceil(crop_width * max_dilation)``. :func:`augment_batch` returns float images in
[0, 1], ``(B, C, H, crop_width)``, plus the sampled parameters (one value per sample) so tests can
check the bounds. Everything is tensor ops over the whole batch (one ``grid_sample`` for the crop
and resize), no per-sample Python loop; all randomness comes from the ``generator`` passed in, so
a step's augmentation is reproducible from ``(seed, step)``.

Crop geometry, in the paper's terms: a window of ``crop_width * dilation`` source columns at a
random time offset, and the rows between ``random_bottom`` and ``random_top`` (fractions of H
above the image bottom), resized back to ``H x crop_width``. Row 0 of the stored image is the top
(Nyquist).

Colour jitter, in this order, each clamped to [0, 1] like torchvision's functional transforms:
brightness (an *additive* delta, as in TF's Inception preprocessing: a gain in dB on a dB image;
torchvision's is multiplicative), saturation, hue and contrast (torchvision's ``adjust_saturation``,
``adjust_hue`` and ``adjust_contrast`` with one factor per sample). Then per sample either Gaussian
noise or a smooth local brightness field.

The three channels are not colours: R, G and B are the 128-, 512- and 2048-point FFT
spectrograms. A hue rotation moves one FFT size's picture into another's channel, and saturation
pulls the three towards their weighted mean, so the "paper" preset's hue and saturation jitter
erase the differences between time and frequency resolutions that the image exists to carry;
``bench/augment.py`` measures what each transform does to learning.

Named settings live in :data:`AUGMENT_PRESETS` (``default``, ``paper``, ``none``), and
:meth:`AugmentConfig.from_spec` reads ``"paper,hue=0,contrast=0.8:1.2"`` from the command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from soundception.shared.text import check_known_keys

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), so saturation and contrast match it
_GRAY = (0.2989, 0.587, 0.114)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and strengths of every augmentation; the field defaults are the ``default`` preset
    (time crop and dilation on, the rest off with the paper's strengths kept, so that
    ``default,frequency_crop=true`` or ``default,noise_or_local=true`` turns one on at that strength).

    Attributes:
        time_crop: random time offset of the crop inside the read window.
        use_dilation: temporal dilation on/off; ``dilation`` is its [low, high] factor (source
            columns per output column).
        frequency_crop: random frequency crop on/off; ``top`` and ``bottom`` are [low, high] ranges of
            the kept rows' edges, as fractions of H above the image bottom.
        brightness: largest additive delta (image in [0, 1]); 0 is off.
        contrast: [low, high] factor about each image's grey mean; (1, 1) is off.
        saturation: [low, high] factor about each pixel's grey value; (1, 1) is off.
        hue: largest HSV hue shift, in turns (at most 0.5); 0 is off.
        noise_or_local: per sample, Gaussian noise or a local brightness field (each with
            probability 1/2; only the one with a non-zero strength when the other is 0).
        noise_std: largest noise standard deviation (image in [0, 1]); drawn uniformly per sample.
        local_brightness: the local gain field is in [1 - x, 1 + x].
        local_grid: ``(rows, columns)`` of random gains, bilinearly smoothed to the crop's size.
    """

    time_crop: bool = True
    dilation: tuple[float, float] = (0.95, 1.05)
    use_dilation: bool = True
    frequency_crop: bool = False
    top: tuple[float, float] = (0.96, 1.0)
    bottom: tuple[float, float] = (0.0, 0.01)
    brightness: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    hue: float = 0.0
    noise_or_local: bool = False
    noise_std: float = 0.05
    local_brightness: float = 0.25
    local_grid: tuple[int, int] = (4, 8)

    def __post_init__(self) -> None:
        for name in ("dilation", "top", "bottom", "contrast", "saturation", "local_grid"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"augment {name} must be a range low:high with low <= high, got {value}")
            object.__setattr__(self, name, tuple(value))
        if not (self.bottom[0] >= 0 and self.bottom[1] < self.top[0] and self.top[1] <= 1):
            raise ValueError(f"augment needs 0 <= bottom < top <= 1, got bottom {self.bottom}, top {self.top}")
        if self.dilation[0] <= 0 or self.contrast[0] < 0 or self.saturation[0] < 0 or self.local_grid[0] < 1:
            raise ValueError("augment dilation must be > 0, contrast and saturation >= 0, local_grid >= 1")
        if self.brightness < 0 or self.noise_std < 0 or not 0 <= self.local_brightness <= 1:
            raise ValueError("augment brightness and noise_std must be >= 0, local_brightness in [0, 1]")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augment hue must be in [0, 0.5] turns, got {self.hue}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (evaluation); the ``none`` preset."""
        return cls(time_crop=False, use_dilation=False, frequency_crop=False, brightness=0.0,
                   contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0, noise_or_local=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        _check_keys(data)
        return cls(**data)

    @classmethod
    def from_spec(cls, text: str) -> AugmentConfig:
        """A preset name, then optional ``key=value`` overrides, comma-separated.

        ``"paper"``, ``"none"``, ``"default,hue=0"``, ``"paper,noise_std=0.02,contrast=0.8:1.2"``.
        Ranges are ``low:high`` (one number fixes both ends), booleans ``true``/``false``.

        Raises:
            ValueError: an unknown preset or key (the message lists the valid ones) or a bad value.
        """
        name, *items = [part.strip() for part in text.split(",")]
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augment preset {name!r}: choose one of {', '.join(AUGMENT_PRESETS)}")
        base = AUGMENT_PRESETS[name]
        overrides: dict[str, str] = {}
        for item in items:
            key, equals, value = item.partition("=")
            if not equals:
                raise ValueError(f"augment: expected key=value after the preset name, got {item!r}")
            overrides[key.strip()] = value.strip()
        _check_keys(overrides)
        return dataclasses.replace(base, **{k: _parse_value(k, v, getattr(base, k)) for k, v in overrides.items()})

    @property
    def max_dilation(self) -> float:
        return self.dilation[1] if self.use_dilation else 1.0


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    # chosen by bench/augment.py: the random time crop and temporal dilation, the only transforms
    # that trained no worse than none from scratch (README, "Augmentation")
    "default": AugmentConfig(),
    # paper 2.2: its crop geometry, TF Inception colour jitter, and noise or local brightness
    "paper": AugmentConfig(frequency_crop=True, brightness=32.0 / 255.0, contrast=(0.5, 1.5),
                           saturation=(0.5, 1.5), hue=0.2, noise_or_local=True),
    "none": AugmentConfig.off(),
}
_KEYS = tuple(field.name for field in dataclasses.fields(AugmentConfig))


def _check_keys(data: dict[str, Any]) -> None:
    try:
        check_known_keys(data, _KEYS, "augment")
    except ValueError as error:
        raise ValueError(f"{error}; valid keys: {', '.join(_KEYS)}") from None


def _parse_value(key: str, text: str, current: Any) -> Any:
    """``text`` read as the type of ``current`` (bool, int, float, or a low:high range)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if isinstance(current, tuple):
            parts = text.split(":")
            if len(parts) not in (1, 2):
                raise ValueError
            low, high = (parts * 2)[:2] if len(parts) == 1 else parts
            return type(current[0])(low), type(current[0])(high)
        return type(current)(text)
    except ValueError:
        kind = ("true/false" if isinstance(current, bool) else "low:high" if isinstance(current, tuple)
                else type(current).__name__)
        raise ValueError(f"augment {key}={text!r}: expected {kind}") from None


def read_width(crop_width: int, config: AugmentConfig) -> int:
    """Source columns to read so a crop of ``crop_width`` px at the largest dilation fits."""
    return int(math.ceil(crop_width * config.max_dilation)) + (1 if config.use_dilation else 0)


def _uniform(low: float, high: float, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


def crop_and_resize(images: torch.Tensor, *, crop_width: int, offset: torch.Tensor, dilation: torch.Tensor,
                    top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Bilinear crop-and-resize of each sample with one batched ``affine_grid`` / ``grid_sample``.

    Args:
        images: float ``(B, C, H, W_in)``.
        crop_width: output width in px.
        offset: ``(B,)`` first source column (px, may be fractional).
        dilation: ``(B,)`` source columns per output column.
        top, bottom: ``(B,)`` fractions of ``H`` above the image bottom bounding the kept rows.

    Returns:
        ``(B, C, H, crop_width)``. With offset 0, dilation 1, top 1, bottom 0 it equals
        ``images[..., :crop_width]`` (sampling falls on pixel centres).
    """
    batch, channels, height, width_in = images.shape
    source_width = crop_width * dilation
    theta = images.new_zeros(batch, 2, 3)
    # normalised coordinates (align_corners=False): -1 / +1 are the outer pixel edges
    theta[:, 0, 0] = source_width / width_in
    theta[:, 0, 2] = (2 * offset + source_width) / width_in - 1
    row_first, row_last = 1 - top, 1 - bottom  # fractions of H from the image top
    theta[:, 1, 1] = row_last - row_first
    theta[:, 1, 2] = row_first + row_last - 1
    grid = F.affine_grid(theta, [batch, channels, height, crop_width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` luma with torchvision's weights; other C: the channel mean."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = images.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def adjust_brightness(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add ``delta`` ``(B,)`` to every pixel of each sample ``(B, C, H, W)``, clamped to [0, 1]."""
    return (images + _per_sample(delta)).clamp(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each sample's distance from its grey mean (one number per image) by ``factor`` ``(B,)``.

    torchvision's ``adjust_contrast`` with one factor per sample; result clamped to [0, 1].
    """
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return (mean + _per_sample(factor) * (images - mean)).clamp(0.0, 1.0)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance from its own grey value by ``factor`` ``(B,)``; clamped to [0, 1].

    torchvision's ``adjust_saturation`` with one factor per sample; 0 gives grey, 1 the input.
    """
    gray = grayscale(images)
    return (gray + _per_sample(factor) * (images - gray)).clamp(0.0, 1.0)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's HSV hue by ``shift`` ``(B,)`` turns; value and saturation are kept.

    torchvision's ``adjust_hue`` with one shift per sample, for ``(B, 3, H, W)`` in [0, 1]. A
    third of a turn maps pure R to pure G; grey pixels do not change.
    """
    red, green, blue = images.unbind(dim=1)
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # hue in sixths of a turn: which channel is largest, then where between its neighbours
    sixths = torch.where(value == red, ((green - blue) / safe) % 6,
                         torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    sixths = (sixths + 6 * shift[:, None, None]) % 6
    # HSV -> RGB: channel k (R, G, B at phases 5, 3, 1) is value - chroma * clamp(min(p, 4 - p), 0, 1)
    phase = (images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + sixths[:, None]) % 6
    return value[:, None] - chroma[:, None] * torch.minimum(phase, 4 - phase).clamp(0.0, 1.0)


def add_noise_or_local(images: torch.Tensor, *, noise_std: torch.Tensor, local: torch.Tensor,
                       noise: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Per sample, Gaussian noise or a smooth gain field; clamped to [0, 1].

    Args:
        images: ``(B, C, H, W)`` in [0, 1].
        noise_std: ``(B,)`` noise standard deviation (0 where ``local`` is 1).
        local: ``(B,)`` 1 where the sample gets the gain field instead of noise.
        noise: ``(B, C, H, W)`` standard normal draws.
        gains: ``(B, rows, columns)`` gains at the grid points, bilinearly resized to ``H x W``.
    """
    field = F.interpolate(gains[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
    gain = torch.where(_per_sample(local) > 0, field, torch.ones_like(field))
    return (images * gain + noise * _per_sample(noise_std)).clamp(0.0, 1.0)


def _draw(config_range: tuple[float, float], enabled: bool, off_value: float, batch: int,
          generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(B,)`` uniform draws in ``config_range``, or ``off_value`` everywhere when disabled."""
    low, high = config_range
    if not enabled or low == high:
        return torch.full((batch,), float(low if enabled else off_value), device=device)
    return _uniform(low, high, batch, generator, device)


def sample_parameters(config: AugmentConfig, *, batch: int, width_in: int, crop_width: int,
                      generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Every per-sample parameter of one batch, each ``(B,)``; see :func:`augment_batch`."""
    def draw(config_range: tuple[float, float], enabled: bool, off_value: float) -> torch.Tensor:
        return _draw(config_range, enabled, off_value, batch, generator, device)

    p = {"dilation": draw(config.dilation, config.use_dilation, 1.0),
         "top": draw(config.top, config.frequency_crop, 1.0),
         "bottom": draw(config.bottom, config.frequency_crop, 0.0)}
    spare = (width_in - crop_width * p["dilation"]).clamp(min=0)
    p["offset"] = spare * torch.rand(batch, generator=generator, device=device) if config.time_crop else spare * 0
    p["brightness"] = draw((-config.brightness, config.brightness), config.brightness > 0, 0.0)
    p["saturation"] = draw(config.saturation, config.saturation != (1.0, 1.0), 1.0)
    p["hue"] = draw((-config.hue, config.hue), config.hue > 0, 0.0)
    p["contrast"] = draw(config.contrast, config.contrast != (1.0, 1.0), 1.0)
    noise_on = config.noise_or_local and config.noise_std > 0
    local_on = config.noise_or_local and config.local_brightness > 0
    p["local"] = torch.zeros(batch, device=device)
    if local_on:
        chance = 0.5 if noise_on else 1.0
        p["local"] = (torch.rand(batch, generator=generator, device=device) < chance).float()
    p["noise_std"] = (1 - p["local"]) * draw((0.0, config.noise_std), noise_on, 0.0)
    return p


def augment_batch(images: torch.Tensor, *, crop_width: int, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Augment a uint8 batch ``(B, C, H, W_read)`` -> float ``(B, C, H, crop_width)`` in [0, 1].

    Returns the images and the sampled parameters, each ``(B,)``: ``offset`` (px), ``dilation``,
    ``top``, ``bottom`` (fractions of H), ``brightness``, ``contrast``, ``saturation``, ``hue``,
    ``noise_std``, ``local`` (1 where local brightness was used instead of noise).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 batch (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    batch, channels, height, width_in = images.shape
    if width_in < crop_width:
        raise ValueError(f"read window ({width_in} px) narrower than the crop ({crop_width} px)")
    device = images.device
    p = sample_parameters(config, batch=batch, width_in=width_in, crop_width=crop_width, generator=generator,
                          device=device)
    x = images.float() / 255.0
    if config.time_crop or config.use_dilation or config.frequency_crop:
        x = crop_and_resize(x, crop_width=crop_width, offset=p["offset"], dilation=p["dilation"], top=p["top"],
                            bottom=p["bottom"])
    else:
        x = x[..., :crop_width]
    if config.brightness > 0:
        x = adjust_brightness(x, p["brightness"])
    if channels == 3 and config.saturation != (1.0, 1.0):
        x = adjust_saturation(x, p["saturation"])
    if channels == 3 and config.hue > 0:
        x = adjust_hue(x, p["hue"])
    if config.contrast != (1.0, 1.0):
        x = adjust_contrast(x, p["contrast"])
    if config.noise_or_local and (config.noise_std > 0 or config.local_brightness > 0):
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        gains = _uniform(1 - config.local_brightness, 1 + config.local_brightness,
                         batch * config.local_grid[0] * config.local_grid[1], generator, device)
        x = add_noise_or_local(x, noise_std=p["noise_std"], local=p["local"], noise=noise,
                               gains=gains.view(batch, *config.local_grid))
    return x, p


def to_float(images: torch.Tensor, crop_width: int | None = None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [0, 1], optionally the first ``crop_width`` columns (evaluation)."""
    x = images.float() / 255.0
    return x if crop_width is None else x[..., :crop_width]
