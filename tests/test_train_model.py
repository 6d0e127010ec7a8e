"""Soundception forward pass, attention maps and the attention registry."""

from __future__ import annotations

import pytest
import torch

from train.attention import ATTENTION, create_attention
from train.cli import ATTENTION_NAMES
from train.model import Soundception

BACKBONE = "test_efficientnet"  # timm's tiny test model: strides 2..32, 82 k parameters


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Soundception(BACKBONE, n_classes=5).eval()


@pytest.mark.parametrize("width", [64, 150, 333])
def test_forward_any_width(model, width):
    with torch.no_grad():
        out = model(model.normalize(torch.rand(2, 3, 64, width)))
    assert out.logits.shape == (2, 5) and out.aux_logits.shape == (2, 5)
    t16 = -(-width // 16)
    assert out.temporal_attention.shape == (2, t16)
    assert out.time_frequency_attention.shape == (2, 2, -(-width // 32))
    assert ((out.temporal_attention >= 0) & (out.temporal_attention <= 1)).all()
    sums = out.time_frequency_attention.sum(dim=(1, 2))
    torch.testing.assert_close(sums, torch.ones(2))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux_logits).all()


def test_attention_is_applied_elementwise():
    torch.manual_seed(0)
    features = torch.randn(3, 8, 4, 10)
    temporal = create_attention("temporal", 8, hidden=4)
    pooled, activity = temporal(features)
    per_time = features.mean(dim=2)
    expected = (per_time * activity[:, None]).sum(-1) / (activity.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(pooled, expected)
    tf = create_attention("time_frequency", 8, hidden=4)
    pooled, weights = tf(features)
    torch.testing.assert_close(pooled, (features * weights[:, None]).sum(dim=(2, 3)))


def test_registry_and_cli_choices_agree():
    assert tuple(sorted(ATTENTION)) == ATTENTION_NAMES
    with pytest.raises(ValueError, match="unknown attention"):
        create_attention("nope", 4)


@pytest.mark.parametrize("main, aux", [("mean", "mean"), ("temporal", "time_frequency")])
def test_other_attention_choices(main, aux):
    net = Soundception(BACKBONE, 3, main_attention=main, aux_attention=aux).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 96))
    assert out.logits.shape == (1, 3)


def test_normalisation_uses_timm_pretrained_cfg(model):
    cfg = model.backbone.pretrained_cfg
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(cfg["std"], dtype=torch.float32))


def test_backbone_without_stride_32_is_refused():
    with pytest.raises(ValueError, match="stride"):
        Soundception("vit_tiny_patch16_224", 3)
