"""Writing a feature store (layout in :mod:`shared.schema`).

Two kinds of writer, never touching the same chunk:

* the **driver** (one process) creates the store, registers files, grows the padded axes and
  writes the small per-file variables (status, n_frames, ...) as results arrive;
* each **task** writes only its own file's image chunks: chunks are ``(1, channels, height,
  time_chunk)`` and a task writes whole chunks starting at multiples of ``time_chunk``, so two
  tasks can never share a chunk (unaligned concurrent region writes silently lose data in
  zarr/xarray/dask).

Crash safety: a file is marked ``done`` only after all its chunks are written, so an interrupted
file stays ``pending`` and is redone on the next run; nothing marked done is ever rewritten.
"""

from __future__ import annotations

import importlib.metadata
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from soundception.featurize.lock import fields_lock
from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig, config_differences, config_hash
from soundception.shared.reader import open_options, read_column
from soundception.shared.errors import UserError
from soundception.shared.location import is_url, local_path

DEFAULT_TIME_CHUNK = 1024  # columns (5.1 s); see bench/loader.py for the measurement
PER_FILE_CHUNK = 4096
WRITE_CHUNKS = 4  # image chunks per zarr write call (bounded memory, fewer round trips)


class StoreMismatch(UserError, RuntimeError):
    """The existing store was written with another featurizer config (or is not a feature store)."""


class WidthExceedsStore(RuntimeError):
    """A file's image is wider than the store's padded time axis; the driver grows it and retries."""

    def __init__(self, width: int) -> None:
        super().__init__(f"image width {width} px exceeds the store's time axis")
        self.width = width


def consolidate(group: zarr.Group) -> None:
    """Refresh the consolidated metadata so ``xarray.open_zarr(path)`` opens fast and quietly.

    Consolidated metadata is a copy of every array's shape; the driver calls this after each
    change of shape (it alone changes shapes), so the copy is never stale while tasks run.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not part of the Zarr v3 spec": readers fall back fine
        zarr.consolidate_metadata(group.store)


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Versions of the packages that make the image (importlib.metadata: 20 ms a call, so once)."""
    names = ("soundception", "numpy", "scipy", "soundfile", "soxr", "zarr", "numcodecs")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _compressors(zstd_level: int = 0) -> list[Any]:
    """Chunk codecs: optional zstd, then always a crc32c checksum (a corrupted chunk fails on read).

    Only codecs from the Zarr v3 spec, so other v3 readers can read the store. Image chunks are
    stored uncompressed by default: spectrogram images are noise-like and zstd level 1 only
    shrinks them to about 0.86 of their size while making every training crop cost 2.4x the CPU
    to read (bench/loader.py, README).
    """
    return ([ZstdCodec(level=zstd_level)] if zstd_level else []) + [Crc32cCodec()]


def _vector(group: zarr.Group, name: str, dims: tuple[str, ...], dtype: str, fill: Any, chunk: int,
            attrs: dict[str, Any] | None = None) -> None:
    group.create_array(
        name, shape=(0,), chunks=(chunk,), dtype=str if dtype == "str" else dtype, fill_value=fill,
        dimension_names=dims, compressors=_compressors(3), attributes=attrs,
    )


