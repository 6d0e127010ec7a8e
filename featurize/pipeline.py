"""The featurize run: list the work, drop what is done, map one function over the rest.

:func:`featurize_file` is the unit of work (decode -> self-concatenate -> image -> chunk-aligned
write of that file's chunks only). :func:`featurize_store` is the driver: it registers files,
submits the work to an injected executor (a dask ``Client``) or runs it serially, and writes the
small per-file variables as results arrive, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurize import store as store_io
from featurize.audio import DecodeError, decode, self_concatenate
from featurize.image import MultiscaleImage
from featurize.labels import Labelling, label_recordings
from shared import schema
from shared.config import FeaturizerConfig

log = logging.getLogger("soundception.featurize")

FLUSH_SECONDS = 2.0
FLUSH_RESULTS = 64


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def featurize_file(source: str, index: int, store_url: str, config_dict: dict[str, Any], *,
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Featurize one recording into row ``index`` of the store; never raises for bad audio.

    Returns one of ``{"status": "done", "duration": s, "n_frames": px, "warning": str}``,
    ``{"status": "failed", "error": one line}`` or ``{"status": "resize", "width": px}`` (the
    store's time axis is too short; the driver grows it and resubmits).
    """
    config = FeaturizerConfig.from_dict(config_dict)
    try:
        samples, duration, warning = decode(source, sample_rate=config.sample_rate)
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
        return {"status": schema.FAILED, "error": _one_line(error)}
    except Exception as error:  # one bad file must not stop the run
        return {"status": schema.FAILED, "error": f"{type(error).__name__}: {_one_line(error)}"}
    if image.silent:
        warning = "; ".join(filter(None, [warning, "silent recording: constant spectrogram, image is all zeros"]))
    return {"status": schema.DONE, "duration": float(duration), "n_frames": int(image.width), "warning": warning}


def estimate_width(path: str, config: FeaturizerConfig) -> int:
    """Image width in px from the file header (0 if the header cannot be read)."""
    import soundfile

    try:
        info = soundfile.info(path)
        seconds = info.frames / info.samplerate
    except Exception:
        return 0
    if seconds <= 0:
        return 0
    repeats = max(1, math.ceil(config.min_duration / seconds))
    return config.width_for(seconds * repeats * 1.01) + 2  # resampler edge effects


@dataclass
class RunSummary:
    """What a run did and what the store now holds."""

    store: str
    submitted: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    warnings: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"featurized {self.done} of {self.submitted} file(s) in {self.seconds:.1f} s "
               f"({self.audio_seconds / 3600:.2f} h of audio); {self.skipped} already done, skipped"]
        if self.warnings:
            out.append(f"{self.warnings} file(s) done with a warning (silent or truncated audio); "
                       f"see the store's warning variable")
        if self.failed:
            out.append(f"{self.failed} file(s) failed; list them with: soundception inspect {self.store} --failed")
        return out + self.notes


# glibc settings for featurize workers: blocks up to 32 MB come from the heap and up to 256 MB of
# freed heap is kept, so the per-chunk arrays are reused instead of mapped and faulted in anew
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 1 << 25, "MALLOC_TRIM_THRESHOLD_": 1 << 28}


