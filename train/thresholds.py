"""Per-species score thresholds that reach a precision the user asks for.

Input is a set of scored detections of one species, each known to be right or wrong, with a weight:
reviewed cards (a decisions CSV, the review page's export) or every (validation recording or segment,
species) pair of a checkpoint's validation split against the store's labels. For a threshold ``t``

    precision(t) = sum(weight, right, score >= t) / sum(weight, score >= t)

and the threshold written is the lowest observed score ``t`` with ``precision(t) >= asked``: the one
that keeps the most detections at the asked precision. ``weight`` is how many detections a reviewed
card stands for (a stratified sample's stratum size / cards drawn from it), so the estimate is
unbiased however the cards were drawn. A species that never reaches the precision gets no threshold
(``predict --thresholds`` then leaves it out of the Raven and Audacity tables; the CSV keeps it).

A thresholds file (CSV) has one row per species::

    class_id,class_name,threshold,precision,n_decisions,n_positive,note

``threshold`` empty when the precision is never reached; ``precision`` the estimate at the threshold
(or the best reached, when none); ``n_decisions`` the decisions behind it (unsure ones excluded),
``n_positive`` how many of them are right; ``note`` says what to distrust: fewer than
``min_decisions`` decisions or ``min_positives`` right ones.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundception.shared.decisions import DECISION_COLUMNS, DECISIONS
from soundception.shared import files
from soundception.shared.errors import UserError

THRESHOLD_COLUMNS = ("class_id", "class_name", "threshold", "precision", "n_decisions", "n_positive", "note")
MIN_DECISIONS, MIN_POSITIVES = 10, 3


@dataclass(frozen=True)
class Decisions:
    """Scored detections of several species, each right or wrong (flat arrays of one length).

    Attributes:
        class_id: ``(n,)`` the species each detection proposes; score ``(n,)`` its score.
        right: ``(n,)`` bool, the species is there; weight ``(n,)`` > 0, detections it stands for.
        unsure: how many decisions were left out as unsure (per class id).
    """

    class_id: np.ndarray
    score: np.ndarray
    right: np.ndarray
    weight: np.ndarray
    unsure: Mapping[str, int]


@dataclass(frozen=True)
class Threshold:
    """One row of a thresholds file (module docstring)."""

    class_id: str
    class_name: str
    threshold: float | None
    precision: float | None
    n_decisions: int
    n_positive: int
    note: str = ""


def precision_at(scores: np.ndarray, right: np.ndarray, weight: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, precision)``: every distinct score (descending) and the weighted precision of
    keeping the detections scoring at least that much, both float64 ``(m,)``."""
    scores = np.asarray(scores, dtype=np.float64)
    right = np.asarray(right, dtype=bool)
    weight = np.ones_like(scores) if weight is None else np.asarray(weight, dtype=np.float64)
    if not scores.shape == right.shape == weight.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape}, right {right.shape} and weight {weight.shape} must be equal 1-D")
    if np.any(~np.isfinite(weight) | (weight <= 0)):
        raise ValueError("weights must be positive and finite")
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], weight[order]
    kept_right, kept = np.cumsum(w * right[order]), np.cumsum(w)
    last = np.r_[s[1:] != s[:-1], True][:s.size]  # the last position of each distinct score: ties kept together
    return s[last], kept_right[last] / kept[last]


def lowest_threshold(scores: np.ndarray, right: np.ndarray, weight: np.ndarray | None = None, *,
                     precision: float) -> tuple[float | None, float | None]:
    """``(t, precision(t))`` for the lowest observed score ``t`` with ``precision(t) >= precision``;
    ``(None, best precision reached)`` when there is none (``(None, None)`` without detections)."""
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"the asked precision must be in (0, 1], got {precision}")
    candidates, reached = precision_at(scores, right, weight)
    if candidates.size == 0:
        return None, None
    ok = np.flatnonzero(reached >= precision - 1e-12)
    if ok.size == 0:
        return None, float(reached.max())
    lowest = ok[-1]  # candidates descend
    return float(candidates[lowest]), float(reached[lowest])


def species_thresholds(decisions: Decisions, classes: Sequence[str], class_names: Sequence[str] | None = None, *,
                       precision: float, min_decisions: int = MIN_DECISIONS,
                       min_positives: int = MIN_POSITIVES) -> list[Threshold]:
    """One :class:`Threshold` per class of ``classes`` (in order), with a note where it is not to be trusted."""
    names = list(class_names) if class_names is not None else list(classes)
    rows = []
    for class_id, name in zip(classes, names):
        mine = decisions.class_id == class_id
        threshold, reached = lowest_threshold(decisions.score[mine], decisions.right[mine], decisions.weight[mine],
                                              precision=precision)
        n, positives = int(mine.sum()), int(decisions.right[mine].sum())
        notes = []
        if threshold is None:
            notes.append("no decisions" if n == 0 else f"never reaches precision {precision:g}")
        if 0 < n < min_decisions or (n and positives < min_positives):
            notes.append(f"too few: {n} decisions, {positives} positive (want >= {min_decisions} and "
                         f">= {min_positives})")
        if decisions.unsure.get(class_id):
            notes.append(f"{decisions.unsure[class_id]} unsure ignored")
        rows.append(Threshold(class_id, name, threshold, reached, n, positives, "; ".join(notes)))
    return rows


