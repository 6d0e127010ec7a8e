"""Batched augmentation: sampled parameters inside the paper's bounds; off means identity."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from train.augment import AugmentConfig, augment_batch, crop_and_resize, read_width


def _batch(n=64, h=32, w=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def test_parameters_within_bounds_and_output_shape():
    crop = 100
    images = _batch(w=read_width(crop, AugmentConfig()))
    out, p = augment_batch(images, crop_width=crop, config=AugmentConfig(), generator=torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 32, crop) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert ((p["dilation"] >= 0.95) & (p["dilation"] <= 1.05)).all()
    assert ((p["top"] >= 0.96) & (p["top"] <= 1.0)).all()
    assert ((p["bottom"] >= 0.0) & (p["bottom"] <= 0.01)).all()
    # the crop stays inside the read window
    assert (p["offset"] >= 0).all() and (p["offset"] + crop * p["dilation"] <= images.shape[-1] + 1e-4).all()
    assert p["dilation"].std() > 0 and p["offset"].std() > 0  # really random
    assert ((p["noise_std"] == 0) | (p["local"] == 0)).all()  # noise or local brightness, not both


def test_everything_off_is_the_input_crop():
    images = _batch()
    out, _ = augment_batch(images, crop_width=100, config=AugmentConfig.off(), generator=torch.Generator())
    torch.testing.assert_close(out, images[..., :100].float() / 255)


def test_identity_crop_parameters_reproduce_the_input():
    x = _batch(n=4).float()
    ones = torch.ones(4)
    out = crop_and_resize(x, crop_width=100, offset=torch.zeros(4), dilation=ones, top=ones, bottom=0 * ones)
    torch.testing.assert_close(out, x[..., :100], atol=1e-2, rtol=0)
    shifted = crop_and_resize(x, crop_width=100, offset=torch.full((4,), 7.0), dilation=ones, top=ones, bottom=0 * ones)
    torch.testing.assert_close(shifted, x[..., 7:107], atol=1e-2, rtol=0)


def test_frequency_crop_keeps_the_right_rows():
    # rows 0..H-1 numbered; keeping top=1, bottom=0.5 keeps the upper half stretched to full height
    h = 32
    x = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 3, h, 8).contiguous()
    one = torch.ones(1)
    out = crop_and_resize(x, crop_width=8, offset=torch.zeros(1), dilation=one, top=one, bottom=0.5 * one)
    column = out[0, 0, :, 0]
    assert column[0] == pytest.approx(0.0, abs=0.3) and column[-1] == pytest.approx(h / 2 - 1, abs=0.6)
    assert (column.diff() >= 0).all()


def test_single_switches():
    images = _batch(n=8)
    config = dataclasses.replace(AugmentConfig.off(), use_dilation=True)
    out, p = augment_batch(images, crop_width=100, config=config, generator=torch.Generator().manual_seed(0))
    assert (p["top"] == 1).all() and (p["bottom"] == 0).all() and (p["offset"] == 0).all()
    assert (p["brightness"] == 0).all() and (p["noise_std"] == 0).all()
    assert not torch.allclose(out, images[..., :100].float() / 255)


def test_seeded_generator_reproduces():
    images = _batch(n=4)
    a, _ = augment_batch(images, crop_width=100, config=AugmentConfig(), generator=torch.Generator().manual_seed(3))
    b, _ = augment_batch(images, crop_width=100, config=AugmentConfig(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_read_width_at_the_paper_scale():
    assert read_width(2990, AugmentConfig()) >= 2990 * 1.05
    assert read_width(2990, AugmentConfig.off()) == 2990


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.rand(1, 3, 8, 8), crop_width=8, config=AugmentConfig(), generator=torch.Generator())
