"""Batched augmentation: presets and their spec syntax, parameters inside their bounds, off means
identity, and every colour transform's pixel values against torchvision's functional transforms
(one factor per sample) or a hand-computed case."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner
from torchvision.transforms.v2 import functional as TF

from soundception.train.augment import (AUGMENT_PRESETS, AugmentConfig, add_noise_or_local, adjust_brightness, adjust_contrast,
                           adjust_hue, adjust_saturation, augment_batch, crop_and_resize, read_width)

PAPER = AUGMENT_PRESETS["paper"]


def _batch(n=64, h=32, w=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _images(n=6, h=9, w=11, seed=0):
    """Float images in [0, 1] whose three channels differ (so grey mean != channel means)."""
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return x * torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)


def _torchvision_per_sample(function, images, factors):
    return torch.stack([function(image, float(f)) for image, f in zip(images, factors)])


# presets and the --augment syntax

def test_presets_paper_values_and_cli_names():
    from soundception.train.cli import AUGMENT_PRESET_NAMES

    assert tuple(AUGMENT_PRESETS) == AUGMENT_PRESET_NAMES
    assert AugmentConfig() == AUGMENT_PRESETS["default"] and AugmentConfig.off() == AUGMENT_PRESETS["none"]
    assert (PAPER.dilation, PAPER.top, PAPER.bottom) == ((0.95, 1.05), (0.96, 1.0), (0.0, 0.01))
    assert (PAPER.brightness, PAPER.contrast, PAPER.saturation, PAPER.hue) == (32 / 255, (0.5, 1.5), (0.5, 1.5), 0.2)
    assert PAPER.time_crop and PAPER.use_dilation and PAPER.frequency_crop and PAPER.noise_or_local


def test_from_spec_presets_and_overrides():
    assert AugmentConfig.from_spec("paper") == PAPER
    assert AugmentConfig.from_spec(" none ") == AugmentConfig.off()
    assert AugmentConfig.from_spec("default,hue=0") == dataclasses.replace(AugmentConfig(), hue=0.0)
    spec = AugmentConfig.from_spec("paper, noise_std=0.02, contrast=0.8:1.2, time_crop=false, local_grid=2:3")
    assert spec == dataclasses.replace(PAPER, noise_std=0.02, contrast=(0.8, 1.2), time_crop=False,
                                       local_grid=(2, 3))
    assert AugmentConfig.from_spec("none,saturation=0.7").saturation == (0.7, 0.7)  # one number: a fixed value
    assert AugmentConfig.from_dict(PAPER.to_dict()) == PAPER


@pytest.mark.parametrize("spec, message", [
    ("fancy", "unknown augment preset 'fancy'.*default, paper, none"),
    ("paper,colour=1", r"unknown augment keys: \['colour'\]; valid keys: time_crop, dilation, .*local_grid"),
    ("paper,hue", "expected key=value"),
    ("paper,hue=a lot", "hue='a lot': expected float"),
    ("paper,time_crop=maybe", "expected true/false"),
    ("paper,contrast=1:2:3", "expected low:high"),
    ("paper,contrast=1.5:0.5", "low <= high"),
    ("paper,hue=0.7", r"hue must be in \[0, 0.5\]"),
    ("paper,top=0.5:0.6,bottom=0.55:0.6", "bottom < top"),
])
def test_from_spec_rejects_mistakes_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig.from_spec(spec)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown augment keys: \['hue_turns'\]; valid keys"):
        AugmentConfig.from_dict({**PAPER.to_dict(), "hue_turns": 0.1})


def test_cli_reports_a_bad_augment_spec_as_a_usage_error(tmp_path):
    from soundception.train.cli import train_command

    arguments = ["--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "run"),
                 "--augment", "paper,hue_turns=1"]
    result = CliRunner().invoke(train_command, arguments)
    assert result.exit_code == 2 and "Invalid value for --augment" in result.output
    assert "valid keys: time_crop" in result.output


# colour jitter: pixel values

@pytest.mark.parametrize("shift", [-0.5, -0.2, -0.05, 0.0, 0.13, 0.2, 0.5])
def test_hue_matches_torchvision(shift):
    images = _images()
    shifts = torch.full((len(images),), shift)
    torch.testing.assert_close(adjust_hue(images, shifts), _torchvision_per_sample(TF.adjust_hue, images, shifts),
                               atol=2e-6, rtol=0)


def test_hue_closed_forms():
    red, grey = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.3, 0.3, 0.3])
    images = torch.stack([red, red, red, grey]).view(4, 3, 1, 1)
    out = adjust_hue(images, torch.tensor([1 / 3, -1 / 3, 1.0, 0.25]))[..., 0, 0]
    torch.testing.assert_close(out[0], torch.tensor([0.0, 1.0, 0.0]))  # a third of a turn: R -> G
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 1.0]))  # and back the other way: R -> B
    torch.testing.assert_close(out[2], red)  # a full turn is the identity
    torch.testing.assert_close(out[3], grey)  # grey has no hue


@pytest.mark.parametrize("ours, theirs", [(adjust_saturation, TF.adjust_saturation),
                                           (adjust_contrast, TF.adjust_contrast)],
                         ids=["saturation", "contrast-about-the-grey-mean"])
@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.5, 3.0])
def test_saturation_and_contrast_match_torchvision(ours, theirs, factor):
    images = _images()
    factors = torch.full((len(images),), factor)
    expected = _torchvision_per_sample(theirs, images, factors)
    torch.testing.assert_close(ours(images, factors), expected, atol=1e-6, rtol=0)


def test_contrast_and_saturation_hand_computed():
    # one image, grey values 0.2 (top) and 0.6 (bottom): grey mean 0.4 (to 1e-4: the weights sum to 0.9999)
    images = torch.tensor([0.2, 0.6]).view(1, 1, 2, 1).expand(1, 3, 2, 1).contiguous()
    torch.testing.assert_close(adjust_contrast(images, torch.tensor([2.0]))[0, :, :, 0],
                               torch.tensor([[0.0, 0.8]] * 3), atol=1e-4, rtol=0)  # 0.4 -/+ 2 x 0.2
    pixel = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1)
    grey = 0.2989 * 0.9 + 0.587 * 0.5 + 0.114 * 0.1
    torch.testing.assert_close(adjust_saturation(pixel, torch.tensor([0.0])), torch.full((1, 3, 1, 1), grey))
    torch.testing.assert_close(adjust_saturation(pixel, torch.tensor([0.5]))[0, :, 0, 0],
                               (pixel[0, :, 0, 0] + grey) / 2)


def test_brightness_is_an_additive_delta_clamped_to_the_unit_range():
    images = torch.tensor([0.0, 0.25, 0.5, 0.95]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    out = adjust_brightness(images, torch.tensor([0.1, -0.3]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.1, 0.35, 0.6, 1.0]))
    torch.testing.assert_close(out[1, 2, 0], torch.tensor([0.0, 0.0, 0.2, 0.65]))


def test_augment_batch_colour_order_and_signs_match_torchvision():
    """augment_batch's sampled brightness, saturation, hue and contrast, replayed with torchvision
    (brightness by hand: torchvision's is a gain) in the documented order, give the same pixels."""
    colour_only = dataclasses.replace(AugmentConfig.off(), brightness=PAPER.brightness, contrast=PAPER.contrast,
                                      saturation=PAPER.saturation, hue=PAPER.hue)
    images = _batch(n=8, h=12, w=16)
    out, p = augment_batch(images, crop_width=16, config=colour_only, generator=torch.Generator().manual_seed(5))
    assert (p["hue"] < 0).any() and (p["hue"] > 0).any() and (p["brightness"] < 0).any()
    for i in range(len(images)):
        x = (images[i].float() / 255 + p["brightness"][i]).clamp(0, 1)
        x = TF.adjust_saturation(x, float(p["saturation"][i]))
        x = TF.adjust_hue(x, float(p["hue"][i]))
        x = TF.adjust_contrast(x, float(p["contrast"][i]))
        torch.testing.assert_close(out[i], x, atol=3e-6, rtol=0)


def test_noise_or_local_hand_computed():
    images = torch.full((2, 3, 4, 6), 0.5)
    gains = torch.tensor([1.2, 0.8]).view(2, 1, 1).expand(2, 2, 3)
    noise = torch.ones(2, 3, 4, 6)
    out = add_noise_or_local(images, noise_std=torch.tensor([0.0, 0.1]), local=torch.tensor([1.0, 0.0]),
                             noise=noise, gains=gains)
    torch.testing.assert_close(out[0], torch.full((3, 4, 6), 0.6))  # gain field 1.2, no noise
    torch.testing.assert_close(out[1], torch.full((3, 4, 6), 0.6))  # no gain, noise 0.1 x 1
    only_noise = dataclasses.replace(AugmentConfig.off(), noise_or_local=True, local_brightness=0.0)
    _, p = augment_batch(_batch(n=16), crop_width=100, config=only_noise, generator=torch.Generator().manual_seed(0))
    assert (p["local"] == 0).all() and (p["noise_std"] > 0).all()
    only_local = dataclasses.replace(only_noise, noise_std=0.0, local_brightness=0.25)
    _, p = augment_batch(_batch(n=16), crop_width=100, config=only_local, generator=torch.Generator().manual_seed(0))
    assert (p["local"] == 1).all() and (p["noise_std"] == 0).all()


# geometry, bounds and switches

def test_parameters_within_bounds_and_output_shape():
    crop = 100
    images = _batch(w=read_width(crop, PAPER))
    out, p = augment_batch(images, crop_width=crop, config=PAPER, generator=torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, 32, crop) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert ((p["dilation"] >= 0.95) & (p["dilation"] <= 1.05)).all()
    assert ((p["top"] >= 0.96) & (p["top"] <= 1.0)).all()
    assert ((p["bottom"] >= 0.0) & (p["bottom"] <= 0.01)).all()
    assert (p["brightness"].abs() <= 32 / 255).all() and (p["hue"].abs() <= 0.2).all()
    assert ((p["contrast"] >= 0.5) & (p["contrast"] <= 1.5)).all()
    assert ((p["saturation"] >= 0.5) & (p["saturation"] <= 1.5)).all()
    # the crop stays inside the read window
    assert (p["offset"] >= 0).all() and (p["offset"] + crop * p["dilation"] <= images.shape[-1] + 1e-4).all()
    assert p["dilation"].std() > 0 and p["offset"].std() > 0  # really random
    assert ((p["noise_std"] == 0) | (p["local"] == 0)).all()  # noise or local brightness, not both
    assert 0 < p["local"].mean() < 1


def test_everything_off_is_the_input_crop():
    images = _batch()
    out, _ = augment_batch(images, crop_width=100, config=AugmentConfig.off(), generator=torch.Generator())
    torch.testing.assert_close(out, images[..., :100].float() / 255)


def test_identity_crop_parameters_reproduce_the_input():
    x = _batch(n=4).float()
    ones = torch.ones(4)
    out = crop_and_resize(x, crop_width=100, offset=torch.zeros(4), dilation=ones, top=ones, bottom=0 * ones)
    torch.testing.assert_close(out, x[..., :100], atol=1e-2, rtol=0)
    shifted = crop_and_resize(x, crop_width=100, offset=torch.full((4,), 7.0), dilation=ones, top=ones,
                              bottom=0 * ones)
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
    assert (p["brightness"] == 0).all() and (p["noise_std"] == 0).all() and (p["hue"] == 0).all()
    assert not torch.allclose(out, images[..., :100].float() / 255)


@pytest.mark.parametrize("preset", list(AUGMENT_PRESETS))
def test_seeded_generator_reproduces(preset):
    images = _batch(n=4)
    config = AUGMENT_PRESETS[preset]
    a, _ = augment_batch(images, crop_width=100, config=config, generator=torch.Generator().manual_seed(3))
    b, _ = augment_batch(images, crop_width=100, config=config, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_read_width_at_the_paper_scale():
    assert read_width(2990, PAPER) >= 2990 * 1.05
    assert read_width(2990, AugmentConfig.off()) == 2990


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.rand(1, 3, 8, 8), crop_width=8, config=AugmentConfig(), generator=torch.Generator())
