"""Soundception forward pass, attention maps and the attention registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundception.train.attention import ATTENTION, create_attention
from soundception.train.cli import ATTENTION_NAMES
from soundception.train.model import Soundception

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


def test_temporal_attention_is_a_sigmoid_per_time_step_of_the_detector():
    torch.manual_seed(0)
    features = torch.randn(3, 8, 4, 10)
    temporal = create_attention("temporal", 8, hidden=4)
    with torch.no_grad():
        pooled, activity = temporal(features)
        # the detector's own conv output on the frequency-pooled features: one logit per time step
        detector_logits = temporal.detector(features.mean(dim=2)).squeeze(1).double().numpy()
    x = features.double().numpy()
    expected_activity = 1.0 / (1.0 + np.exp(-detector_logits))  # (B, T), each step on its own
    np.testing.assert_allclose(activity.numpy(), expected_activity, rtol=1e-5, atol=1e-6)
    # element-wise product with the frequency-pooled features, then a weighted mean over time
    per_time = x.mean(axis=2)  # (B, C, T)
    expected = np.einsum("bct,bt->bc", per_time, expected_activity) / expected_activity.sum(axis=1)[:, None]
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_time_frequency_attention_is_a_softmax_over_all_positions():
    torch.manual_seed(1)
    features = torch.randn(2, 8, 3, 5)
    tf = create_attention("time_frequency", 8, hidden=4)
    with torch.no_grad():
        pooled, weights = tf(features)
        logits = tf.detector(features)[:, 0].double().numpy()  # (B, F, T)
    exp = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    expected_weights = exp / exp.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-5, atol=1e-7)
    expected = np.einsum("bcft,bft->bc", features.double().numpy(), expected_weights)
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_mean_pooling_is_the_mean():
    features = torch.randn(2, 6, 3, 7, generator=torch.Generator().manual_seed(2))
    pooled, weights = create_attention("mean", 6)(features)
    np.testing.assert_allclose(pooled.numpy(), features.double().numpy().mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), np.full((2, 3, 7), 1 / 21), rtol=1e-6)


def test_model_temporal_attention_comes_from_its_detector_on_the_stride_16_map(model):
    images = model.normalize(torch.rand(2, 3, 64, 160, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        out = model(images)
        aux, _ = model.backbone(images)  # the stride-16 map, straight from timm
        logits = model.aux_attention.detector(aux.mean(dim=2)).squeeze(1).double().numpy()
    assert aux.shape[-1] == 10 and out.temporal_attention.shape == (2, 10)
    np.testing.assert_allclose(out.temporal_attention.numpy(), 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)


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


def test_normalisation_is_timms_mean_and_std(model):
    import timm
    from torchvision.transforms.functional import normalize

    data = timm.data.resolve_model_data_config(timm.create_model(BACKBONE, pretrained=False))
    assert data["mean"] != (0.5, 0.5, 0.5)  # ImageNet's statistics, not the fallback
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    expected = normalize(images, mean=list(data["mean"]), std=list(data["std"]))
    torch.testing.assert_close(model.normalize(images), expected)


def test_backbone_without_stride_32_is_refused():
    with pytest.raises(ValueError, match="stride"):
        Soundception("vit_tiny_patch16_224", 3)


@pytest.mark.parametrize("stride, padding, include_pad, channels_last", [
    (1, 1, False, False), (1, 1, False, True), (1, 1, True, True), (2, 1, False, True), (2, 0, True, False)])
def test_average_pool_as_a_convolution_equals_avgpool2d(stride, padding, include_pad, channels_last):
    """Values and input gradients of ``ConvAveragePool`` equal ``nn.AvgPool2d``'s (CPU, float64)."""
    from soundception.train.model import ConvAveragePool

    torch.manual_seed(1)
    pool = torch.nn.AvgPool2d(3, stride=stride, padding=padding, count_include_pad=include_pad)
    x = torch.randn(2, 5, 9, 13, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ConvAveragePool(pool)(ours)
    expected = pool(theirs)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)
    # a corner output of a padded window averages 4 values, not 9: by hand
    if padding and not include_pad and stride == 1:
        assert out[0, 0, 0, 0].item() == pytest.approx(x[0, 0, :2, :2].mean().item())


def test_inception_v4_pools_become_convolutions_and_keep_the_checkpoint_keys():
    import timm

    from soundception.train.model import ConvAveragePool, replace_average_pools

    plain = timm.create_model("inception_v4", features_only=True, pretrained=False, out_indices=(2, 4))
    keys = set(plain.state_dict())
    assert replace_average_pools(plain) == 14  # one pooling branch per Inception-A/B/C block
    assert not any(type(m) is torch.nn.AvgPool2d for m in plain.modules())
    assert sum(isinstance(m, ConvAveragePool) for m in plain.modules()) == 14
    assert set(plain.state_dict()) == keys


def test_average_pool_divisor_cache_stays_small_over_many_widths():
    from soundception.train.model import ConvAveragePool

    pool = ConvAveragePool(torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
    for width in range(5, 60):
        x = torch.randn(1, 2, 6, width)
        torch.testing.assert_close(pool(x), torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    assert len(pool._divisors) <= 16
