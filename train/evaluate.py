"""Recording-level evaluation (paper 3.3): average the softmax over 15 s sub-windows of each image.

A recording's image is covered by windows of ``crop_width`` px starting at 0, ``crop_width``,
``2 * crop_width``, ... with the last one aligned to the image end (it may overlap the previous
one); an image narrower than one window is zero-padded to a single window. The recording's
prediction is the mean of the windows' softmax, computed by :mod:`train.inference`, which
``soundception predict`` uses too. Metrics are in :mod:`train.metrics`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundception.shared import files
from soundception.shared.reader import FeatureStore, StoreError
from soundception.train import metrics
from soundception.train.checkpoint import load_checkpoint
from soundception.train.config import RunConfig, UserError, crop_width_px
from soundception.train.dataset import Split, open_store, trainable_indices
from soundception.train.inference import file_windows
from soundception.train.localize import localisation, store_calls
from soundception.train.model import build_model
from soundception.train.runtime import resolve_device


def recording_scores(model: torch.nn.Module, store: FeatureStore, indices: list[int] | np.ndarray, *,
                     crop_width: int, device: torch.device, batch_size: int = 8) -> np.ndarray:
    """Each file's score: the mean softmax over every window covering its image (paper 3.3),
    float64 ``(len(indices), n_classes)``, in the order of ``indices``.

    Raises:
        CorruptChunk: a window of one of the files fails its chunk checksum (no score would be honest).
        StoreError: a window could not be read for another reason.
    """
    indices = [int(i) for i in indices]
    rows = []
    for scored in file_windows(model, store, indices, width=crop_width, device=device, batch_size=batch_size,
                               attention=False):
        if scored.error:  # the reader hands a black window on; scoring it would bias the metrics silently
            raise_read_error(store, scored.index, scored.starts, crop_width, scored.error)
        rows.append(scored.recording_scores())
    return np.stack(rows) if rows else np.zeros((0, len(store.classes)))


def evaluate_model(model: torch.nn.Module, store: FeatureStore, indices: list[int] | np.ndarray, *,
                   crop_width: int, device: torch.device, batch_size: int = 8) -> dict[str, float]:
    """Metrics (:func:`train.metrics.report`) of ``model`` on the store files ``indices``, from
    :func:`recording_scores` (same errors)."""
    indices = [int(i) for i in indices]
    probabilities = recording_scores(model, store, indices, crop_width=crop_width, device=device,
                                     batch_size=batch_size)
    labels = store.table["label"][indices].astype(np.int64)
    every = store.background
    background = [every[i] for i in indices]
    return metrics.report(probabilities, labels, background)


def raise_read_error(store: FeatureStore, index: int, starts: np.ndarray, width: int, reason: str) -> None:
    """Raise the error that a window of file ``index`` gave: read it again for the full
    :class:`CorruptChunk` (the loader keeps only a shortened text), else a :class:`StoreError` with ``reason``."""
    for start in starts:
        store.window(index, int(start), width)
    raise StoreError(f"cannot read file {store.ids[index]} (row {index}) of {store.url}: {reason}")


def evaluated_files(payload: dict[str, Any], store: FeatureStore, files: str) -> list[int]:
    """Store indices to evaluate: the run's validation files that are done, or every trainable file.

    Raises:
        UserError: ``files`` is neither choice, or it selects no file (a report of NaN helps nobody).
    """
    trainable = trainable_indices(store)
    if files == "validation":
        split = Split.from_dict(json.loads(payload["split"]))
        split.check_against(store)
        if not split.validation:
            raise UserError("the run has no validation files (validation_fraction 0); evaluate a store with "
                            "--files all")
        done = set(trainable.tolist())
        indices = [i for i in split.validation if i in done]
        if not indices:
            raise UserError(f"none of the run's {len(split.validation)} validation files is done in {store.url}")
        return indices
    if files == "all":
        if trainable.size == 0:
            raise UserError(f"{store.url} has no labelled file with status 'done' to evaluate")
        return trainable.tolist()
    raise UserError(f"files must be 'validation' or 'all', got {files!r}")


def write_report(out: str | Path, report: dict[str, Any] | None) -> None:
    """Write ``report`` as JSON to ``out``; ``None``: only check that ``out`` can be written (before the work)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if report is None:
            with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".probe-"):
                pass
        else:
            files.write_text(out, json.dumps(report, indent=2) + "\n")
    except OSError as error:
        raise UserError(f"cannot write the report {out}: {error.strerror or error}") from None


def evaluate(checkpoint: str | Path, store_url: str, *, out: str | Path | None = None, files: str = "validation",
             device: str = "auto", batch_size: int = 8, storage_options: dict[str, Any] | None = None,
             segment_seconds: float = 5.0) -> dict[str, Any]:
    """Evaluate a checkpoint on a store; write the JSON report to ``out`` when given.

    Args:
        files: ``validation`` (the run's validation split; the store must be the run's store) or
            ``all`` (every labelled, done file of the store, e.g. a separate test store).
        segment_seconds: where the store holds annotated calls (``featurize --annotations``), the
            report's ``localisation`` (:mod:`train.localize`) scores segments of this length.

    Raises:
        UserError, StoreError: one line each (an unreadable checkpoint or store, no file to evaluate,
            a report that cannot be written, a corrupt chunk).
    """
    payload = load_checkpoint(checkpoint)
    config = RunConfig.from_dict(json.loads(payload["run_config"]))
    store = open_store(store_url, storage_options)
    classes = json.loads(payload["classes"])
    if store.classes != classes:
        raise UserError(f"{store_url} has classes {store.classes[:5]}..., the checkpoint was trained on "
                         f"{classes[:5]}... ({len(classes)} classes)")
    if store.config_hash != payload["config_hash"]:
        raise UserError(f"{store_url} was featurized with config {store.config_hash}, the checkpoint expects "
                         f"{payload['config_hash']}: the images would not look like the training images")
    indices = evaluated_files(payload, store, files)
    if out is not None:
        write_report(out, None)
    chosen = resolve_device(device)
    model = build_model(config, len(classes))
    model.load_state_dict(payload["model"])
    model.to(chosen)
    started = time.perf_counter()
    crop_width = crop_width_px(config.crop_seconds, store.config)
    result = evaluate_model(model, store, indices, crop_width=crop_width, device=chosen, batch_size=batch_size)
    report = {"checkpoint": str(checkpoint), "store": store_url, "files": files, "step": int(payload["step"]),
              "crop_width": crop_width, "seconds": round(time.perf_counter() - started, 3), **result}
    if len(store.events["event_file"]) and config.aux_attention == "temporal":  # annotated calls to measure against
        calls = {int(i): store_calls(store, int(i)) for i in indices}
        report["localisation"] = localisation(model, store, indices, calls, width=crop_width, device=chosen,
                                              segment_seconds=segment_seconds, batch_size=batch_size)
    if out is not None:
        write_report(out, report)
    return report
