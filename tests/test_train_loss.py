"""The training loss against hand-computed values: cross-entropy or BCE per head, main + aux_weight x aux."""

from __future__ import annotations

import math

import pytest
import torch

from soundception.train.loss import soundception_loss
from soundception.train.model import SoundceptionOutput

# one recording of species 0 with background species 2, three classes
MAIN, AUX = [2.0, 0.0, -1.0], [0.0, 1.0, 0.0]
LABELS = torch.tensor([0])
TARGETS = torch.tensor([[1.0, 0.0, 1.0]])


def output() -> SoundceptionOutput:
    empty = torch.zeros(1, 1)
    return SoundceptionOutput(logits=torch.tensor([MAIN]), aux_logits=torch.tensor([AUX]),
                              temporal_attention=empty, time_frequency_attention=empty)


def cross_entropy(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(z) for z in logits))


def binary_cross_entropy(logits: list[float], targets: list[float]) -> float:
    def log_sigmoid(z: float) -> float:
        return -math.log1p(math.exp(-z))

    return -sum(t * log_sigmoid(z) + (1 - t) * log_sigmoid(-z) for z, t in zip(logits, targets)) / len(logits)


@pytest.mark.parametrize("aux_weight", [0.0, 0.4, 1.0])
def test_single_label_is_cross_entropy_against_the_main_species(aux_weight):
    total, parts = soundception_loss(output(), LABELS, TARGETS, aux_weight=aux_weight, multilabel=False)
    main, aux = cross_entropy(MAIN, 0), cross_entropy(AUX, 0)  # ~0.17 and ~1.55
    assert parts["loss_main"] == pytest.approx(main, rel=1e-6)
    assert parts["loss_aux"] == pytest.approx(aux, rel=1e-6)
    assert float(total) == pytest.approx(main + aux_weight * aux, rel=1e-6)


@pytest.mark.parametrize("aux_weight", [0.0, 0.4, 1.0])
def test_multilabel_is_bce_with_the_background_species_positive(aux_weight):
    total, parts = soundception_loss(output(), LABELS, TARGETS, aux_weight=aux_weight, multilabel=True)
    main, aux = binary_cross_entropy(MAIN, [1, 0, 1]), binary_cross_entropy(AUX, [1, 0, 1])
    assert main != pytest.approx(binary_cross_entropy(MAIN, [1, 0, 0]))  # the background changes it
    assert parts["loss_main"] == pytest.approx(main, rel=1e-6)
    assert parts["loss_aux"] == pytest.approx(aux, rel=1e-6)
    assert float(total) == pytest.approx(main + aux_weight * aux, rel=1e-6)
