"""``soundception calibrate``: fit :mod:`train.calibration`'s map on a checkpoint's validation split.

The validation recordings (the split the checkpoint holds) are predicted exactly as ``predict``
predicts (same windows, hop and segment scores, :func:`train.predict.predict_store` into a scratch
folder), so the map is fitted on the scores it will be applied to. Truth:

* recording scores: the species is the recording's label or one of its background species;
* segment scores: a call of the species overlaps the segment (the store's annotated calls,
  ``featurize --annotations``); only recordings with annotated calls count. A store without calls
  gives no segment calibration.

The result is a small JSON file (``--out calibration.json``), not a new checkpoint: the map is an
increasing function of the score, applied when ``predict --calibration`` writes its tables, so the
journal (and its resume keys) and the checkpoint stay as they are, and one checkpoint can carry
several calibrations (one per site). It names the checkpoint's sha256; ``predict`` refuses it with
another checkpoint. The ECE after calibration is cross-fitted (each recording's scores calibrated
by a map fitted on the other folds), so it is measured on data its map did not see.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundception.shared import files
from soundception.train.calibration import Platt, cross_fitted, expected_calibration_error, fit_platt, reliability
from soundception.train.config import UserError

CALIBRATION_VERSION = 1
BINS = 10


@dataclass(frozen=True)
class ValidationScores:
    """Scores of a checkpoint's validation recordings with the truth to judge them by.

    Attributes:
        file_ids: the recordings, ``(R,)``; classes: the class ids, ``(K,)``.
        recording: float64 ``(R, K)`` recording scores; recording_truth: bool ``(R, K)`` present.
        segment: float64 ``(S, K)`` segment scores of the recordings with annotated calls;
            segment_truth: bool ``(S, K)`` a call overlaps; segment_recording: ``(S,)`` row in ``file_ids``.
    """

    file_ids: list[str]
    classes: list[str]
    class_names: list[str]
    recording: np.ndarray
    recording_truth: np.ndarray
    segment: np.ndarray
    segment_truth: np.ndarray
    segment_recording: np.ndarray


def validation_scores(checkpoint: str | Path, store_url: str, *, segment_seconds: float = 5.0, device: str = "cpu",
                      batch_size: int = 8, storage_options: dict[str, Any] | None = None) -> ValidationScores:
    """Predict the checkpoint's validation recordings of ``store_url`` (module docstring) and pair them with truth.

    Raises:
        UserError: the checkpoint holds no validation split, or none of it is done in the store.
    """
    from soundception.shared.reader import FeatureStore
    from soundception.train.checkpoint import load_checkpoint
    from soundception.train.evaluate import evaluated_files
    from soundception.train.journal import journal_path, read_journal
    from soundception.train.localize import segment_truth, store_calls
    from soundception.train.metrics import one_hot
    from soundception.train.predict import PredictOptions, predict_store
    from soundception.train.runtime import resolve_device
    from soundception.train.trained import load_trained_model

    payload = load_checkpoint(checkpoint)
    if "split" not in payload:
        raise UserError(f"{checkpoint} holds no validation split; calibrate a training or fit-head checkpoint")
    store = FeatureStore(store_url, storage_options)
    indices = evaluated_files(payload, store, "validation")
    trained = load_trained_model(checkpoint, resolve_device(device))
    if store.classes != trained.classes:
        raise UserError(f"{store_url} has classes {store.classes[:5]}..., {checkpoint} was trained on "
                        f"{trained.classes[:5]}...")
    ids = [str(store.ids[i]) for i in indices]
    n_classes = len(trained.classes)
    with tempfile.TemporaryDirectory(prefix="soundception-calibrate-") as scratch:
        options = PredictOptions(segment_seconds=segment_seconds, device=device, batch_size=batch_size)
        predict_store(checkpoint, store_url, scratch, options, file_ids=ids, storage_options=storage_options,
                      progress=False, trained=trained)
        predictions = []
        for file_id in ids:
            with np.load(journal_path(Path(scratch), file_id)) as entry:
                key = str(entry["key"])
            predictions.append(read_journal(Path(scratch), file_id, key))
    background = store.background
    labels = store.table["label"][indices].astype(np.int64)
    truth = one_hot(labels, n_classes, [background[i] for i in indices])
    segments, segment_truths, owners = [], [], []
    for row, (index, prediction) in enumerate(zip(indices, predictions)):
        calls = store_calls(store, index)
        if calls:
            segments.append(np.asarray(prediction.segment_scores, dtype=np.float64))
            segment_truths.append(segment_truth(prediction.segments, calls, n_classes))
            owners.append(np.full(len(prediction.segments), row))
    empty = np.zeros((0, n_classes))
    return ValidationScores(
        file_ids=ids, classes=list(trained.classes), class_names=list(trained.class_names),
        recording=np.stack([np.asarray(p.scores, dtype=np.float64) for p in predictions]), recording_truth=truth,
        segment=np.concatenate(segments) if segments else empty,
        segment_truth=np.concatenate(segment_truths) if segments else empty.astype(bool),
        segment_recording=np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64))


def fitted(scores: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, folds: int, seed: int
           ) -> tuple[Platt, dict[str, Any], np.ndarray]:
    """The map fitted on every pair, its summary (pairs, ECE before / cross-fitted after / in-sample after)
    and the cross-fitted probabilities, for one kind of score ``(n, K)``."""
    pair_groups = np.repeat(groups, scores.shape[1])
    platt = fit_platt(scores, truth)
    held_out = cross_fitted(scores, truth, pair_groups, folds=folds, seed=seed)
    summary = {**platt.to_dict(), "pairs": int(truth.size), "present": int(truth.sum()),
               "recordings": int(np.unique(groups).size),
               "ece_before": expected_calibration_error(scores, truth, bins=BINS),
               "ece_after": expected_calibration_error(held_out, truth, bins=BINS),
               "ece_after_in_sample": expected_calibration_error(platt.apply(scores), truth, bins=BINS)}
    return platt, summary, held_out


def calibrate(checkpoint: str | Path, store_url: str, out: str | Path, *, segment_seconds: float = 5.0,
              figure: str | Path | None = None, folds: int = 2, seed: int = 0, device: str = "cpu",
              batch_size: int = 8, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the recording (and, with annotated calls, the segment) calibration; write the JSON ``out``
    (and a reliability figure); return what was written."""
    from soundception.train.checkpoint import file_digest

    scores = validation_scores(checkpoint, store_url, segment_seconds=segment_seconds, device=device,
                               batch_size=batch_size, storage_options=storage_options)
    if len(scores.file_ids) < folds:
        raise UserError(f"calibration needs at least {folds} validation recordings, the split has "
                        f"{len(scores.file_ids)}")
    panels = []
    try:
        _, recording, held = fitted(scores.recording, scores.recording_truth, np.arange(len(scores.file_ids)),
                                    folds=folds, seed=seed)
        panels.append(("recording scores", scores.recording, held, scores.recording_truth))
        segment = None
        if scores.segment.size and np.unique(scores.segment_recording).size >= folds:
            _, segment, held = fitted(scores.segment, scores.segment_truth, scores.segment_recording, folds=folds,
                                      seed=seed)
            segment["segment_seconds"] = segment_seconds
            panels.append((f"{segment_seconds:g} s segment scores", scores.segment, held, scores.segment_truth))
    except ValueError as error:
        raise UserError(f"cannot calibrate on the validation split of {checkpoint}: {error}") from None
    result = {"calibration_version": CALIBRATION_VERSION,
              "method": "p = sigmoid(slope * logit(score) + intercept), one map per kind of score",
              "checkpoint": str(checkpoint), "checkpoint_sha256": file_digest(checkpoint), "store": store_url,
              "ece_bins": BINS, "ece_after": f"cross-fitted: {folds} folds over recordings, seed {seed}",
              "recording": recording, "segment": segment}
    files.write_text(Path(out), json.dumps(result, indent=2) + "\n")
    if figure is not None:
        reliability_figure(figure, panels)
    return result


