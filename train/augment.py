"""Batched data augmentation on the training device (paper 2.2); evaluation uses none.

Input is a uint8 batch of windows read from the store, ``(B, C, H, W_read)`` with
``W_read >= ceil(crop_width * max_dilation)``. :func:`augment_batch` returns float images in
[0, 1], ``(B, C, H, crop_width)``, plus the sampled parameters (one value per sample) so tests can
check the bounds. Everything is tensor ops over the whole batch (one ``grid_sample`` for the crop
and resize), no per-sample Python loop; all randomness comes from the ``generator`` passed in, so
a step's augmentation is reproducible from ``(seed, step)``.

Crop geometry, in the paper's terms: a window of ``crop_width * dilation`` source columns
(``dilation`` uniform in [0.95, 1.05]) at a random time offset, and the rows between
``random_bottom`` (uniform in [0, 0.01] x H above the image bottom) and ``random_top`` (uniform in
[0.96, 1] x H above the image bottom), resized back to ``H x crop_width``. Row 0 of the stored image
is the top (Nyquist).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# RGB -> YIQ (NTSC); hue is a rotation in the IQ plane
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and ranges of every augmentation. Ranges are symmetric deltas or [low, high]."""

    time_crop: bool = True  # random time offset inside the read window
    dilation: tuple[float, float] = (0.95, 1.05)  # temporal dilation factor range
    use_dilation: bool = True
    frequency_crop: bool = True
    top: tuple[float, float] = (0.96, 1.0)  # x height, measured from the image bottom
    bottom: tuple[float, float] = (0.0, 0.01)  # x height, measured from the image bottom
    brightness: float = 32.0 / 255.0  # additive delta, TF Inception preprocessing
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 0.2  # fraction of a full turn in the IQ plane
    noise_or_local: bool = True  # per sample: Gaussian noise or a local brightness field
    noise_std: float = 0.05  # max noise standard deviation (image in [0, 1])
    local_brightness: float = 0.25  # local gain in [1 - x, 1 + x]
    local_grid: tuple[int, int] = (4, 8)  # (rows, columns) of the smooth gain field

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation at all (evaluation)."""
        return cls(time_crop=False, use_dilation=False, frequency_crop=False, brightness=0.0,
                   contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0, noise_or_local=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AugmentConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def max_dilation(self) -> float:
        return self.dilation[1] if self.use_dilation else 1.0


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


def _color_matrix(saturation: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` RGB matrices: saturation scaling about luma, then hue rotation in YIQ."""
    device, dtype = saturation.device, saturation.dtype
    eye = torch.eye(3, device=device, dtype=dtype)
    luma = _LUMA.to(device, dtype)
    sat = saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * luma[None, None, :]
    to_yiq = _RGB_TO_YIQ.to(device, dtype)
    angle = hue * 2 * math.pi
    rotation = eye.repeat(hue.numel(), 1, 1)
    rotation[:, 1, 1], rotation[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rotation[:, 2, 1], rotation[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    return torch.linalg.inv(to_yiq) @ rotation @ to_yiq @ sat


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
    x = images.float() / 255.0

    def draw(low: float, high: float, enabled: bool, default: float) -> torch.Tensor:
        if not enabled or low == high:
            return torch.full((batch,), float(default if not enabled else low), device=device)
        return _uniform(low, high, batch, generator, device)

    dilation = draw(*config.dilation, config.use_dilation, 1.0)
    top = draw(*config.top, config.frequency_crop, 1.0)
    bottom = draw(*config.bottom, config.frequency_crop, 0.0)
    spare = (width_in - crop_width * dilation).clamp(min=0)
    offset = spare * torch.rand(batch, generator=generator, device=device) if config.time_crop else spare * 0
    geometric = config.time_crop or config.use_dilation or config.frequency_crop
    if geometric:
        x = crop_and_resize(x, crop_width=crop_width, offset=offset, dilation=dilation, top=top, bottom=bottom)
    else:
        x = x[..., :crop_width]

    brightness = draw(-config.brightness, config.brightness, config.brightness > 0, 0.0)
    saturation = draw(*config.saturation, config.saturation != (1.0, 1.0), 1.0)
    hue = draw(-config.hue, config.hue, config.hue > 0, 0.0)
    contrast = draw(*config.contrast, config.contrast != (1.0, 1.0), 1.0)
    if config.brightness > 0:
        x = x + brightness[:, None, None, None]
    if channels == 3 and (config.saturation != (1.0, 1.0) or config.hue > 0):
        x = torch.einsum("bij,bjhw->bihw", _color_matrix(saturation, hue), x)
    if config.contrast != (1.0, 1.0):
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast[:, None, None, None] + mean

    noise_std = torch.zeros(batch, device=device)
    local = torch.zeros(batch, device=device)
    if config.noise_or_local:
        local = (torch.rand(batch, generator=generator, device=device) < 0.5).float()
        noise_std = (1 - local) * _uniform(0.0, config.noise_std, batch, generator, device)
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        gains = _uniform(1 - config.local_brightness, 1 + config.local_brightness,
                         batch * config.local_grid[0] * config.local_grid[1], generator, device)
        field = F.interpolate(gains.view(batch, 1, *config.local_grid), size=(height, crop_width),
                              mode="bilinear", align_corners=False)
        gain = torch.where(local[:, None, None, None] > 0, field, torch.ones_like(field))
        x = x * gain + noise * noise_std[:, None, None, None]
    if config != AugmentConfig.off():
        x = x.clamp(0.0, 1.0)
    params = {"offset": offset, "dilation": dilation, "top": top, "bottom": bottom, "brightness": brightness,
              "contrast": contrast, "saturation": saturation, "hue": hue, "noise_std": noise_std, "local": local}
    return x, params


def to_float(images: torch.Tensor, crop_width: int | None = None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [0, 1], optionally the first ``crop_width`` columns (evaluation)."""
    x = images.float() / 255.0
    return x if crop_width is None else x[..., :crop_width]
