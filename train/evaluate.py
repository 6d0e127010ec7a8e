"""Recording-level evaluation (paper 3.3): average the softmax over 15 s sub-windows of each image.

A recording's image is covered by windows of ``crop_width`` px starting at 0, ``crop_width``,
``2 * crop_width``, ... with the last one aligned to the image end (it may overlap the previous
one); an image narrower than one window is zero-padded to a single window. The recording's
prediction is the mean of the windows' softmax, computed by :mod:`train.inference`, which
``soundception predict`` uses too. Metrics are in :mod:`train.metrics`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.reader import FeatureStore
from train import metrics
from train.checkpoint import load_checkpoint
from train.config import RunConfig, UserError, crop_width_px
from train.dataset import Split, trainable_indices
from train.inference import recording_probabilities
from train.model import build_model
from train.runtime import resolve_device


def evaluate_model(model: torch.nn.Module, store: FeatureStore, indices: list[int] | np.ndarray, *,
                   crop_width: int, device: torch.device, batch_size: int = 8) -> dict[str, float]:
    """Metrics (:func:`train.metrics.report`) of ``model`` on the store files ``indices``."""
    indices = [int(i) for i in indices]
    probabilities = recording_probabilities(model, store, indices, crop_width=crop_width, device=device,
                                            batch_size=batch_size)
    labels = store.table["label"][indices].astype(np.int64)
    every = store.background
    background = [every[i] for i in indices]
    return metrics.report(probabilities, labels, background)


def evaluate(checkpoint: str | Path, store_url: str, *, out: str | Path | None = None, files: str = "validation",
             device: str = "auto", batch_size: int = 8, storage_options: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Evaluate a checkpoint on a store; write the JSON report to ``out`` when given.

    Args:
        files: ``validation`` (the run's validation split; the store must be the run's store) or
            ``all`` (every labelled, done file of the store, e.g. a separate test store).
    """
    payload = load_checkpoint(checkpoint)
    config = RunConfig.from_dict(json.loads(payload["run_config"]))
    store = FeatureStore(store_url, storage_options)
    classes = json.loads(payload["classes"])
    if store.classes != classes:
        raise UserError(f"{store_url} has classes {store.classes[:5]}..., the checkpoint was trained on "
                         f"{classes[:5]}... ({len(classes)} classes)")
    if store.config_hash != payload["config_hash"]:
        raise UserError(f"{store_url} was featurized with config {store.config_hash}, the checkpoint expects "
                         f"{payload['config_hash']}: the images would not look like the training images")
    if files == "validation":
        split = Split.from_dict(json.loads(payload["split"]))
        split.check_against(store)
        indices = list(split.validation)
    elif files == "all":
        indices = trainable_indices(store).tolist()
    else:
        raise UserError(f"files must be 'validation' or 'all', got {files!r}")
    chosen = resolve_device(device)
    model = build_model(config, len(classes))
    model.load_state_dict(payload["model"])
    model.to(chosen)
    started = time.perf_counter()
    crop_width = crop_width_px(config.crop_seconds, store.config)
    result = evaluate_model(model, store, indices, crop_width=crop_width, device=chosen, batch_size=batch_size)
    report = {"checkpoint": str(checkpoint), "store": store_url, "files": files, "step": int(payload["step"]),
              "crop_width": crop_width, "seconds": round(time.perf_counter() - started, 3), **result}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