def local_client(n_workers: int | None = None, *, dashboard_address: str | None = ":0") -> Any:
    """A dask ``Client`` on a new ``LocalCluster``: one single-threaded worker process per core.

    dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536`` in workers, which makes glibc hand every
    freed block of a few MB back to the kernel; the featurizer allocates such blocks for every
    chunk, so workers would spend much of their time page-faulting. Our workers get
    :data:`WORKER_MALLOC` instead, and no statistical profiler (it samples every thread's stack
    every 10 ms); the dashboard still shows tasks. Both measured in bench/featurize.py.
    """
    import dask
    from distributed import Client, LocalCluster

    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_MALLOC.items()}
    saved = dict(os.environ)  # nannies copy their pre-spawn variables into this process's environment
    try:
        with dask.config.set({**settings, "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                                   processes=True, dashboard_address=dashboard_address)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Client(cluster)


def _executor_results(client: Any, jobs: list[tuple[int, str]], store_url: str, config: FeaturizerConfig,
                      storage_options: dict[str, Any] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(index, result)`` as results arrive: serially when ``client`` is None, else via dask."""
    config_dict = config.to_dict()
    if client is None:
        for index, source in jobs:
            yield index, featurize_file(source, index, store_url, config_dict, storage_options=storage_options)
        return
    from distributed import as_completed

    futures = {}
    for index, source in jobs:
        future = client.submit(featurize_file, source, index, store_url, config_dict,
                               storage_options=storage_options, key=f"featurize-{index}-{time.time_ns()}",
                               pure=False)
        futures[future] = index
    for future in as_completed(futures):
        index = futures.pop(future)
        try:
            result = future.result()
        except Exception as error:  # a worker died (segfault, out of memory) on this file
            result = {"status": schema.FAILED,
                      "error": f"worker died while featurizing ({type(error).__name__}: {_one_line(error)})"}
        future.release()
        yield index, result


def featurize_store(audio_root: str | Path, store_url: str, *, config: FeaturizerConfig | None = None,
                    metadata: str | Path | None = None, labels: str = "auto", client: Any = None,
                    retry_failed: bool = False, storage_options: dict[str, Any] | None = None,
                    time_chunk: int = store_io.DEFAULT_TIME_CHUNK, zstd_level: int = 0,
                    new_audio_root: bool = False,
                    progress: Callable[[int], Any] | None = None) -> RunSummary:
    """Featurize every recording under ``audio_root`` into the store at ``store_url``.

    Files already ``done`` are skipped; ``failed`` ones are retried only with ``retry_failed``;
    ``pending`` ones (new, or interrupted) are (re)done. A store holds recordings of one audio
    folder (refused otherwise, unless ``new_audio_root`` says the same files moved); its class
    list only grows, so labels already stored keep their meaning. ``client`` is a dask ``Client`` or
    None for the serial path. ``progress(n)`` is called with the number of files finished.
    """
    config = config or FeaturizerConfig()
    started = time.perf_counter()
    labelling: Labelling = label_recordings(audio_root, metadata=metadata, source=labels)
    root = str(Path(audio_root).resolve())
    group = store_io.open_for_writing(store_url, config, storage_options=storage_options,
                                      time_chunk=time_chunk, zstd_level=zstd_level, audio_root=root)
    stored_root = dict(group.attrs).get("audio_root", "")
    if stored_root and stored_root != root:
        if not new_audio_root:
            raise store_io.StoreMismatch(
                f"{store_url} holds recordings from {stored_root}, this run reads {root}; file ids are paths "
                "relative to that folder, so use a new --store (or --new-audio-root if the same files moved)")
        group.attrs["audio_root"] = root
    # the class list only grows: classes already stored keep their index, new ones are appended
    classes, names = store_io.stored_classes(group)
    known = dict(zip(classes, names))
    for class_id, name in zip(labelling.classes, labelling.class_names):
        if class_id not in known:
            classes.append(class_id)
        known[class_id] = name
    store_io.set_classes(group, classes, [known[c] for c in classes])
    class_index = {c: i for i, c in enumerate(classes)}
    entries = [{"id": r.id, "path": r.id, "label": class_index.get(r.label, -1),
                "background": schema.BACKGROUND_SEPARATOR.join(r.background)} for r in labelling.recordings]
    index = store_io.register_files(group, entries)
    # labels do not change images: files this run labels get their (possibly corrected) label;
    # files it does not label keep what the store has
    store_io.write_fields(group, {index[e["id"]]: {"label": e["label"], "background": e["background"]}
                                  for e, r in zip(entries, labelling.recordings) if r.label})

    summary = RunSummary(store=store_url, notes=list(labelling.notes))
    status = schema.as_strings(group["status"][...])
    updates: dict[int, dict[str, Any]] = {}
    jobs: list[tuple[int, str]] = []
    for recording in labelling.recordings:
        row = index[recording.id]
        if recording.problem:
            if status[row] != schema.DONE:
                updates[row] = {"status": schema.FAILED, "error": recording.problem}
                summary.failed += 1
                summary.failures.append((recording.id, recording.problem))
            continue
        if status[row] == schema.DONE or (status[row] == schema.FAILED and not retry_failed):
            summary.skipped += 1
            continue
        jobs.append((row, recording.path))
    store_io.write_fields(group, updates)
    updates.clear()
    summary.submitted = len(jobs)

    widths = {row: estimate_width(path, config) for row, path in jobs}
    store_io.ensure_width(group, max(widths.values(), default=0), config)
    jobs.sort(key=lambda job: -widths[job[0]])  # longest first balances the workers
    ids = {row: rid for rid, row in index.items()}
    finished, last_flush = 0, time.monotonic()
    try:
        while jobs:
            too_wide: list[tuple[int, str]] = []
            needed = 0
            sources = dict(jobs)
            for row, result in _executor_results(client, jobs, store_url, config, storage_options):
                if result["status"] == "resize":
                    too_wide.append((row, sources[row]))
                    needed = max(needed, result["width"])
                    continue
                updates[row] = dict(result)
                if result["status"] == schema.DONE:
                    summary.done += 1
                    summary.audio_seconds += result["duration"]
                    summary.warnings += bool(result["warning"])
                    updates[row]["error"] = ""
                else:
                    summary.failed += 1
                    summary.failures.append((ids[row], result["error"]))
                    log.warning("failed: %s: %s", ids[row], result["error"])
                finished += 1
                if progress:
                    progress(finished)
                if len(updates) >= FLUSH_RESULTS or time.monotonic() - last_flush > FLUSH_SECONDS:
                    store_io.write_fields(group, updates)
                    updates.clear()
                    last_flush = time.monotonic()
            store_io.write_fields(group, updates)
            updates.clear()
            if too_wide:  # no task is running now, so growing the array is safe
                store_io.ensure_width(group, needed, config)
            jobs = too_wide
    finally:
        store_io.write_fields(group, updates)
    summary.seconds = time.perf_counter() - started
    return summary
