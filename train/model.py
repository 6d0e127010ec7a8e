"""Soundception: a timm backbone, fully convolutional in time, with two attention branches (paper 3.1-3.2).

* auxiliary branch: tapped at the stride-16 feature map (for ``inception_v4`` the 1,024 channels
  after the Inception-B stack), pooled by temporal attention (default) to auxiliary logits;
* main branch: the final stride-32 feature map, pooled by time-frequency attention (default) to
  the main logits.

Any input width works: the pooled vectors do not depend on the number of time steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from soundception.train.attention import create_attention
from soundception.train.config import RunConfig, UserError

AUX_REDUCTION, MAIN_REDUCTION = 16, 32


@dataclass
class SoundceptionOutput:
    """What :class:`Soundception` returns for a batch of ``B`` images.

    Attributes:
        logits: ``(B, n_classes)`` main-branch logits.
        aux_logits: ``(B, n_classes)`` auxiliary-branch logits.
        temporal_attention: auxiliary attention map, ``(B, T16)`` for ``temporal``
            (``(B, F16, T16)`` for the 2-D types).
        time_frequency_attention: main attention map, ``(B, F32, T32)`` for ``time_frequency``
            (``(B, T32)`` for ``temporal``).
        embedding: ``(B, C32)`` the main branch's attention-pooled features, the vector the main
            classifier reads (an embedding for clustering and search).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    temporal_attention: torch.Tensor
    time_frequency_attention: torch.Tensor
    embedding: torch.Tensor | None = None


def _feature_indices(backbone: str) -> tuple[int, int]:
    """Indices of the stride-16 and stride-32 levels in timm's default feature list."""
    import timm

    if not timm.is_model(backbone):
        raise UserError(f"unknown timm model {backbone!r} (see timm.list_models())")
    # pretrained_cfg / feature_info are known without building weights for most models, but the
    # only portable way is to ask the feature wrapper; building on the meta device is cheap.
    with torch.device("meta"):
        probe = timm.create_model(backbone, features_only=True, pretrained=False)
    reductions = list(probe.feature_info.reduction())
    missing = [r for r in (AUX_REDUCTION, MAIN_REDUCTION) if r not in reductions]
    if missing:
        raise UserError(f"backbone {backbone!r} has feature strides {reductions}; Soundception needs "
                         f"stride-{AUX_REDUCTION} and stride-{MAIN_REDUCTION} feature maps")
    # the last level of each stride (inception_v4: the end of the Inception-B / C stacks)
    aux = max(i for i, r in enumerate(reductions) if r == AUX_REDUCTION)
    main = max(i for i, r in enumerate(reductions) if r == MAIN_REDUCTION)
    return aux, main


class ConvAveragePool(nn.Module):
    """``nn.AvgPool2d`` (without ``ceil_mode``) as a depthwise convolution with weights of one,
    divided by the number of positions each window averages. No parameters: checkpoints keep
    their keys.

    The same values (bit for bit in fp32 on the CPU), for two reasons on CUDA with channels_last
    (how the trainer runs): PyTorch's channels_last ``avg_pool2d`` backward returned wrong input
    gradients wherever there is padding (pytorch/pytorch#188344, fixed in July 2026; torch 2.11
    measured wrong), and it is slow: on an H200 in bf16 inception_v4's 14 pooling branches took
    85 ms of a 267 ms training step (forward + backward), as convolutions 19 ms (the former
    bench/gpu.py, 2026-11-26; see docs/performance.md).
    """

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        if pool.ceil_mode:
            raise ValueError("ceil_mode is not supported")
        self.kernel_size, self.padding = _pair(pool.kernel_size), _pair(pool.padding)
        self.stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.count_include_pad, self.divisor_override = pool.count_include_pad, pool.divisor_override
        self._divisors: dict[tuple, torch.Tensor] = {}  # per input size, dtype and device

    def _divisor(self, x: torch.Tensor, summed: torch.Tensor) -> torch.Tensor | float:
        if self.divisor_override:
            return float(self.divisor_override)
        if self.count_include_pad:
            return float(self.kernel_size[0] * self.kernel_size[1])
        key = (*x.shape[-2:], summed.dtype, x.device)
        if key not in self._divisors:  # how many unpadded positions each window holds (exact integers)
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                ones = torch.ones(1, 1, *x.shape[-2:], device=x.device)
                counts = F.conv2d(ones, ones.new_ones(1, 1, *self.kernel_size), None, self.stride, self.padding)
            if len(self._divisors) >= 16:  # inputs of many widths (whole recordings): keep few
                self._divisors.clear()
            self._divisors[key] = counts.to(summed.dtype)
        return self._divisors[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = x.new_ones(x.shape[1], 1, *self.kernel_size)
        summed = F.conv2d(x, weight, None, self.stride, self.padding, 1, x.shape[1])
        return summed.div_(self._divisor(x, summed))  # in place: the convolution's backward keeps no output

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"count_include_pad={self.count_include_pad}")