def pair_decisions(scores: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> Decisions:
    """Every (recording or segment, species) pair of a validation split as a decision of weight 1:
    ``scores`` and ``truth`` ``(n, K)``, column ``k`` proposing ``classes[k]``."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must be (n, {len(classes)})")
    ids = np.tile(np.array(list(classes), dtype=object), scores.shape[0])
    return Decisions(ids, scores.ravel(), truth.ravel(), np.ones(scores.size), {})


def validation_decisions(checkpoint: str | Path, store_url: str, *, segment_seconds: float | None = None,
                         calibration: str | Path | None = None, device: str = "cpu"
                         ) -> tuple[Decisions, list[str], list[str]]:
    """``(decisions, class ids, class names)`` from a checkpoint's validation split (:func:`pair_decisions`
    of :func:`train.calibrate.validation_scores`): recording scores against the labels, or with
    ``segment_seconds`` segment scores against the annotated calls; mapped through ``calibration``.

    Raises:
        UserError: segments asked for where the validation recordings have no annotated calls.
    """
    from soundception.train.calibrate import read_calibration, validation_scores
    from soundception.train.checkpoint import file_digest

    scores = validation_scores(checkpoint, store_url, segment_seconds=segment_seconds or 5.0, device=device)
    kind = "segment" if segment_seconds else "recording"
    raw, truth = (scores.segment, scores.segment_truth) if segment_seconds else (scores.recording,
                                                                                 scores.recording_truth)
    if not raw.size:
        raise UserError(f"{store_url} has no annotated calls in the validation split: leave out --segments")
    if calibration is not None:
        platt = read_calibration(calibration, file_digest(checkpoint))[kind]
        if platt is None:
            raise UserError(f"{calibration} holds no {kind} map")
        raw = platt.apply(raw)
    return pair_decisions(raw, truth, scores.classes), list(scores.classes), list(scores.class_names)


def read_decisions(path: str | Path) -> Decisions:
    """A decisions CSV (header :data:`DECISION_COLUMNS`). ``correct``: right for ``predicted``;
    ``wrong`` and ``other``: wrong for ``predicted``; ``unsure``: left out and counted.

    Raises:
        UserError: a missing file, another header, an unknown decision, or a bad number (one line
            naming the line).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != DECISION_COLUMNS:
                raise UserError(f"{path}: columns {reader.fieldnames}, expected {','.join(DECISION_COLUMNS)}")
            ids, scores, right, weights, unsure = [], [], [], [], {}
            for line, row in enumerate(reader, start=2):
                decision = row["decision"].strip()
                if decision not in DECISIONS:
                    raise UserError(f"{path}: line {line}: decision {decision!r}, expected one of {list(DECISIONS)}")
                if decision == "unsure":
                    unsure[row["predicted"]] = unsure.get(row["predicted"], 0) + 1
                    continue
                try:
                    score, weight = float(row["score"]), float(row["weight"] or 1)
                except ValueError:
                    raise UserError(f"{path}: line {line}: score {row['score']!r} or weight {row['weight']!r} "
                                    "is not a number") from None
                if not (0.0 <= score <= 1.0 and math.isfinite(weight) and weight > 0):
                    raise UserError(f"{path}: line {line}: score must be in [0, 1] and weight positive")
                ids.append(row["predicted"])
                scores.append(score)
                right.append(decision == "correct")
                weights.append(weight)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    return Decisions(np.array(ids, dtype=object), np.array(scores, dtype=np.float64), np.array(right, dtype=bool),
                     np.array(weights, dtype=np.float64), unsure)


def thresholds_text(rows: Iterable[Threshold]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(THRESHOLD_COLUMNS)
    for r in rows:
        writer.writerow([r.class_id, r.class_name, "" if r.threshold is None else repr(round(r.threshold, 6)),
                         "" if r.precision is None else repr(round(r.precision, 4)), r.n_decisions, r.n_positive,
                         r.note])
    return out.getvalue()


def write_thresholds(path: str | Path, rows: Iterable[Threshold]) -> Path:
    return files.write_text(Path(path), thresholds_text(rows))


def read_thresholds(path: str | Path) -> dict[str, float | None]:
    """class id -> threshold (``None``: the species never reached the precision) from a thresholds file.

    Raises:
        UserError: a missing file, another header, a threshold that is not a number in [0, 1].
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ())[:3] != THRESHOLD_COLUMNS[:3]:
                raise UserError(f"{path}: columns {reader.fieldnames}, expected {','.join(THRESHOLD_COLUMNS)}")
            chosen: dict[str, float | None] = {}
            for line, row in enumerate(reader, start=2):
                text = row["threshold"].strip()
                try:
                    value = float(text) if text else None
                except ValueError:
                    value = -1.0
                if value is not None and not 0.0 <= value <= 1.0:
                    raise UserError(f"{path}: line {line}: threshold {text!r} is not a number in [0, 1]")
                chosen[row["class_id"]] = value
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    return chosen


def too_few_warnings(rows: Iterable[Threshold]) -> list[str]:
    """One line per species whose note says too few decisions back its threshold."""
    return [f"warning: {r.class_id} ({r.class_name}): {r.note}" for r in rows if "too few" in r.note]
