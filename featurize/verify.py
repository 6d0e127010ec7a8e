"""Verify a store: read every stored image object of every done file and check it against its fields.

A done file is sound when

* its ``n_frames`` (width, px) and ``duration`` (s) were written;
* the objects that hold its image are exactly those covering columns ``[0, n_frames)``: none
  missing (a missing object reads as black), none beyond (left by a wider, older image);
* every one of them decodes and passes its crc32c checksum.

:func:`verify_store` lists the problems, one :class:`Problem` per bad file, naming the columns
involved. ``soundception inspect --verify`` prints them; ``soundception featurize --redo-corrupt``
runs the same check and featurizes exactly those files again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from soundception.shared import schema
from soundception.shared.reader import FeatureStore, StoreError


@dataclass(frozen=True)
class Problem:
    """What is wrong with one done file: its ``row``, ``file_id`` and a one-line ``reason``."""

    row: int
    file_id: str
    reason: str


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`verify_store`: files checked, objects and bytes read, the bad files,
    and damage to the store's own tables (``store_problems``, one line each)."""

    files: int
    objects: int
    bytes_read: int
    problems: tuple[Problem, ...]
    store_problems: tuple[str, ...] = ()
    audio_root: str = ""

    @property
    def sound(self) -> bool:
        return not self.problems and not self.store_problems


def object_columns(image: zarr.Array) -> int:
    """Image columns per stored object along time: the shard width when sharded, else the chunk's."""
    shards = getattr(image, "shards", None)
    return int((shards or image.chunks)[3])


def _keys(group: zarr.Group, prefix: str) -> list[str]:
    async def keys() -> list[str]:
        return [key async for key in group.store.list_prefix(prefix)]

    return sync(keys())


