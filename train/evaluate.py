"""Recording-level evaluation (paper 3.3): average the softmax over 15 s sub-windows of each image.

A recording's image is covered by windows of ``crop_width`` px starting at 0, ``crop_width``,
``2 * crop_width``, ... with the last one aligned to the image end (it may overlap the previous
one); an image narrower than one window is zero-padded to a single window. The recording's
prediction is the mean of the windows' softmax. Metrics are in :mod:`train.metrics`.
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
from train.augment import to_float
from train.checkpoint import load_checkpoint
from train.config import RunConfig, UserError, crop_width_px
from train.dataset import Split, trainable_indices
from train.model import build_model
from train.runtime import autocast, resolve_device


def window_starts(n_frames: int, width: int) -> list[int]:
    """First columns of the windows covering ``[0, n_frames)``; the last window ends at ``n_frames``."""
    if n_frames <= width:
        return [0]
    starts = list(range(0, n_frames - width, width))
    return starts + [n_frames - width]


@torch.no_grad()
def predict_files(model: torch.nn.Module, store: FeatureStore, indices: list[int] | np.ndarray, *, crop_width: int,
                  device: torch.device, batch_size: int = 8) -> np.ndarray:
    """Mean softmax over each file's covering windows, ``(len(indices), n_classes)`` float64."""
    was_training = model.training
    model.eval()
    windows: list[tuple[int, np.ndarray]] = []
    sums: dict[int, np.ndarray] = {}
    counts = np.zeros(len(indices), dtype=np.int64)

    def flush() -> None:
        if not windows:
            return
        batch = torch.from_numpy(np.stack([w for _, w in windows])).to(device)
        with autocast(device):
            output = model(model.normalize(to_float(batch)))
        probabilities = torch.softmax(output.logits.float(), dim=1).cpu().numpy().astype(np.float64)
        for (row, _), p in zip(windows, probabilities):
            sums[row] = sums.get(row, 0) + p
        windows.clear()

    for row, index in enumerate(indices):
        image = store.image(int(index))
        n_frames = image.shape[-1]
        if n_frames < crop_width:
            image = np.pad(image, ((0, 0), (0, 0), (0, crop_width - n_frames)))
        for start in window_starts(n_frames, crop_width):
            windows.append((row, image[:, :, start:start + crop_width]))
            counts[row] += 1
            if len(windows) >= batch_size:
                flush()
    flush()
    model.train(was_training)
    n_classes = len(store.classes)
    return np.stack([sums[r] / counts[r] for r in range(len(indices))]) if len(indices) else np.zeros((0, n_classes))


def evaluate_model(model: torch.nn.Module, store: FeatureStore, indices: list[int] | np.ndarray, *,
                   crop_width: int, device: torch.device, batch_size: int = 8) -> dict[str, float]:
    """Metrics (:func:`train.metrics.report`) of ``model`` on the store files ``indices``."""
    indices = [int(i) for i in indices]
    probabilities = predict_files(model, store, indices, crop_width=crop_width, device=device, batch_size=batch_size)
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
