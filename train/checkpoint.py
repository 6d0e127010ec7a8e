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

Every checkpoint carries its own checksums (``checksums``): a CRC-32 of each tensor's dtype, shape
and bytes, named by its path in the payload (``model/head.weight``, ``optimizer/state/3/exp_avg``),
and one CRC-32 of every other value and of the payload's structure. :func:`load_checkpoint`
recomputes them and refuses a file whose bytes changed, naming the tensor. torch itself does not
notice: it writes a CRC-32 per zip entry but does not check it on load (torch 2.14), so a flipped
bit in a tensor loads silently. CRC-32 rather than sha256: it detects every single-bit flip and
every burst of up to 32 bits (a cryptographic hash only makes a miss unlikely, not impossible), at
about twice sha256's speed (2.6 vs 1.4 GB/s here); this guards against damage, not tampering.
Checkpoints saved before checksums (version 1) still load, with a warning on stderr.
"""

from __future__ import annotations

import json
import pickle
import random
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundception.shared.files import atomic_write
from soundception.train.config import UserError

# 2: carries "checksums"; 1: saved before checksums (still loaded, unverified, with a warning)
CHECKPOINT_VERSION = 2
UNVERIFIED_VERSION = 1

# what torch.load raises for a file that is not a (complete) torch checkpoint (weights files use it too)
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError)

DAMAGED_ADVICE = "the file is damaged: copy it again or use another checkpoint"


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


def tensor_checksum(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's dtype, shape and element bytes (row-major), as an unsigned int."""
    header = f"{tensor.dtype}{tuple(tensor.shape)}".encode()
    data = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(data.numpy(), zlib.crc32(header))


def _flatten(value: Any, name: str, tensors: dict[str, torch.Tensor], values: list[str]) -> None:
    """Collect ``value``'s tensors by path into ``tensors`` and a line per other value or container
    (its path, type and ``repr``) into ``values``."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value
    elif isinstance(value, dict):
        values.append(f"{name}: dict {[repr(k) for k in value]}")
        for key, item in value.items():
            _flatten(item, f"{name}/{key}", tensors, values)
    elif isinstance(value, (list, tuple)):
        values.append(f"{name}: {type(value).__name__} of {len(value)}")
        for position, item in enumerate(value):
            _flatten(item, f"{name}/{position}", tensors, values)
    else:
        values.append(f"{name} = {value!r}")


def payload_checksums(payload: dict[str, Any]) -> dict[str, Any]:
    """``{"algorithm": "crc32", "tensors": {path: crc}, "values": crc}`` of a payload (see the module doc)."""
    tensors: dict[str, torch.Tensor] = {}
    values: list[str] = []
    for key, item in payload.items():
        _flatten(item, str(key), tensors, values)
    return {"algorithm": "crc32", "tensors": {name: tensor_checksum(t) for name, t in tensors.items()},
            "values": zlib.crc32("\n".join(values).encode())}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain values only) with its checksums atomically to ``path``."""
    path = Path(path)
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **payload}
    with atomic_write(path) as handle:
        torch.save({**payload, "checksums": payload_checksums(payload)}, handle)
    return path


def _read_torch_file(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(path, weights_only=True)``; any file it cannot read is a one-line :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty, not a checkpoint (an interrupted copy?); use another checkpoint")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a Soundception checkpoint: not a complete zip archive (a truncated copy, "
                        f"or another kind of file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a readable torch checkpoint ({type(error).__name__} while loading it); "
                        f"{DAMAGED_ADVICE}") from None


def verify_checksums(path: str | Path, payload: dict[str, Any]) -> None:
    """Refuse (one-line :class:`UserError` naming the tensor) a payload that differs from its checksums."""
    saved = payload.get("checksums")
    if not isinstance(saved, dict) or saved.get("algorithm") != "crc32":
        raise UserError(f"{path}: its checksums are missing or unreadable; {DAMAGED_ADVICE}")
    computed = payload_checksums({k: v for k, v in payload.items() if k != "checksums"})
    for name, checksum in computed["tensors"].items():
        if saved["tensors"].get(name) != checksum:
            raise UserError(f"{path}: tensor {name} does not match its checksum; {DAMAGED_ADVICE}")
    if set(saved["tensors"]) != set(computed["tensors"]) or saved.get("values") != computed["values"]:
        raise UserError(f"{path}: the payload (its values or structure) does not match its checksum; "
                        f"{DAMAGED_ADVICE}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``) and verify its checksums.

    Returns the payload as saved (with ``checkpoint_version``, without ``checksums``). A version-1
    checkpoint (saved before checksums) loads unverified, with a one-line warning on stderr.

    Raises:
        UserError: no file at ``path``, a file that is not a Soundception checkpoint, or one whose
            bytes no longer match its checksums.
    """
    path = Path(path)
    payload = _read_torch_file(path, map_location)
    if not isinstance(payload, dict) or "checkpoint_version" not in payload:
        raise UserError(f"{path} is a torch file but not a Soundception checkpoint (backbone weights go to "
                        f"train --pretrained)")
    version = payload["checkpoint_version"]
    if version == UNVERIFIED_VERSION:
        print(f"warning: {path} was saved before checkpoints carried checksums: loaded unverified",
              file=sys.stderr)
    elif version == CHECKPOINT_VERSION:
        verify_checksums(path, payload)
        del payload["checksums"]
    else:
        raise UserError(f"{path} is checkpoint version {version!r}; this version of Soundception reads "
                        f"{UNVERIFIED_VERSION} and {CHECKPOINT_VERSION}")
    return payload


def saved_step(path: str | Path) -> int | None:
    """The ``step`` a checkpoint was saved at, read without its tensors or verification (for messages);
    ``None`` when it cannot be read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


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
