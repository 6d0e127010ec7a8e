"""Score calibration: Platt scaling of a score's log-odds, and the expected calibration error.

A recording score (the mean window softmax) or a segment score (window probability x attention)
ranks species well but is not the probability that the species is present: softmax mass is shared
between the species of one recording, and the attention scales it down. Calibration maps a score
``s`` in [0, 1] to

    p = sigmoid(slope * logit(s) + intercept)

with one ``(slope, intercept)`` for every species (two numbers fitted on many (recording, species)
pairs; a pair per species would overfit a validation split of a few dozen recordings). With
``intercept = 0`` this is temperature scaling of the log-odds, ``slope = 1 / T``. The map is
increasing (``slope > 0``), so it changes no ranking: MAP, and every table's order, stay the same,
and a calibrated run need not be predicted again (:mod:`train.predict` applies it when it writes
the tables).

Expected calibration error, ``bins`` equal-width bins of the predicted probability over [0, 1]
(the last one closed): ``ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|``, over every
(recording or segment, species) pair, ``y`` = 1 where the species is present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-6  # scores are clipped to [EPSILON, 1 - EPSILON] before the log-odds


def logit(scores: np.ndarray) -> np.ndarray:
    """``log(s / (1 - s))`` of scores in [0, 1], clipped to :data:`EPSILON`; float64, same shape."""
    s = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(s) - np.log1p(-s)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class Platt:
    """``p = sigmoid(slope * logit(s) + intercept)``; ``slope = 1 / T`` for a temperature ``T``."""

    slope: float = 1.0
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)) or self.slope <= 0:
            raise ValueError(f"a calibration needs a finite positive slope and a finite intercept, got "
                             f"{self.slope} and {self.intercept}")

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float64, same shape as ``scores`` (in [0, 1])."""
        return sigmoid(self.slope * logit(scores) + self.intercept)

    def to_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Platt:
        return cls(slope=float(values["slope"]), intercept=float(values["intercept"]))


def _checked(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth).ravel()
    if scores.shape != truth.shape or scores.size == 0:
        raise ValueError(f"scores ({scores.size}) and truth ({truth.size}) must be equal, non-empty")
    if not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError("scores must lie in [0, 1]")
    return scores, truth.astype(bool)


def fit_platt(scores: np.ndarray, truth: np.ndarray, *, temperature_only: bool = False,
              iterations: int = 100) -> Platt:
    """The :class:`Platt` map minimising the binary cross-entropy of ``truth`` (Newton's method).

    Args:
        scores: any shape, in [0, 1]; truth: the same shape, bool (the species is present).
        temperature_only: fit ``slope`` alone (``intercept = 0``): temperature scaling.

    Raises:
        ValueError: shapes differ, no pair, scores outside [0, 1], or ``truth`` all one value (nothing
            to fit against), or a fit whose slope is not positive (the scores rank backwards).
    """
    scores, truth = _checked(scores, truth)
    if truth.all() or not truth.any():
        raise ValueError("calibration needs both present and absent pairs")
    x = np.stack([logit(scores), np.ones_like(scores)], axis=1)[:, :1 if temperature_only else 2]
    y = truth.astype(np.float64)
    w = np.zeros(x.shape[1])
    w[0] = 1.0

    def loss(params: np.ndarray) -> float:
        z = x @ params
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    for _ in range(iterations):
        p = sigmoid(x @ w)
        gradient = x.T @ (p - y)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        scale, before = 1.0, loss(w)
        while loss(w - scale * step) > before and scale > 1e-6:  # damped: never go uphill
            scale /= 2
        w = w - scale * step
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return Platt(slope=float(w[0]), intercept=0.0 if temperature_only else float(w[1]))


def reliability(probabilities: np.ndarray, truth: np.ndarray, *, bins: int = 10
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of [0, 1] (the last one closed): ``(count (bins,) int, mean probability
    (bins,), fraction present (bins,))``; empty bins hold NaN means."""
    probabilities, truth = _checked(probabilities, truth)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=probabilities, minlength=bins) / count
        frequency = np.bincount(which, weights=truth.astype(np.float64), minlength=bins) / count
    return count, confidence, frequency


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, *, bins: int = 10) -> float:
    """ECE (module docstring): the count-weighted mean of ``|fraction present - mean probability|`` per bin."""
    count, confidence, frequency = reliability(probabilities, truth, bins=bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(frequency[filled] - confidence[filled])) / count.sum())


def cross_fitted(scores: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, folds: int = 2, seed: int = 0,
                 temperature_only: bool = False) -> np.ndarray:
    """Calibrated probabilities where each pair's map was fitted without its group (its recording).

    Groups are dealt at random into ``folds`` folds; each fold is calibrated by a fit on the others,
    so an ECE of the result is measured on data its calibration did not see.

    Args:
        scores, truth, groups: the same length (flattened); ``groups``: the recording of each pair.
    """
    scores, truth = _checked(scores, truth)
    groups = np.asarray(groups).ravel()
    if groups.shape != scores.shape:
        raise ValueError(f"groups ({groups.size}) must match scores ({scores.size})")
    unique = np.unique(groups)
    if folds < 2 or unique.size < folds:
        raise ValueError(f"cross-fitting needs at least {max(folds, 2)} groups and folds >= 2, got {unique.size} "
                         f"and {folds}")
    fold_of = dict(zip(unique.tolist(), np.random.default_rng(seed).permutation(unique.size) % folds))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    out = np.empty_like(scores)
    for k in range(folds):
        held = fold == k
        out[held] = fit_platt(scores[~held], truth[~held], temperature_only=temperature_only).apply(scores[held])
    return out
