"""A small read-only API over a feature store, used by the trainer and by ``inspect``.

It reads with zarr directly (no xarray, no dask), so it stays light inside data-loader workers.
Per-file tables are small and read once; images are read on demand, only the chunks a request
touches.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import zarr

from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig
from soundception.shared.text import one_line, refuse_credentials_in_url
from soundception.shared.errors import UserError
from soundception.shared.location import normalize


class StoreError(UserError, RuntimeError):
    """The path is not a readable feature store, or the store is not what the reader expects."""


class CorruptChunk(StoreError, ValueError):
    """An image chunk whose bytes fail their stored crc32c checksum (a damaged copy or disk).

    The message names the store, the file id and row, and the columns of the damaged chunk. It takes
    one string, so a DataLoader worker can re-raise it in the main process as the same type. It is
    also a ``ValueError``, the type zarr raises for it, so code that caught that still does.
    """


# what to do about a damaged chunk ({url}: the store): find every damaged file, then rewrite them
CORRUPT_CHUNK_ADVICE = ("run soundception inspect {url} --verify to list every damaged file "
                        "(featurize --redo-corrupt rewrites them)")


def open_options(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for zarr's ``open_group``/``open_array``: ``storage_options`` only when given.

    zarr refuses ``storage_options`` with a local path, so none are passed unless there are some.
    """
    return {"storage_options": storage_options} if storage_options else {}


def store_location(group: zarr.Group) -> str:
    """Where ``group`` lives, for a message: a local store's folder, else the store's own description."""
    root = getattr(group.store, "root", None)
    return str(root) if root is not None else str(group.store)


def read_column(group: zarr.Group, name: str, url: str | None = None) -> np.ndarray:
    """A whole per-file or per-class array of the store ``group`` (at ``url``), shape ``(n,)``,
    strings as ``str``. Both sides read the store's table through this, so a damaged table reads
    the same everywhere.

    Raises:
        StoreError: one line naming the variable and what to do, when a chunk fails its checksum
            or the array's metadata cannot be read.
    """
    try:
        values = np.asarray(group[name][...])
    except Exception as error:  # a damaged chunk or zarr.json of a per-file or per-class array
        raise StoreError(f"{url or store_location(group)}: the per-file variable {name!r} cannot be read "
                         f"({one_line(error)}); the store's table is damaged: restore it from a copy, or "
                         "featurize into a new store") from None
    return schema.as_strings(values) if values.dtype.kind in "TOU" else values


