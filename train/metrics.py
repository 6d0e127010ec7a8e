"""Ranking metrics of the BirdCLEF evaluation, in plain numpy.

Every recording is a query; its ranked list is the species sorted by predicted score. The
average precision (AP) of one ranked list is

    AP = (1 / n_relevant) * sum over relevant items r of precision@rank(r)

where ``n_relevant`` counts every relevant item, so a relevant species that is missing from the
predictions (score ``-inf`` or ``nan``: never retrieved) contributes precision 0.

Ties are ranked **pessimistically**: among items with equal scores, the irrelevant ones are
ranked first. A constant predictor therefore scores as badly as the worst ordering of its ties
instead of profiting from the arbitrary class order, and the result does not depend on how the
classes happen to be numbered. On tie-free input this equals
``sklearn.metrics.average_precision_score``.
"""

from __future__ import annotations

import numpy as np


def _validated(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant).astype(bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must have the same shape")
    return np.where(np.isnan(scores), -np.inf, scores), relevant


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranked list, ties ranked pessimistically.

    Args:
        scores: ``(n_items,)`` higher is ranked first; ``-inf``/``nan`` means "not predicted".
        relevant: ``(n_items,)`` bool, which items are relevant.

    Returns:
        AP in [0, 1]; ``nan`` when nothing is relevant.
    """
    scores, relevant = _validated(scores, relevant)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        return float("nan")
    # sort by score descending, irrelevant before relevant within ties (pessimistic)
    order = np.lexsort((relevant, -scores))
    hits = relevant[order]
    retrieved = np.isfinite(scores[order])
    ranks = np.arange(1, hits.size + 1)
    precision = np.cumsum(hits) / ranks
    return float(np.sum(precision[hits & retrieved]) / n_relevant)


def mean_average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """BirdCLEF MAP: mean over queries (rows) of the AP of each row's ranked species list.

    Args:
        scores: ``(n_recordings, n_classes)`` predicted scores (e.g. probabilities).
        relevant: ``(n_recordings, n_classes)`` bool; rows with no relevant class are skipped.
    """
    scores, relevant = _validated(scores, relevant)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (recordings, classes), got shape {scores.shape}")
    values = [average_precision(s, r) for s, r in zip(scores, relevant) if r.any()]
    return float(np.mean(values)) if values else float("nan")


def class_wise_map(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over classes present (at least one relevant recording) of the AP of each class column.

    Args:
        scores: ``(n_recordings, n_classes)``.
        relevant: ``(n_recordings, n_classes)`` bool.
    """
    scores, relevant = _validated(scores, relevant)
    values = [average_precision(scores[:, c], relevant[:, c]) for c in range(scores.shape[1])
              if relevant[:, c].any()]
    return float(np.mean(values)) if values else float("nan")


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of recordings whose label is among the ``k`` best-scored classes (ties pessimistic).

    Args:
        scores: ``(n_recordings, n_classes)``.
        labels: ``(n_recordings,)`` int class index.
        k: list length; larger than ``n_classes`` means all classes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"need scores (n, classes) and labels (n,), got {scores.shape} and {labels.shape}")
    if scores.shape[0] == 0:
        return float("nan")
    scores = np.where(np.isnan(scores), -np.inf, scores)
    true = scores[np.arange(labels.size), labels][:, None]
    # pessimistic: every other class scoring >= the true one is ranked before it
    rank = np.sum(scores >= true, axis=1)
    return float(np.mean((rank <= k) & np.isfinite(true[:, 0])))


def one_hot(labels: np.ndarray, n_classes: int, extra: list[list[int]] | None = None) -> np.ndarray:
    """``(n, n_classes)`` bool with the main label set, plus ``extra[i]`` (background) when given."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros((labels.size, n_classes), dtype=bool)
    out[np.arange(labels.size), labels] = True
    for row, classes in enumerate(extra or []):
        out[row, list(classes)] = True
    return out


def report(probabilities: np.ndarray, labels: np.ndarray, background: list[list[int]] | None = None
           ) -> dict[str, float]:
    """All evaluation metrics for ``(n_recordings, n_classes)`` probabilities and main labels ``(n,)``.

    Keys: ``map`` (main species relevant), ``map_background`` (background species relevant too),
    ``top1``, ``top5``, ``class_map``, ``n_recordings``, and ``chance_map``: the expected MAP of a
    uniformly random ranking, ``mean(1 / rank)`` over ranks 1..n_classes, to read ``map`` against.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = probabilities.shape[1]
    main = one_hot(labels, n_classes)
    with_background = one_hot(labels, n_classes, background) if background is not None else main
    return {
        "map": mean_average_precision(probabilities, main),
        "map_background": mean_average_precision(probabilities, with_background),
        "top1": top_k_accuracy(probabilities, labels, 1),
        "top5": top_k_accuracy(probabilities, labels, 5),
        "class_map": class_wise_map(probabilities, main),
        "n_recordings": int(probabilities.shape[0]),
        "chance_map": float(np.mean(1.0 / np.arange(1, n_classes + 1))),
    }