def stored_objects(group: zarr.Group) -> dict[int, set[int]]:
    """``{row: {object index along time}}`` for every image object present in the store (one listing)."""
    pattern = re.compile(rf"^{schema.IMAGE}/c/(\d+)/\d+/\d+/(\d+)$")
    found: dict[int, set[int]] = {}
    for key in _keys(group, f"{schema.IMAGE}/c/"):
        match = pattern.match(key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return found


def _missing_objects(group: zarr.Group, name: str, n_files: int) -> list[int]:
    """Indices of ``name``'s chunks over rows ``[0, n_files)`` with no stored object."""
    chunk = group[name].chunks[0]
    present = {key.rsplit("/", 1)[-1] for key in _keys(group, f"{name}/c/")}
    return [k for k in range(math.ceil(n_files / chunk)) if str(k) not in present]


def table_problems(group: zarr.Group, table: dict[str, np.ndarray]) -> list[str]:
    """Lost objects of the store's own tables. A chunk whose values all equal the fill value is
    never stored, so a missing object is damage only where its values cannot all be the fill:
    file ids are never empty, and a file with a width and duration is never ``pending`` unless
    its status object was lost (all of them would be redone)."""
    n_files = len(table["status"])
    found = []
    chunk = group[schema.FILE].chunks[0]
    for k in _missing_objects(group, schema.FILE, n_files):
        found.append(f"file ids: rows {k * chunk}-{min((k + 1) * chunk, n_files) - 1} lost")
    chunk = group["status"].chunks[0]
    for k in _missing_objects(group, "status", n_files):
        rows = slice(k * chunk, min((k + 1) * chunk, n_files))
        featurized = int(np.sum((table["n_frames"][rows] > 0) & np.isfinite(table["duration"][rows])))
        if featurized:
            found.append(f"status: rows {rows.start}-{rows.stop - 1} lost ({featurized} of them hold a width "
                         "and duration)")
    return found


def _empty_objects(image: zarr.Array, row: int, objects: Iterable[int]) -> list[int]:
    """Objects of ``row`` stored with 0 bytes (an empty shard reads as all black instead of failing)."""
    async def sizes() -> list[int]:
        return [await image.store_path.store.getsize(f"{image.path}/c/{row}/0/0/{k}") for k in objects]

    return [k for k, size in zip(objects, sync(sizes())) if size == 0]


def check_file(image: zarr.Array, row: int, width: int, present: set[int]) -> tuple[str, int]:
    """The first thing wrong with one done file's image ("" if none) and the bytes read."""
    span = object_columns(image)
    expected = set(range(math.ceil(width / span)))
    if getattr(image, "shards", None):
        empty = _empty_objects(image, row, sorted(expected & present))
        if empty:
            k = empty[0]
            return f"{len(empty)} image object(s) empty (0 bytes), first columns {k * span}-{(k + 1) * span - 1}", 0
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        k = missing[0]
        return (f"{len(missing)} image object(s) missing, first columns {k * span}-{min((k + 1) * span, width) - 1} "
                f"(n_frames {width})"), 0
    if extra:
        k = extra[0]
        return (f"{len(extra)} image object(s) beyond its width, first columns {k * span}-{(k + 1) * span - 1} "
                f"(n_frames {width})"), 0
    read = 0
    for k in sorted(expected):
        start, stop = k * span, min((k + 1) * span, image.shape[3])
        try:
            block = image[row, :, :, start:stop]
        except Exception as error:  # checksum mismatch, undecodable bytes, truncated object
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            return f"columns {start}-{stop - 1} unreadable: {first}", read
        read += block.nbytes
    return "", read


def verify_store(url: str, storage_options: dict[str, Any] | None = None, *, threads: int = 4,
                 progress: Callable[[int, int], Any] | None = None) -> Report:
    """Check every done file of the store at ``url`` (see the module docstring); reads, writes nothing.

    ``threads`` files are read at once (object stores gain most); ``progress(checked, total)``
    is called as files finish.
    """
    store = FeatureStore(url, storage_options)
    audio_root = str(store.attrs.get("audio_root", ""))
    try:
        table = store.table
    except StoreError as error:
        return Report(0, 0, 0, (), (str(error),), audio_root)
    image = store.group[schema.IMAGE]
    done = store.done_indices()
    store_problems = table_problems(store.group, table)
    present = stored_objects(store.group)
    problems: list[Problem] = []
    totals = {"objects": 0, "bytes": 0}

    def one(row: int) -> tuple[int, str, int]:
        width, duration = int(table["n_frames"][row]), float(table["duration"][row])
        if width <= 0 or not np.isfinite(duration):
            return row, f"marked done without a width or duration (n_frames {width}, duration {duration})", 0
        reason, read = check_file(image, row, width, present.get(row, set()))
        return row, reason, read

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for checked, (row, reason, read) in enumerate(pool.map(one, (int(r) for r in done)), start=1):
            totals["bytes"] += read
            totals["objects"] += len(present.get(row, ()))
            if reason:
                problems.append(Problem(row, str(store.ids[row]), reason))
            if progress:
                progress(checked, len(done))
    return Report(len(done), totals["objects"], totals["bytes"], tuple(problems), tuple(store_problems), audio_root)


def clear_images(group: zarr.Group, rows: Iterable[int]) -> int:
    """Delete every stored image object of ``rows`` (before they are featurized again); returns the count."""
    wanted = {int(r) for r in rows}
    if not wanted:
        return 0
    keys = [f"{schema.IMAGE}/c/{row}/0/0/{k}" for row, objects in stored_objects(group).items() if row in wanted
            for k in objects]

    async def delete() -> None:
        for key in keys:
            await group.store.delete(key)

    sync(delete())
    return len(keys)


def report_lines(report: Report, url: str) -> list[str]:
    """What ``inspect --verify`` prints: a summary line, then one ``id<TAB>reason`` line per bad file."""
    head = (f"verified {report.files} done file(s): {report.objects} image object(s), "
            f"{report.bytes_read / 1e6:.1f} MB read")
    if report.sound:
        return [head + "; all sound"]
    lines = [f"store\t{problem}" for problem in report.store_problems]
    if report.store_problems:
        lines.append("the store's own tables are damaged: restore them from a copy, or featurize into a new store")
    if report.problems:
        lines = [head + f"; {len(report.problems)} bad file(s):"] + [
            f"{problem.file_id}\t{problem.reason}" for problem in report.problems] + lines + [
            f"featurize them again with: soundception featurize {report.audio_root or 'AUDIO_DIR'} --store {url} "
            "--redo-corrupt"]
    else:
        lines = [head + ":"] + lines
    return lines
