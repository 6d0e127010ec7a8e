"""The work of a featurize run, listed before anything runs: which recordings, in which order, and
which stored files must be done again.

* :func:`plan_jobs` (pure) turns the recordings and the store's status into :class:`Job` s and
  failures; :func:`longest_first` orders the jobs by their image width estimated from the file
  headers (:func:`estimate_width`), so dask can balance them;
* :func:`reopen_incomplete`, :func:`reopen_corrupt` and :func:`reopen_changed` mark stored files
  ``pending`` again, their old image objects deleted, when a lost field write, a damaged object or
  audio edited since it was featurized means they must be redone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from soundception.featurize import store as store_io
from soundception.featurize.audio import audio_seconds
from soundception.shared.location import is_url
from soundception.shared.reader import read_column
from soundception.featurize.labels import Recording
from soundception.featurize.verify import clear_images, verify_store
from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig


def estimate_width(path: str, config: FeaturizerConfig, storage_options: dict[str, Any] | None = None) -> int:
    """Image width in px from the file header (0 if the header cannot be read).

    The length is :func:`featurize.audio.audio_seconds` (the header; an upper bound from the size
    for a remote file whose first bytes do not give it).
    Over-estimating is cheap (the store's padded axis holds no objects past a file's width);
    under-estimating makes the file wait for the axis to grow and be done again.
    """
    seconds = audio_seconds(path, storage_options)
    if seconds <= 0:
        return 0
    repeats = max(1, math.ceil(config.min_duration / seconds))
    return config.width_for(seconds * repeats * 1.01) + 2  # resampler edge effects


@dataclass(frozen=True)
class Job:
    """One recording to featurize into row ``row`` of the store.

    Attributes:
        row: the recording's index on the store's ``file`` axis.
        file_id: its id (path relative to the audio root).
        source: its absolute path on this machine.
        width: estimated image width in px (0 until :func:`longest_first` reads the header).
    """

    row: int
    file_id: str
    source: str
    width: int = 0


@dataclass(frozen=True)
class Plan:
    """The work of one run: ``jobs`` to featurize, ``failures`` to record without featurizing
    (``(row, file_id, reason)``), the number of files ``skipped`` because they are done and of
    those ``failed_before`` (failed in an earlier run, not retried)."""

    jobs: tuple[Job, ...]
    failures: tuple[tuple[int, str, str], ...]
    skipped: int
    failed_before: int = 0


def plan_jobs(recordings: Sequence[Recording], rows: Mapping[str, int], status: Sequence[str], *,
              retry_failed: bool = False) -> Plan:
    """List the work for ``recordings``; reads and writes nothing.

    Args:
        recordings: the recordings found under the audio root, in order.
        rows: store row of every recording id.
        status: the store's status per row (``pending``, ``done`` or ``failed``).
        retry_failed: plan files that failed in an earlier run again.

    A recording that cannot be featurized (``problem``: missing, conflicting labels) is a failure
    unless it is already done; a done file is skipped, and a failed one is counted as failed before
    and left alone unless ``retry_failed``.
    Everything else (new, pending after an interruption) becomes a :class:`Job`.
    """
    jobs: list[Job] = []
    failures: list[tuple[int, str, str]] = []
    skipped = failed_before = 0
    for recording in recordings:
        row = rows[recording.id]
        if recording.problem:
            if status[row] != schema.DONE:
                failures.append((row, recording.id, recording.problem))
        elif status[row] == schema.DONE:
            skipped += 1
        elif status[row] == schema.FAILED and not retry_failed:
            failed_before += 1
        else:
            jobs.append(Job(row, recording.id, recording.path))
    return Plan(tuple(jobs), tuple(failures), skipped, failed_before)


def longest_first(jobs: Sequence[Job], config: FeaturizerConfig,
                  storage_options: dict[str, Any] | None = None) -> tuple[Job, ...]:
    """``jobs`` with their width estimated from the file headers, widest first (balances the workers).

    Headers are read by 16 threads: on object storage each is a request or two.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16 if any(is_url(job.source) for job in jobs) else 1) as pool:
        widths = list(pool.map(lambda job: estimate_width(job.source, config, storage_options), jobs))
    sized = [dataclasses.replace(job, width=width) for job, width in zip(jobs, widths)]
    return tuple(sorted(sized, key=lambda job: -job.width))


def reopen_incomplete(group: zarr.Group) -> list[str]:
    """Mark ``pending`` every file marked done without a width or duration; returns a note if any.

    Such rows are what lost field writes leave behind (a done mark whose ``n_frames`` never
    arrived): their images cannot be read back, so they are featurized again.
    """
    status = read_column(group, "status")
    broken = np.flatnonzero((status == schema.DONE) & ((read_column(group, "n_frames") <= 0)
                                                       | ~np.isfinite(read_column(group, "duration"))))
    if not broken.size:
        return []
    clear_images(group, broken)
    store_io.write_fields(group, {int(row): {"status": schema.PENDING, "error": ""} for row in broken})
    return [f"{broken.size} file(s) were marked done without a width or duration; featurized again"]


def reopen_changed(group: zarr.Group, rows: Mapping[str, int], fingerprints: Mapping[str, dict]) -> list[str]:
    """Mark ``pending`` every stored file whose audio's fingerprint (:func:`featurize.audio.fingerprint`)
    differs from the one recorded when it was featurized, its image objects deleted first (a shorter
    new recording must not leave objects past its width); returns a note if any. Files with no
    recorded fingerprint are left as they are."""
    known = dict(group.attrs).get(schema.SOURCES, {})
    status = read_column(group, "status")
    changed = [rows[i] for i, now in fingerprints.items()
               if i in known and i in rows and known[i] != now and status[rows[i]] != schema.PENDING]
    if not changed:
        return []
    clear_images(group, changed)
    store_io.write_fields(group, {row: {"status": schema.PENDING, "error": "", "warning": ""} for row in changed})
    return [f"{len(changed)} file(s) changed since they were featurized; featurized again"]


def record_fingerprints(group: zarr.Group, fingerprints: Mapping[str, dict]) -> None:
    """Record ``fingerprints`` in the store's ``sources`` attribute (merged with those already there)."""
    if not fingerprints:
        return
    known = dict(dict(group.attrs).get(schema.SOURCES, {}))
    known.update({i: dict(f) for i, f in fingerprints.items()})
    group.attrs[schema.SOURCES] = known


def reopen_corrupt(group: zarr.Group, store_url: str, storage_options: dict[str, Any] | None) -> list[str]:
    """Verify the store (:func:`featurize.verify.verify_store`) and mark every bad file ``pending``,
    its image objects deleted, so this run featurizes exactly those again; returns notes."""
    report = verify_store(store_url, storage_options)
    if report.store_problems:
        raise store_io.StoreMismatch(f"{store_url}: {report.store_problems[0]}; the store's own tables are damaged, "
                                     "which --redo-corrupt cannot repair (nothing was rewritten)")
    rows = [problem.row for problem in report.problems]
    clear_images(group, rows)
    store_io.write_fields(group, {row: {"status": schema.PENDING, "error": ""} for row in rows})
    notes = [f"verify: {report.files} done file(s) checked, {len(rows)} bad, featurized again"]
    notes += [f"  {problem.file_id}: {problem.reason}" for problem in report.problems]
    return notes
