"""Recording-level prediction: the mean softmax over every window covering the image (paper 3.3)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from soundception.train.evaluate import recording_scores

CROP = 10  # px per window
SCALE = 8.0  # logit per unit of pixel brightness
# A 35 px image is covered by windows starting at 0, 10, 20 and 25 (the last one aligned to the end and
# overlapping the one before). Its columns come in five runs; rows 0..2 of channel 0 carry one
# class's evidence each.
RUNS = [(10, [0, 51, 204]),    # columns 0-9
        (10, [255, 153, 153]),  # 10-19
        (5, [102, 102, 153]),   # 20-24
        (5, [51, 102, 0]),      # 25-29
        (5, [102, 102, 51])]    # 30-34
STARTS = [0, 10, 20, 25]


class WindowScorer(nn.Module):
    """A stand-in model: logits = SCALE x the mean brightness of rows 0..2 of channel 0 over the window.

    It undoes its own normalisation, so a window that skipped ``normalize`` scores differently.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        brightness = images * self.std + self.mean
        return SimpleNamespace(logits=SCALE * brightness[:, 0, :3, :].mean(dim=-1))


class ImageStore:
    """What :func:`train.evaluate.recording_scores` reads from a feature store: widths, windows, classes."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images, self.classes = images, ["a", "b", "c"]
        self.table = {"n_frames": np.array([image.shape[-1] for image in images])}

    def window(self, index: int, start: int, width: int) -> np.ndarray:
        out = np.zeros(self.images[index].shape[:2] + (width,), dtype=np.uint8)
        part = self.images[index][:, :, start:start + width]
        out[:, :, :part.shape[-1]] = part
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def disagreeing_image() -> np.ndarray:
    rows = np.concatenate([np.repeat([values], width, axis=0) for width, values in RUNS]).T  # (3, 35)
    image = np.zeros((3, 3, rows.shape[1]), dtype=np.uint8)
    image[0] = rows
    image[1:] = 77  # other channels: ignored by the scorer
    return image


def window_probabilities(image: np.ndarray, starts: list[int]) -> np.ndarray:
    return np.array([softmax(SCALE * image[0, :, s:s + CROP].astype(np.float64).mean(axis=1) / 255)
                     for s in starts])


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_prediction_is_the_mean_softmax_over_every_covering_window(batch_size):
    long = disagreeing_image()
    short = long[:, :, 10:16].copy()  # narrower than a window: zero-padded on the right
    per_window = window_probabilities(long, STARTS)
    expected_long = per_window.mean(axis=0)
    # the design: only the mean over all four windows ranks class "a" first
    assert expected_long.argmax() == 0
    assert per_window[0].argmax() != 0 and per_window[-1].argmax() != 0  # first or last window alone
    assert per_window[:3].mean(axis=0).argmax() != 0  # without the overlapping last window
    mean_logits = np.mean([SCALE * long[0, :, s:s + CROP].mean(axis=1) / 255 for s in STARTS], axis=0)
    assert softmax(mean_logits).argmax() != 0  # averaging logits instead of probabilities
    padded = np.concatenate([short, np.zeros((3, 3, CROP - 6), dtype=np.uint8)], axis=2)
    expected_short = window_probabilities(padded, [0])[0]

    store = ImageStore([short, long])
    result = recording_scores(WindowScorer(), store, [1, 0, 1], crop_width=CROP,
                              device=torch.device("cpu"), batch_size=batch_size)
    assert result.shape == (3, 3) and result.dtype == np.float64
    np.testing.assert_allclose(result, [expected_long, expected_short, expected_long], rtol=1e-5)


def test_inference_input_preparation_is_training_normalisation():
    from soundception.train.augment import to_float
    from soundception.train.model import Soundception

    model = Soundception("test_efficientnet", 3, hidden=8)
    model.mean.copy_(torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1))
    model.std.copy_(torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1))
    images = torch.randint(0, 256, (2, 3, 8, 16), dtype=torch.uint8)
    expected = (images.double() / 255 - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).double()) / \
        torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1).double()
    torch.testing.assert_close(model.prepare(images).double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.prepare(images), model.normalize(to_float(images)), rtol=0, atol=1e-5)