def replace_average_pools(module: nn.Module) -> int:
    """Swap every ``nn.AvgPool2d`` inside ``module`` (``ceil_mode`` off) for :class:`ConvAveragePool`;
    returns how many were swapped (inception_v4: the 14 pooling branches of its Inception blocks)."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.AvgPool2d and not child.ceil_mode:
                setattr(parent, name, ConvAveragePool(child))
                swapped += 1
    return swapped


class Soundception(nn.Module):
    """Attention-augmented timm backbone.

    Args:
        backbone: timm model name with ``features_only`` support (``inception_v4``).
        n_classes: number of species (from the store).
        main_attention: registry name for the main branch (``time_frequency``).
        aux_attention: registry name for the auxiliary branch (``temporal``).
        hidden: channels inside each attention detector.
        dropout: dropout probability before each linear classifier.
    """

    def __init__(self, backbone: str, n_classes: int, *, main_attention: str = "time_frequency",
                 aux_attention: str = "temporal", hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        import timm

        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.backbone_name = backbone
        self.backbone = timm.create_model(backbone, features_only=True, pretrained=False,
                                          out_indices=_feature_indices(backbone))
        replace_average_pools(self.backbone)
        aux_channels, main_channels = self.backbone.feature_info.channels()
        self.aux_attention = create_attention(aux_attention, aux_channels, hidden)
        self.main_attention = create_attention(main_attention, main_channels, hidden)
        self.aux_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(aux_channels, n_classes))
        self.main_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(main_channels, n_classes))
        config = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config.get("mean", (0.5, 0.5, 0.5))).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", (0.5, 0.5, 0.5))).view(1, -1, 1, 1),
                             persistent=False)

    def heads(self) -> list[nn.Module]:
        """Modules trained in stage 1 (everything but the backbone)."""
        return [self.aux_attention, self.main_attention, self.aux_head, self.main_head]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], ``(B, 3, H, W)`` -> the backbone's input normalisation."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(B, 3, H, W)`` -> normalised float32, as ``normalize(images / 255)`` in one pass.

        Inference's input path: the fused in-place form takes 60 ms instead of 210 ms for 8 windows
        of 299 x 2,990 on a 2-core CPU, a quarter of a small backbone's forward time.
        """
        scale = (1.0 / (255.0 * self.std)).to(images.device)
        shift = (self.mean / self.std).to(images.device)
        return images.to(torch.float32).mul_(scale).sub_(shift)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``(B, 3, H, W)`` -> stride-16 ``(B, C16, H/16, W/16)``, stride-32 ``(B, C32, ., .)``."""
        aux, main = self.backbone(images)
        return aux, main

    def forward_head(self, aux: torch.Tensor, main: torch.Tensor) -> SoundceptionOutput:
        aux_pooled, aux_map = self.aux_attention(aux)
        main_pooled, main_map = self.main_attention(main)
        return SoundceptionOutput(logits=self.main_head(main_pooled), aux_logits=self.aux_head(aux_pooled),
                                  temporal_attention=aux_map, time_frequency_attention=main_map,
                                  embedding=main_pooled)

    def forward(self, images: torch.Tensor) -> SoundceptionOutput:
        """``images``: normalised float ``(B, 3, H, W)``, any ``W`` >= 32 px."""
        if images.ndim != 4:
            raise ValueError(f"expected images (batch, channels, height, width), got shape {tuple(images.shape)}")
        return self.forward_head(*self.forward_features(images))


def build_model(config: RunConfig, n_classes: int) -> Soundception:
    """The model a run config describes (random weights; ``n_classes`` comes from the store)."""
    return Soundception(config.backbone, n_classes, main_attention=config.main_attention,
                        aux_attention=config.aux_attention, hidden=config.attention_hidden, dropout=config.dropout)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