def read_calibration(path: str | Path, digest: str) -> dict[str, Platt | None]:
    """``{"recording": Platt, "segment": Platt or None}`` from a calibration JSON made for the checkpoint
    whose sha256 is ``digest``.

    Raises:
        UserError: unreadable, not a calibration, or made for another checkpoint.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("calibration_version") != CALIBRATION_VERSION:
            raise UserError(f"{path} is not a calibration file (calibration_version {CALIBRATION_VERSION})")
        maps = {"recording": Platt.from_dict(data["recording"]),
                "segment": Platt.from_dict(data["segment"]) if data.get("segment") else None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"cannot read the calibration {path}: {error}") from None
    if data.get("checkpoint_sha256") != digest:
        raise UserError(f"{path} was fitted for another checkpoint ({data.get('checkpoint')}); calibrate this one")
    return maps


def reliability_figure(path: str | Path, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """A reliability curve per panel ``(title, scores, calibrated, truth)``: fraction present against
    mean probability per bin, before and after, with the ECE of each in the legend; below it, the
    number of pairs per bin (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.0), squeeze=False,
                                gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    centres = (np.arange(BINS) + 0.5) / BINS
    for column, (title, before, after, truth) in enumerate(panels):
        curve, counts = axes[0, column], axes[1, column]
        curve.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
        kinds = (("raw score", before, "tab:red", -0.02), ("calibrated (held out)", after, "tab:blue", 0.02))
        for name, values, colour, shift in kinds:
            count, confidence, frequency = reliability(values, truth, bins=BINS)
            filled = count > 0
            ece = expected_calibration_error(values, truth, bins=BINS)
            curve.plot(confidence[filled], frequency[filled], marker="o", color=colour, label=f"{name}: ECE {ece:.3f}")
            counts.bar(centres + shift, count, width=0.04, color=colour)
        curve.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="fraction where the species is present",
                  title=f"{title}: {truth.size} (item, species) pairs")
        curve.grid(alpha=0.3)
        curve.legend(loc="upper left", fontsize=8)
        counts.set(yscale="log", xlabel="predicted probability (mean of the bin above; bin below)",
                   ylabel="pairs per bin", xticks=np.linspace(0, 1, BINS + 1))
        counts.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
