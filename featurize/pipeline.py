"""The featurize run: list the work, drop what is done, map one function over the rest.

:func:`featurize_file` is the unit of work (decode -> self-concatenate -> image -> chunk-aligned
write of that file's chunks only). :func:`featurize_store` is the driver, in three steps:

1. :func:`prepare_store` opens the store and registers the recordings and their labels;
2. :mod:`featurize.plan` lists the jobs still to do, widest first, and the stored files to redo;
3. :func:`run_jobs` maps :func:`featurize_file` over them on an injected executor (a dask
   ``Client``) or serially, writes the small per-file variables as results arrive (so an
   interrupted run resumes where it stopped) and grows the store when a file is wider than its
   header said.

The driver never imports the image code (scipy.fft): only workers (or ``client=None``) do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from soundception.featurize import store as store_io
from soundception.featurize.annotations import Event, match_events, read_annotations
from soundception.featurize.audio import DecodeError, decode, self_concatenate
from soundception.featurize.events import annotate_store, events_past_end
from soundception.featurize.labels import Labelling, label_recordings
from soundception.featurize.lock import StoreLock
from soundception.featurize.lock import describe as describe_holder
from soundception.featurize.plan import (Job, Plan, longest_first, plan_jobs, record_fingerprints,  # noqa: F401
                                         reopen_changed, reopen_corrupt, reopen_incomplete)
from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig
from soundception.shared.errors import RunFault, is_run_fault, run_fault_message
from soundception.shared.location import is_url, normalize
from soundception.shared.reader import read_column
from soundception.shared.text import one_line

log = logging.getLogger("soundception.featurize")

FAULT = "fault"  # a task's result when the machine, not the file, failed (see featurize_file)
FLUSH_SECONDS = 2.0
FLUSH_RESULTS = 64
ANNOTATION_ISSUES_SHOWN = 10


def featurize_file(source: str, index: int, store_url: str, config_dict: dict[str, Any], *,
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Featurize one recording into row ``index`` of the store; never raises for bad audio.

    Returns one of ``{"status": "done", "duration": s, "n_frames": px, "warning": str}``,
    ``{"status": "failed", "error": one line}``, ``{"status": "resize", "width": px}`` (the
    store's time axis is too short; the driver grows it and resubmits) or ``{"status": "fault",
    "error": one line}`` (a full disk, a read-only store: no other file would fare better, so the
    driver stops the run and leaves the file pending).
    """
    from soundception.featurize.image import MultiscaleImage

    config = FeaturizerConfig.from_dict(config_dict)
    try:
        samples, duration, warning = decode(source, sample_rate=config.sample_rate, storage_options=storage_options)
        if samples.size < config.min_samples:
            raise DecodeError(
                f"too short: {samples.size} samples at {config.sample_rate} Hz "
                f"(< {config.min_samples}, the shortest accepted clip)"
            )
        signal, _ = self_concatenate(samples, min_samples=math.ceil(config.min_duration * config.sample_rate))
        del samples
        image = MultiscaleImage.plan(signal, config)
        store_io.write_image(store_url, index, image.width, image.blocks, storage_options=storage_options)
    except store_io.WidthExceedsStore as error:
        return {"status": "resize", "width": error.width}
    except MemoryError:
        return {"status": schema.FAILED, "error": "out of memory while featurizing"}
    except DecodeError as error:
        return {"status": schema.FAILED, "error": one_line(error)}
    except OSError as error:
        if is_run_fault(error):
            return {"status": FAULT, "error": run_fault_message(error, writing=f"the image of {source}")}
        return {"status": schema.FAILED, "error": f"{type(error).__name__}: {one_line(error)}"}
    except Exception as error:  # one bad file must not stop the run
        return {"status": schema.FAILED, "error": f"{type(error).__name__}: {one_line(error)}"}
    if image.silent:
        warning = "; ".join(filter(None, [warning, "silent recording: constant spectrogram, image is all zeros"]))
    return {"status": schema.DONE, "duration": float(duration), "n_frames": int(image.width), "warning": warning}


