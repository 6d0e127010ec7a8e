"""Checkpoints: everything needed to resume a run exactly, loadable with ``weights_only=True``.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values:

    model, optimizer, scheduler   state dicts
    step, stage                   int (the next step to run, the stage it belongs to)
    rng                           python / numpy / torch / cuda generator states
    split, classes, class_names   the run's file split and class list
    featurizer_config, config_hash  the store's featurizer config (dict) and hash
    run_config                    the run config (dict)

Files are written to a temporary name and renamed, so an interrupted save never leaves a
truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.config import UserError

CHECKPOINT_VERSION = 1

# what torch.load raises for a file that is not a (complete) torch checkpoint
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError)


def rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain values (no numpy arrays, so weights_only loads them)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": json.dumps({"bit_generator": numpy_state["bit_generator"],
                             "state": {"key": numpy_state["state"]["key"].tolist(), "pos": numpy_state["state"]["pos"]},
                             "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]}),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy_state = json.loads(state["numpy"])
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain values only) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, **payload}, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        UserError: no file at ``path``, or a file that is not a Soundception checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except UNREADABLE as error:
        raise UserError(f"{path} is not a readable torch checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} is not a Soundception checkpoint (version {CHECKPOINT_VERSION})")
    return payload


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """``run_dir/checkpoints/last.pt`` if present."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    return path if path.is_file() else None


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, hex (a checkpoint's identity in prediction settings and resume keys)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