def open_for_writing(url: str, config: FeaturizerConfig, *, storage_options: dict[str, Any] | None = None,
                     time_chunk: int = DEFAULT_TIME_CHUNK, zstd_level: int = 0, shard_chunks: int = 1,
                     audio_root: str = "") -> zarr.Group:
    """Create the store, or reopen one written with the same config.

    ``time_chunk`` (image columns per chunk), ``zstd_level`` (0: no compression) and
    ``shard_chunks`` (chunks per stored object along time, Zarr v3 sharding; 1: one object per
    chunk) apply to a new store only; a reopened store keeps its own.

    Raises :class:`StoreMismatch` (one line, naming the differing fields) if the store exists
    with another config, so images made two ways never mix.
    """
    kwargs = open_options(storage_options)
    try:
        group = zarr.open_group(url, mode="r+", use_consolidated=False, **kwargs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = None
        if not _is_empty_location(url, storage_options):
            raise StoreMismatch(f"{url} exists, is not empty and is not a Zarr store; choose another --store "
                                "(nothing there was touched)") from None
    if group is not None and len(list(group.keys())) + len(dict(group.attrs)) > 0:
        return _reopen(group, url, config)
    if time_chunk <= 0 or shard_chunks <= 0:
        raise ValueError("time_chunk and shard_chunks must be positive")
    group = zarr.open_group(url, mode="w-", zarr_format=3, **kwargs)  # "w-": never delete anything
    _create_arrays(group, config, time_chunk=time_chunk, zstd_level=zstd_level, shard_chunks=shard_chunks)
    group.attrs.update({
        "schema_version": schema.SCHEMA_VERSION,
        "featurizer_config": config.to_dict(),
        "config_hash": config_hash(config),
        "versions": dict(_versions()),
        "audio_root": str(audio_root),
        "title": "Soundception multiscale spectrogram feature store",
    })
    consolidate(group)
    return group


def _reopen(group: zarr.Group, url: str, config: FeaturizerConfig) -> zarr.Group:
    """Check that an existing store was made with ``config`` and repair what a crash left behind."""
    attrs = dict(group.attrs)
    if "featurizer_config" not in attrs:
        raise StoreMismatch(f"{url} exists and is not a Soundception feature store; choose another --store")
    old = FeaturizerConfig.from_dict(attrs["featurizer_config"])
    if config_hash(old) != config_hash(config):
        changes = "; ".join(config_differences(old, config))
        raise StoreMismatch(
            f"{url} was featurized with another config (hash {config_hash(old)}, this run "
            f"{config_hash(config)}: {changes}); use a new --store or the store's settings"
        )
    _repair_lengths(group)
    consolidate(group)
    return group


def _create_arrays(group: zarr.Group, config: FeaturizerConfig, *, time_chunk: int, zstd_level: int,
                   shard_chunks: int = 1) -> None:
    """The empty arrays of a new store (layout in :mod:`shared.schema`).

    With ``shard_chunks > 1`` the image's chunks are stored ``shard_chunks`` to an object
    (``sharding_indexed``; the codecs then apply to each inner chunk, and the shard index gets
    its own crc32c). One object per chunk is the default: with zarr-python 3.1 a crop read from a
    shard costs several requests in a row (bench/layout.py, README).
    """
    channels, height = len(config.fft_windows), config.image_height
    chunks = (1, channels, height, time_chunk)
    group.create_array(
        schema.IMAGE, shape=(0, channels, height, 0), chunks=chunks,
        shards=chunks[:3] + (time_chunk * shard_chunks,) if shard_chunks > 1 else None,
        dtype="uint8", fill_value=0, dimension_names=schema.IMAGE_DIMS, compressors=_compressors(zstd_level),
        attributes={"long_name": "multiscale log-spectrogram image (R, G, B = FFT windows)", "valid_width": "n_frames"},
    )
    _vector(group, schema.FILE, (schema.FILE,), "str", "", PER_FILE_CHUNK)
    for name, (dims, dtype, fill) in schema.PER_FILE.items():
        _vector(group, name, dims, dtype, fill, PER_FILE_CHUNK,
                {"units": "s"} if name == "duration" else {"units": "px"} if name == "n_frames" else None)
    _vector(group, schema.CLASS, (schema.CLASS,), "str", "", PER_FILE_CHUNK)
    for name, (dims, dtype, fill) in schema.PER_CLASS.items():
        _vector(group, name, dims, dtype, fill, PER_FILE_CHUNK)
    channel = group.create_array(schema.CHANNEL, shape=(channels,), dtype=str, fill_value="",
                                 dimension_names=(schema.CHANNEL,))
    channel[:] = np.array(config.channel_names)
    freq = group.create_array(schema.FREQ, shape=(height,), dtype="float32", fill_value=0.0,
                              dimension_names=(schema.FREQ,),
                              attributes={"units": "Hz", "long_name": "frequency of the image row"})
    freq[:] = schema.freq_coordinate(config)
    _vector(group, schema.TIME, (schema.TIME,), "float64", 0.0, 1 << 16,
            {"units": "s", "long_name": "time of the column centre from the start of the recording"})


def check_location(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is written, a ``--store`` that is a file or a folder of something else.

    Raises :class:`StoreMismatch` (one line). A missing or empty place, or a Zarr group, passes.
    """
    if not is_url(url) and local_path(url).is_file():
        raise StoreMismatch(f"{url} is a file, not a store folder; choose another --store (nothing was touched)")
    if _is_empty_location(url, storage_options):
        return
    if not is_url(url):
        is_group = (local_path(url) / "zarr.json").is_file()
    else:
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        is_group = filesystem.exists(f"{path.rstrip('/')}/zarr.json")
    if not is_group:
        raise StoreMismatch(f"{url} exists, is not empty and is not a Zarr store; choose another --store "
                            "(nothing there was touched)")


def _is_empty_location(url: str, storage_options: dict[str, Any] | None) -> bool:
    """True when nothing exists at ``url`` (or it is an empty folder / prefix)."""
    if not is_url(url):
        path = local_path(url)
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return not filesystem.exists(path) or not filesystem.ls(path)


def _repair_lengths(group: zarr.Group) -> None:
    """Undo what a crash in the middle of a driver-side change of shape left behind.

    * registering files: the ``file`` coordinate is resized and filled last, so it is the truth;
      trailing rows whose id was never written are dropped, other per-file arrays trimmed to it;
    * growing the time axis: the ``time`` coordinate is made to match the image's time extent.
    """
    file_array = group[schema.FILE]
    ids = read_column(group, schema.FILE)
    n_files = len(ids)
    while n_files and not ids[n_files - 1]:
        n_files -= 1
    done = np.flatnonzero(read_column(group, "status")[n_files:] == schema.DONE)
    if done.size:  # not what a crash while registering leaves: ids were lost, never drop done work
        raise StoreMismatch(f"the store's file ids are damaged: {done.size} row(s) marked done from row "
                            f"{n_files + int(done[0])} on have no id; nothing was changed (restore the store's "
                            "file/ array from a copy)")
    if n_files != file_array.shape[0]:
        file_array.resize((n_files,))
    for name in (*schema.PER_FILE, schema.IMAGE):
        array = group[name]
        if array.shape[0] != n_files:
            array.resize((n_files,) + array.shape[1:])
    extent, time = group[schema.IMAGE].shape[3], group[schema.TIME]
    if time.shape[0] != extent:
        config = FeaturizerConfig.from_dict(dict(group.attrs)["featurizer_config"])
        time.resize((extent,))
        if extent:
            time[:] = schema.time_coordinate(extent, config)


def file_ids(group: zarr.Group) -> list[str]:
    return read_column(group, schema.FILE).tolist()


def register_files(group: zarr.Group, entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Append files not yet in the store (status pending); return ``{id: index}`` for all files.

    Each entry has ``id``, ``path``, ``label`` (class index), ``background`` (str).
    """
    ids = file_ids(group)
    index = {file_id: i for i, file_id in enumerate(ids)}
    new = [entry for entry in entries if entry["id"] not in index]
    if not new:
        return index
    start, total = len(ids), len(ids) + len(new)
    for name in (*schema.PER_FILE, schema.IMAGE):
        array = group[name]
        array.resize((total,) + array.shape[1:])
    for name in ("path", "label", "background"):
        values = [entry[name] for entry in new]
        group[name][start:total] = np.array(values, dtype=object if name != "label" else "int32")
    group["status"][start:total] = np.array([schema.PENDING] * len(new), dtype=object)
    file_array = group[schema.FILE]
    file_array.resize((total,))
    file_array[start:total] = np.array([entry["id"] for entry in new], dtype=object)
    for offset, entry in enumerate(new):
        index[entry["id"]] = start + offset
    consolidate(group)
    return index


def stored_classes(group: zarr.Group) -> tuple[list[str], list[str]]:
    """The store's class ids and names, in label order."""
    return read_column(group, schema.CLASS).tolist(), read_column(group, "class_name").tolist()


def set_classes(group: zarr.Group, classes: Sequence[str], names: Sequence[str]) -> None:
    """Write the class list (``class`` coordinate and ``class_name``)."""
    for name, values in ((schema.CLASS, classes), ("class_name", names)):
        array = group[name]
        array.resize((len(values),))
        if values:
            array[:] = np.array(list(values), dtype=object)
    consolidate(group)


def ensure_width(group: zarr.Group, width: int, config: FeaturizerConfig) -> int:
    """Grow the padded time axis (and ``time`` coordinate) to at least ``width`` columns.

    The new extent is rounded up to a whole number of chunks. Returns the extent.
    """
    image = group[schema.IMAGE]
    chunk = image.chunks[3]
    current = image.shape[3]
    if width <= current:
        return current
    extent = int(math.ceil(width / chunk) * chunk)
    image.resize(image.shape[:3] + (extent,))
    time = group[schema.TIME]
    time.resize((extent,))
    time[current:extent] = schema.time_coordinate(extent, config)[current:]
    consolidate(group)
    return extent


def write_fields(group: zarr.Group, updates: dict[int, dict[str, Any]]) -> None:
    """Write per-file variables for many files at once: ``{index: {name: value}}``."""
    by_field: dict[str, tuple[list[int], list[Any]]] = {}
    for index, fields in updates.items():
        for name, value in fields.items():
            by_field.setdefault(name, ([], []))
            by_field[name][0].append(index)
            by_field[name][1].append(value)
    # each write rewrites whole chunks of 4,096 files: one process at a time (see featurize.lock)
    with fields_lock(group):
        # status last: a file is "done" only once its other fields are on disk
        for name in sorted(by_field, key=lambda n: n == "status"):
            indices, values = by_field[name]
            array = group[name]
            dtype = object if schema.PER_FILE[name][1] == "str" else schema.PER_FILE[name][1]
            order = np.argsort(indices)
            array.vindex[np.asarray(indices)[order]] = np.asarray(values, dtype=dtype)[order]


def write_image(url: str, index: int, width: int,
                blocks: Callable[[int], Iterable[tuple[int, np.ndarray]]], *,
                storage_options: dict[str, Any] | None = None) -> None:
    """Write one file's image, chunk-aligned, one whole write call at a time.

    ``blocks(columns)`` must yield ``(start_column, pixels)`` with starts at multiples of
    ``columns`` and ``columns`` columns each (the last may be shorter; it is zero-padded to the
    next chunk boundary so the write stays chunk-aligned). ``columns`` is a few chunks, or one
    shard. Pixels are uint8 ``(channels, height, columns)``; columns from ``width`` to the end of
    the last chunk are zero.

    Raises :class:`WidthExceedsStore` before writing anything if the time axis is too short.
    """
    image = zarr.open_array(f"{url.rstrip('/')}/{schema.IMAGE}", mode="r+", **open_options(storage_options))
    # every chunk written here holds image columns; zarr's check for all-fill chunks cost half the
    # write's CPU (measured: 0.42 vs 0.21 s per 58 MB)
    image = image.with_config({"write_empty_chunks": True})
    chunk, extent = image.chunks[3], image.shape[3]
    # each write call covers whole stored objects: a shard written in parts would be read back and
    # rewritten for every part (twice the bytes written, bench/layout.py); a few chunks per call
    # otherwise, which zarr encodes concurrently
    call_columns = image.shards[3] if image.shards else WRITE_CHUNKS * chunk
    if width > extent:
        raise WidthExceedsStore(width)
    for start, pixels in blocks(call_columns):
        if start % call_columns:
            raise ValueError(f"block start {start} is not a multiple of the write size {call_columns}")
        columns = pixels.shape[2]
        whole = min(columns // chunk * chunk, extent - start)
        if whole:
            image[index, :, :, start : start + whole] = pixels[:, :, :whole]
        if whole < columns:  # the image's last, partial chunk: zero-padded alone (no copy of the rest)
            stop = min(start + whole + chunk, extent)
            padded = np.zeros(pixels.shape[:2] + (stop - start - whole,), dtype=np.uint8)
            padded[:, :, : columns - whole] = pixels[:, :, whole:]
            image[index, :, :, start + whole : stop] = padded


EVENT_CHUNK = 1 << 16


def stored_events(group: zarr.Group) -> dict[str, np.ndarray] | None:
    """The store's event table ``{name: (n_events,) array}`` (:data:`schema.PER_EVENT`); an empty
    table when it has none, None when a write of it was interrupted (lengths disagree with
    ``event_count``)."""
    if schema.EVENT_COUNT not in group.attrs:
        return None if any(name in group for name in schema.PER_EVENT) else stored_events_empty()
    count = int(group.attrs[schema.EVENT_COUNT])
    table = {name: np.asarray(group[name][...]) for name in schema.PER_EVENT if name in group}
    if len(table) != len(schema.PER_EVENT) or any(len(values) != count for values in table.values()):
        return None
    return table


def stored_events_empty() -> dict[str, np.ndarray]:
    """An event table with no rows."""
    return {name: np.zeros(0, dtype=dtype) for name, (_, dtype, _) in schema.PER_EVENT.items()}


def write_events(group: zarr.Group, table: dict[str, np.ndarray]) -> None:
    """Replace the store's event table with ``table`` (every :data:`schema.PER_EVENT` name, equal lengths).

    The arrays are created on first use. ``event_count`` is removed first and written last, so a
    write interrupted half-way is recognised (:func:`stored_events` returns None) and redone.
    """
    count = len(table["event_file"])
    if any(len(table[name]) != count for name in schema.PER_EVENT):
        raise ValueError("event arrays must have equal lengths")
    if schema.EVENT_COUNT in group.attrs:
        del group.attrs[schema.EVENT_COUNT]
    for name, (dims, dtype, fill) in schema.PER_EVENT.items():
        if name not in group:
            units = schema.EVENT_UNITS.get(name)
            _vector(group, name, dims, dtype, fill, EVENT_CHUNK, {"units": units} if units else None)
        array = group[name]
        array.resize((count,))
        if count:
            array[:] = np.asarray(table[name], dtype=dtype)
    group.attrs[schema.EVENT_COUNT] = count
    consolidate(group)