@dataclass
class RunSummary:
    """What a run did and what the store now holds."""

    store: str
    submitted: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # failed in an earlier run and not retried (--retry-failed)
    warnings: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    planned_failures: int = 0  # files failed while planning (missing audio, conflicting labels), never submitted
    notes: list[str] = field(default_factory=list)
    # call annotations naming no recording (not stored) or ending after their recording (stored), one line each
    annotation_issues: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        """Submitted files this run has finished so far, done or failed."""
        return self.done + self.failed - self.planned_failures

    def progress_line(self, elapsed: float) -> str:
        """``done, failed, left`` and the audio hours featurized per second, for progress displays."""
        rate = self.audio_seconds / elapsed if elapsed > 0 else 0.0
        return (f"{self.done} done, {self.failed} failed, {self.submitted - self.finished}"
                f" left; {rate / 3600:.3f} h of audio/s ({rate:.0f}x real time)")

    def add_failure(self, file_id: str, reason: str) -> None:
        self.failed += 1
        self.failures.append((file_id, reason))

    def lines(self) -> list[str]:
        out = [f"featurized {self.done} of {self.submitted} file(s) in {self.seconds:.1f} s "
               f"({self.audio_seconds / 3600:.2f} h of audio); {self.skipped} already done, skipped"]
        if self.failed_before:
            out.append(f"{self.failed_before} file(s) failed in an earlier run and were left alone; "
                       "retry them with --retry-failed")
        if self.warnings:
            out.append(f"{self.warnings} file(s) done with a warning (silent or truncated audio); "
                       f"see the store's warning variable")
        if self.failed:
            out.append(f"{self.failed} file(s) failed; list them with: soundception inspect {self.store} --failed")
        if self.annotation_issues:
            shown = ANNOTATION_ISSUES_SHOWN
            out.append(f"{len(self.annotation_issues)} call annotation(s) name no recording (not stored) or end "
                       "after their recording (stored):")
            out += [f"  {line}" for line in self.annotation_issues[:shown]]
            if len(self.annotation_issues) > shown:
                out.append(f"  ... and {len(self.annotation_issues) - shown} more (all of them: --annotations-report FILE)")
        return out + self.notes


def prepare_store(labelling: Labelling, audio_root: str | Path, store_url: str, config: FeaturizerConfig, *,
                  new_audio_root: bool = False, **store_options: Any) -> tuple[zarr.Group, dict[str, int]]:
    """Open (or create) the store and register ``labelling``'s recordings; return it and ``{id: row}``.

    A store holds recordings of one audio folder (refused otherwise, unless ``new_audio_root``
    says the same files moved). The class list only grows, so labels already stored keep their
    meaning; files this run labels get their (possibly corrected) label, the others keep theirs.
    ``store_options`` (storage options, time chunk, zstd level) go to :func:`featurize.store.open_for_writing`.
    """
    root = str(audio_root).rstrip("/") if is_url(str(audio_root)) else str(Path(audio_root).resolve())
    group = store_io.open_for_writing(store_url, config, audio_root=root, **store_options)
    stored_root = dict(group.attrs).get("audio_root", "")
    if stored_root and stored_root != root:
        if not new_audio_root:
            raise store_io.StoreMismatch(
                f"{store_url} holds recordings from {stored_root}, this run reads {root}; file ids are paths "
                "relative to that folder, so use a new --store (or --new-audio-root if the same files moved)")
        group.attrs["audio_root"] = root
    classes, names = store_io.stored_classes(group)
    known = dict(zip(classes, names))
    for class_id, name in zip(labelling.classes, labelling.class_names):
        if class_id not in known:
            classes.append(class_id)  # appended, never sorted in: stored labels keep their index
        known[class_id] = name
    if (classes, [known[c] for c in classes]) != store_io.stored_classes(group):  # unchanged: no rewrite
        store_io.set_classes(group, classes, [known[c] for c in classes])
    class_index = {c: i for i, c in enumerate(classes)}
    entries = [{"id": r.id, "path": r.id, "label": class_index.get(r.label, -1),
                "background": schema.BACKGROUND_SEPARATOR.join(r.background)} for r in labelling.recordings]
    rows = store_io.register_files(group, entries)
    store_io.write_fields(group, {rows[e["id"]]: {"label": e["label"], "background": e["background"]}
                                  for e, r in zip(entries, labelling.recordings) if r.label})
    return group, rows


class _Recorder:
    """Writes results to the store in batches (every :data:`FLUSH_RESULTS` results or
    :data:`FLUSH_SECONDS` s), counts them in the summary and reports progress."""

    def __init__(self, group: zarr.Group, summary: RunSummary,
                 progress: Callable[[RunSummary], Any] | None, check: Callable[[], None] | None = None) -> None:
        self.group, self.summary, self.progress, self.check = group, summary, progress, check
        self.updates: dict[int, dict[str, Any]] = {}
        self.last_flush = time.monotonic()

    def record(self, job: Job, result: dict[str, Any]) -> None:
        fields = dict(result)
        if result["status"] == schema.DONE:
            self.summary.done += 1
            self.summary.audio_seconds += result["duration"]
            self.summary.warnings += bool(result["warning"])
            fields["error"] = ""
        else:
            self.summary.add_failure(job.file_id, result["error"])
            log.warning("failed: %s: %s", job.file_id, result["error"])
        self.updates[job.row] = fields
        if self.progress:
            self.progress(self.summary)
        if len(self.updates) >= FLUSH_RESULTS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.check is not None and self.updates:
            self.check()
        store_io.write_fields(self.group, self.updates)
        self.updates.clear()
        self.last_flush = time.monotonic()


