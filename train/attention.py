"""Attention pooling modules (paper 3.2), picked by name from a tiny registry.

Each module turns a feature map ``(batch, channels, freq, time)`` into one pooled vector
``(batch, channels)`` plus the attention map it used, so a linear classifier on top yields one set
of logits per recording whatever the input width.

* ``temporal``: a detector on the frequency-pooled features gives a sigmoid activity value per
  time step (bird activity is expected to be on/off in time); the feature maps are multiplied by
  it and pooled over time (weighted mean, so the scale does not depend on the recording length).
* ``time_frequency``: a detector gives one logit per time-frequency position; its softmax over all
  positions weights the feature maps (element-wise product), summed to one vector.
* ``mean``: no attention, global average pooling (a baseline); its map is uniform.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ATTENTION: dict[str, type[nn.Module]] = {}


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding an attention module to :data:`ATTENTION` under ``name``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        ATTENTION[name] = cls
        return cls

    return add


def create_attention(name: str, channels: int, hidden: int = 256) -> nn.Module:
    """Instantiate the attention module registered as ``name`` for ``channels`` input channels."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}; choose one of {sorted(ATTENTION)}")
    return ATTENTION[name](channels, hidden=hidden)


@register_attention("temporal")
class TemporalAttention(nn.Module):
    """Sigmoid activity per time step; features weighted by it and pooled over time.

    Input ``(B, C, F, T)``. Returns pooled ``(B, C)`` and the attention ``(B, T)`` in [0, 1].
    """

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.detector = nn.Sequential(
            nn.Conv1d(channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_time = features.mean(dim=2)  # pool over frequency first: (B, C, T)
        activity = torch.sigmoid(self.detector(per_time)).squeeze(1)  # (B, T)
        weighted = per_time * activity[:, None, :]
        # the element-wise product, then a weighted mean over time. Dividing by the summed activity
        # makes the result blind to the activity's overall level: pushing every step from about 0.5
        # down to 7e-6 moved the pooled vector by 6 % (a plain mean of the product would shrink
        # 10^5-fold), so a window without a bird cannot lower the auxiliary evidence. The paper only
        # says element-wise product; to be settled by the localisation measure, not changed here.
        pooled = weighted.sum(dim=2) / (activity.sum(dim=1, keepdim=True) + 1e-6)
        return pooled, activity


@register_attention("time_frequency")
class TimeFrequencyAttention(nn.Module):
    """Softmax over all time-frequency positions; weighted feature maps summed.

    Input ``(B, C, F, T)``. Returns pooled ``(B, C)`` and the attention ``(B, F, T)`` summing to 1.
    """

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.detector = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, freq, time = features.shape
        logits = self.detector(features).flatten(1).float()  # (B, F*T)
        weights = torch.softmax(logits, dim=1).view(batch, 1, freq, time).to(features.dtype)
        pooled = (features * weights).sum(dim=(2, 3))
        return pooled, weights[:, 0]


@register_attention("mean")
class MeanPooling(nn.Module):
    """No attention: global average pooling. Map ``(B, F, T)`` is uniform."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, freq, time = features.shape
        weights = features.new_full((batch, freq, time), 1.0 / (freq * time))
        return features.mean(dim=(2, 3)), weights