class FeatureStore:
    """Read-only view of a feature store at a local path or an fsspec URL.

    Args:
        url: local path (``stores/demo.zarr``) or URL (``s3://bucket/demo.zarr``).
        storage_options: fsspec options for URLs (endpoint, credentials).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = storage_options
        try:
            self.url = normalize(url)  # file:///x is the path /x
            refuse_credentials_in_url(self.url)
        except ValueError as error:
            raise StoreError(str(error)) from None
        try:
            # not the consolidated copy: the per-array metadata is the truth while a run is growing the store
            self.group = zarr.open_group(self.url, mode="r", use_consolidated=False, **open_options(storage_options))
        except Exception as error:  # zarr raises several types for "not a group"
            raise StoreError(f"{self.url} is not a readable Zarr feature store ({one_line(error)})") from None
        attrs = dict(self.group.attrs)
        if "featurizer_config" not in attrs:
            raise StoreError(f"{self.url} is a Zarr group but not a Soundception feature store")
        try:
            image = self.group[schema.IMAGE]
        except KeyError:
            raise StoreError(f"{self.url} is a Zarr group but not a Soundception feature store") from None
        except Exception as error:  # its zarr.json is damaged
            raise StoreError(f"{self.url}: the image array's metadata cannot be read ({one_line(error)}); "
                             "the store is damaged") from None
        if attrs.get("schema_version") != schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {attrs.get('schema_version')}, "
                f"this reader understands {schema.SCHEMA_VERSION}"
            )
        self.attrs = attrs
        self.config = FeaturizerConfig.from_dict(attrs["featurizer_config"])
        self.config_hash: str = attrs["config_hash"]
        self._image = image

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers reopen the store themselves instead of pickling open handles.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])

    def _column(self, name: str) -> np.ndarray:
        return read_column(self.group, name, self.url)

    @cached_property
    def ids(self) -> np.ndarray:
        """File ids, shape ``(n_files,)``."""
        return self._column(schema.FILE)

    @cached_property
    def classes(self) -> list[str]:
        """Class ids in label order."""
        return [str(c) for c in self._column(schema.CLASS)] if schema.CLASS in self.group else []

    @cached_property
    def class_names(self) -> list[str]:
        """Human-readable class names (species) in label order."""
        if "class_name" not in self.group:
            return list(self.classes)
        return [str(n) or c for n, c in zip(self._column("class_name"), self.classes)]

    @cached_property
    def table(self) -> dict[str, np.ndarray]:
        """All per-file variables as numpy arrays keyed by name, each shape ``(n_files,)``."""
        return {name: self._column(name) for name in schema.PER_FILE if name in self.group}

    @property
    def n_files(self) -> int:
        return int(self._image.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        """Padded image array shape ``(file, channel, freq, time)``."""
        return tuple(int(s) for s in self._image.shape)  # type: ignore[return-value]

    @property
    def time_chunk(self) -> int:
        return int(self._image.chunks[3])

    def done_indices(self) -> np.ndarray:
        """Indices of files whose status is ``done``, shape ``(n_done,)``."""
        return np.flatnonzero(self.table["status"] == schema.DONE)

    @cached_property
    def background(self) -> list[list[int]]:
        """Per file, the class indices of its background species that are in the class list.

        Entries match a class id or a class name (case-insensitive); unknown species are dropped.
        The lookup is built once, so this stays fast for tens of thousands of files.
        """
        lookup = {c.lower(): i for i, c in enumerate(self.classes)}
        lookup.update({n.lower(): i for i, n in enumerate(self.class_names) if n})
        found: list[list[int]] = []
        for text in self.table["background"]:
            items = (lookup.get(item.strip().lower()) for item in str(text).split(schema.BACKGROUND_SEPARATOR))
            found.append(list(dict.fromkeys(i for i in items if i is not None)))
        return found

    @cached_property
    def events(self) -> dict[str, np.ndarray]:
        """The annotated calls (:data:`schema.PER_EVENT`): ``{name: (n_events,) array}``, rows sorted
        by file then start. ``event_file`` indexes :attr:`ids`, ``event_class`` :attr:`classes`;
        times in s, bands in Hz (NaN where none was given). Empty arrays in a store without events.

        Raises:
            StoreError: a write of the events was interrupted (lengths differ from ``event_count``).
        """
        present = [name for name in schema.PER_EVENT if name in self.group]
        if not present:
            return {name: np.zeros(0, dtype=dtype) for name, (_, dtype, _) in schema.PER_EVENT.items()}
        table = {name: self._column(name) for name in present}
        count = self.attrs.get(schema.EVENT_COUNT)
        if len(present) != len(schema.PER_EVENT) or any(len(v) != count for v in table.values()):
            raise StoreError(f"{self.url}: the event arrays are incomplete (a featurize --annotations run was "
                             "interrupted while writing them); rerun it to write them again")
        return table

    def events_of(self, index: int) -> dict[str, np.ndarray]:
        """File ``index``'s annotated calls: :attr:`events` restricted to its rows, in time order."""
        rows = self.events["event_file"] == index
        return {name: values[rows] for name, values in self.events.items()}

    def image(self, index: int) -> np.ndarray:
        """File ``index``'s whole image trimmed to its valid width: uint8 ``(channel, freq, n_frames)``.

        Raises:
            CorruptChunk: a chunk of the image fails its checksum.
        """
        width = int(self.table["n_frames"][index])
        return self._read(index, 0, width)

    def window(self, index: int, start: int, width: int) -> np.ndarray:
        """Columns ``[start, start + width)`` of file ``index``: uint8 ``(channel, freq, width)``.

        Columns past the file's valid width read as 0 (black), so a window may hang over the end.
        Only the chunks the window touches are read.

        Raises:
            CorruptChunk: a chunk the window touches fails its checksum.
        """
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        valid = int(self.table["n_frames"][index])
        start = max(0, int(start))
        stop = min(start + int(width), valid)
        out = np.zeros(self._image.shape[1:3] + (int(width),), dtype=np.uint8)
        if stop > start:
            out[:, :, : stop - start] = self._read(index, start, stop)
        return out

    def _read(self, index: int, start: int, stop: int) -> np.ndarray:
        """Columns ``[start, stop)`` of file ``index``; a checksum failure becomes :class:`CorruptChunk`."""
        try:
            return np.asarray(self._image[index, :, :, start:stop])
        except ValueError as error:  # zarr's crc32c codec: "Stored and computed checksum do not match ..."
            if "checksum" not in str(error):
                raise
            first, last = self._corrupt_columns(index, start, stop)
            reason = " ".join(str(error).split()).rstrip(".")
            raise CorruptChunk(f"corrupt chunk in {self.url}: file {self.ids[index]} (row {index}), columns "
                               f"{first}-{last}: {reason}; {CORRUPT_CHUNK_ADVICE.format(url=self.url)}") from None

    def _corrupt_columns(self, index: int, start: int, stop: int) -> tuple[int, int]:
        """First and last column (inclusive, within the valid width) of the first time chunk in
        ``[start, stop)`` that fails to read; ``(start, stop - 1)`` if each reads alone."""
        chunk, valid = self.time_chunk, int(self.table["n_frames"][index])
        for first in range(start - start % chunk, stop, chunk):
            try:
                self._image[index, :, :, first:first + chunk]
            except ValueError:
                return first, min(first + chunk, valid) - 1
        return start, stop - 1