def _results(client: Any, jobs: Sequence[Job], store_url: str, config: FeaturizerConfig,
             storage_options: dict[str, Any] | None) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Yield ``(job, result)`` as results arrive: serially when ``client`` is None, else via dask."""
    config_dict = config.to_dict()
    if client is None:
        for job in jobs:
            yield job, featurize_file(job.source, job.row, store_url, config_dict, storage_options=storage_options)
        return
    from distributed import as_completed

    futures = {client.submit(featurize_file, job.source, job.row, store_url, config_dict,
                             storage_options=storage_options, key=f"featurize-{job.row}-{time.time_ns()}",
                             pure=False): job
               for job in jobs}
    for future in as_completed(futures):
        job = futures.pop(future)
        try:
            result = future.result()
        except Exception as error:  # a worker died (segfault, out of memory) on this file
            result = {"status": schema.FAILED,
                      "error": f"worker died while featurizing ({type(error).__name__}: {one_line(error)})"}
        future.release()
        yield job, result


def run_jobs(group: zarr.Group, jobs: Sequence[Job], store_url: str, config: FeaturizerConfig,
             summary: RunSummary, *, client: Any = None, storage_options: dict[str, Any] | None = None,
             progress: Callable[[RunSummary], Any] | None = None,
             check: Callable[[], None] | None = None) -> None:
    """Featurize ``jobs`` into the store and record every result in it and in ``summary``.

    The time axis is first grown to the widest estimate. A file wider than that comes back as
    ``resize``; once every other task has finished (nothing writes while the array grows), the
    axis grows and those files are redone. ``check()`` runs before each write of per-file fields
    (the store lock's: it raises when the run lost its lock).

    Raises:
        RunFault: a task met a fault of the machine (a full disk); results so far are recorded,
            the files not finished stay pending for the rerun.
    """
    store_io.ensure_width(group, max((job.width for job in jobs), default=0), config)
    recorder = _Recorder(group, summary, progress, check)
    try:
        while jobs:
            too_wide: list[Job] = []
            needed = 0
            for job, result in _results(client, jobs, store_url, config, storage_options):
                if result["status"] == "resize":
                    too_wide.append(job)
                    needed = max(needed, result["width"])
                elif result["status"] == FAULT:
                    raise RunFault(result["error"])
                else:
                    recorder.record(job, result)
            recorder.flush()
            if too_wide:
                store_io.ensure_width(group, needed, config)
            jobs = too_wide
    finally:
        recorder.flush()


def featurize_store(audio_root: str | Path, store_url: str, *, config: FeaturizerConfig | None = None,
                    metadata: str | Path | None = None, labels: str = "auto", client: Any = None,
                    retry_failed: bool = False, storage_options: dict[str, Any] | None = None,
                    time_chunk: int = store_io.DEFAULT_TIME_CHUNK, zstd_level: int = 0, shard_chunks: int = 1,
                    new_audio_root: bool = False, only: Sequence[str] | None = None, redo_corrupt: bool = False,
                    progress: Callable[[RunSummary], Any] | None = None, lock: StoreLock | None = None,
                    fingerprints: Mapping[str, dict] | None = None, annotations: str | Path | None = None,
                    annotations_format: str = "auto", annotation_label_column: str | None = None) -> RunSummary:
    """Featurize every recording under ``audio_root`` into the store at ``store_url``.

    Files already ``done`` are skipped; ``failed`` ones are retried only with ``retry_failed``;
    ``pending`` ones (new, or interrupted) are (re)done. A store holds recordings of one audio
    folder (refused otherwise, unless ``new_audio_root`` says the same files moved); its class
    list only grows, so labels already stored keep their meaning. ``client`` is a dask ``Client`` or
    None for the serial path. ``progress(summary)`` is called as each file finishes, with the
    run's :class:`RunSummary` so far. ``only``: featurize just these file ids (paths relative to
    ``audio_root``); the others under the root are left out of the store. ``redo_corrupt``: verify
    every done file first (:mod:`featurize.verify`) and featurize the bad ones again. ``lock``: the
    store's :class:`~featurize.lock.StoreLock`, when the caller took it already (it stays held);
    otherwise the run takes it and releases it at the end. ``fingerprints``: ``{file id:
    :func:`featurize.audio.fingerprint`}`` of the audio as it is now; a stored file whose audio
    changed since its recorded fingerprint is featurized again (its old image objects deleted
    first), and the fingerprints are recorded in the store's ``sources`` attribute at the end.
    ``annotations``: a file or folder of call annotations (:mod:`featurize.annotations`; format by
    file, or ``annotations_format``; ``annotation_label_column`` names a Raven table's species
    column), read before anything is written and stored as the store's events
    (:func:`featurize.events.annotate_store`); events naming no recording or ending after one are
    listed in the summary's ``annotation_issues``.
    """
    config = config or FeaturizerConfig()
    started = time.perf_counter()
    # file:///x is the path /x (shared.location)
    audio_root, store_url = normalize(audio_root), normalize(store_url)
    metadata = normalize(metadata) if metadata else metadata
    labelling = label_recordings(audio_root, metadata=metadata, source=labels, storage_options=storage_options)
    annotation_notes: list[str] = []
    events = (read_annotations(annotations, format=annotations_format, label_column=annotation_label_column,
                               notes=annotation_notes) if annotations is not None else None)
    if annotation_notes:
        labelling = dataclasses.replace(labelling, notes=list(labelling.notes) + annotation_notes)
    if only is not None:
        wanted = set(only)
        labelling = dataclasses.replace(labelling, recordings=[r for r in labelling.recordings if r.id in wanted])
    if lock is None:
        store_io.check_location(store_url, storage_options)
    with contextlib.nullcontext(lock) if lock is not None else StoreLock(store_url, storage_options) as lock:
        if lock.took_over:
            log.warning("took over %s's lock from a run that ended without releasing it (%s)", store_url,
                        describe_holder(lock.took_over))
        return _featurize_locked(labelling, audio_root, store_url, config, lock, started, client=client,
                                 retry_failed=retry_failed, storage_options=storage_options, time_chunk=time_chunk,
                                 zstd_level=zstd_level, shard_chunks=shard_chunks, new_audio_root=new_audio_root,
                                 redo_corrupt=redo_corrupt, progress=progress, fingerprints=fingerprints or {},
                                 events=events)


def _featurize_locked(labelling: Labelling, audio_root: str | Path, store_url: str, config: FeaturizerConfig,
                      lock: StoreLock, started: float, *, client: Any, retry_failed: bool,
                      storage_options: dict[str, Any] | None, time_chunk: int, zstd_level: int, shard_chunks: int,
                      new_audio_root: bool, redo_corrupt: bool,
                      progress: Callable[[RunSummary], Any] | None, fingerprints: Mapping[str, dict],
                      events: list[Event] | None = None) -> RunSummary:
    """:func:`featurize_store` once the run holds the store's lock."""
    group, rows = prepare_store(labelling, audio_root, store_url, config, new_audio_root=new_audio_root,
                                storage_options=storage_options, time_chunk=time_chunk, zstd_level=zstd_level,
                                shard_chunks=shard_chunks)
    notes = list(labelling.notes) + reopen_incomplete(group) + reopen_changed(group, rows, fingerprints)
    matched, annotation_issues = match_events(events or [], [r.id for r in labelling.recordings])
    if events is not None:
        notes += annotate_store(group, rows, matched, {r.id for r in labelling.recordings if r.label})
    if redo_corrupt:
        notes += reopen_corrupt(group, store_url, storage_options)
    plan = plan_jobs(labelling.recordings, rows, read_column(group, "status"), retry_failed=retry_failed)
    summary = RunSummary(store=store_url, submitted=len(plan.jobs), skipped=plan.skipped,
                         failed_before=plan.failed_before, notes=notes, annotation_issues=annotation_issues)
    for _, file_id, reason in plan.failures:
        summary.add_failure(file_id, reason)
    summary.planned_failures = len(plan.failures)
    store_io.write_fields(group, {row: {"status": schema.FAILED, "error": reason} for row, _, reason in plan.failures})
    run_jobs(group, longest_first(plan.jobs, config, storage_options), store_url, config, summary, client=client,
             storage_options=storage_options, progress=progress, check=lock.check)
    lock.check()
    record_fingerprints(group, {i: f for i, f in fingerprints.items() if i in rows})
    summary.annotation_issues += events_past_end(group, rows, matched)
    store_io.consolidate(group)  # the attributes this run wrote (sources, audio_root) rewrote the group's metadata
    summary.seconds = time.perf_counter() - started
    return summary
