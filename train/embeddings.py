"""``predict --embeddings OUT.zarr``: every window's pooled features, for clustering and search.

One Zarr v3 group that ``xarray.open_zarr`` reads::

    embedding   (file, window, feature)  float32  the main branch's attention-pooled features; NaN past n_windows
    start_s     (file, window)           float64  window start, s from the start of the recording's image
    end_s       (file, window)           float64  window end, s (image time: a self-concatenated clip repeats)
    file        (file,)                  str      file ids, in the order predict lists them
    n_windows   (file,)                  int32    windows written for each file (0: not yet, or failed)
    duration_s  (file,)                  float64  the recording's duration, s (windows past it repeat a short clip)
    path        (file,)                  str      the recording's audio (for tables that open it)

Attributes: ``checkpoint_sha256``, ``config_hash``, ``window_seconds``, ``hop_seconds``. A file's
rows are written when it is predicted, chunk-aligned (one file per chunk), so a crash loses only
the file in flight and a rerun fills in the files still at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from soundception.shared import schema
from soundception.train.config import UserError

WINDOW_CHUNK = 512


def open_embeddings(path: str | Path, file_ids: Sequence[str], *, features: int, attrs: dict) -> zarr.Group:
    """Create the group for ``file_ids``, or reopen one made for the same files, checkpoint and windows."""
    path = str(path)
    try:
        group = zarr.open_group(path, mode="r+", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = None
    if group is not None and "embedding" in group:
        same = (dict(group.attrs) == attrs and schema.as_strings(group["file"][...]).tolist() == list(file_ids)
                and group["embedding"].shape[2] == features)
        if not same:
            raise UserError(f"{path} holds embeddings of other files, another checkpoint or other windows; "
                            "choose another --embeddings path")
        return group
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    n = len(file_ids)
    group.create_array("embedding", shape=(n, 0, features), chunks=(1, WINDOW_CHUNK, features), dtype="float32",
                       fill_value=np.nan, dimension_names=("file", "window", "feature"))
    for name in ("start_s", "end_s"):
        group.create_array(name, shape=(n, 0), chunks=(1, WINDOW_CHUNK), dtype="float64", fill_value=np.nan,
                           dimension_names=("file", "window")).attrs.update({"units": "s"})
    group.create_array("file", shape=(n,), dtype=str, fill_value="", dimension_names=("file",))[:] = \
        np.array(list(file_ids), dtype=object)
    group.create_array("n_windows", shape=(n,), dtype="int32", fill_value=0, dimension_names=("file",))
    group.create_array("duration_s", shape=(n,), dtype="float64", fill_value=np.nan,
                       dimension_names=("file",)).attrs.update({"units": "s"})
    group.create_array("path", shape=(n,), dtype=str, fill_value="", dimension_names=("file",))
    group.attrs.update(attrs)
    return group


def written(group: zarr.Group) -> dict[str, int]:
    """file id -> windows written."""
    return dict(zip(schema.as_strings(group["file"][...]).tolist(), group["n_windows"][...].tolist()))


def write_file_embeddings(group: zarr.Group, row: int, embedding: np.ndarray, starts_s: np.ndarray,
                          window_s: float, *, duration_s: float = float("nan"), path: str = "") -> None:
    """Write one file's ``(n_windows, features)`` embedding, window times, duration (s) and audio path,
    growing the window axis (``n_windows`` last: a crash before it leaves the file to redo)."""
    count = embedding.shape[0]
    if count > group["embedding"].shape[1]:
        grown = -(-count // WINDOW_CHUNK) * WINDOW_CHUNK
        for name in ("embedding", "start_s", "end_s"):
            group[name].resize((group[name].shape[0], grown) + group[name].shape[2:])
    group["embedding"][row, :count] = embedding.astype(np.float32)  # opened after the resize: a handle from
    # before it keeps the old shape, and a write through it is lost
    group["start_s"][row, :count] = starts_s
    group["end_s"][row, :count] = starts_s + window_s
    if "duration_s" in group:  # groups written before they were added lack them
        group["duration_s"][row] = duration_s
        group["path"][row] = path
    group["n_windows"][row] = count
