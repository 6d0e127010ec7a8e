"""``soundception predict`` over a feature store: a checkpoint's answers as tables people open elsewhere.

The work is listed first, recordings already predicted are dropped, then the rest stream through
:func:`train.inference.file_windows`::

    OUT/journal/<hash>.npz   one file per predicted recording (:mod:`train.journal`), written
                             atomically as it finishes: its key, recording scores and (with
                             --segments) segment scores. A rerun skips every recording whose key
                             matches; a crash loses nothing written.
    OUT/predictions.csv, OUT/raven/, OUT/audacity/, OUT/birdclef/
                             the chosen formats (:mod:`train.tables`), rebuilt from the journal at
                             the end of every run, one entry at a time (memory does not grow with
                             the number of recordings), so they always hold every predicted recording.
    OUT/failures.csv         file,stage,error: recordings that could not be featurized or read.
    OUT/settings.json        checkpoint (path, sha256, step), options, versions, counts, times.
    OUT/classes.csv          class_id,class_name: the journal's score columns, in order.

A recording's key is its file id, its source file's size and modification time where the audio is
known (else the store's image width and duration), the checkpoint's sha256 and the options that
change scores (window hop, segment length). ``--top-k``, ``--min-score``, ``--thresholds``,
``--calibration`` and formats only filter or map the journal's scores and can change on a rerun
without predicting again.
"""

from __future__ import annotations

import csv
import contextlib
import io
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundception.shared import schema
from soundception.shared.decisions import NOISE_LABEL
from soundception.shared.progress import Progress
from soundception.shared.reader import FeatureStore
from soundception.train import tables
from soundception.train.journal import JOURNAL_VERSION, Prediction, holds, read_journal, write_journal
from soundception.train.config import UserError
from soundception.train.embeddings import open_embeddings, write_file_embeddings, written
from soundception.train.inference import FileWindows, file_windows
from soundception.train.runtime import bound_heap, resolve_device
from soundception.train.segments import segment_scores
from soundception.train.trained import TrainedModel, load_trained_model

DEFAULT_MIN_SCORE = 0.1  # Raven and Audacity tables only; BirdNET's default for its tables


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        hop_seconds: seconds between window starts (``None``: half the training window).
        segment_seconds: score segments of this length (``None``: one ranked list per recording).
        top_k: at most this many species per recording or segment in the tables.
        min_score: leave out scores below this from the Raven and Audacity tables (the CSV keeps
            every top-k row; BirdCLEF run files ignore both filters and list the challenge's 100
            best species, which its MAP needs). 0.1, BirdNET's default for its tables.
        thresholds: class id -> its own ``min_score`` for the Raven and Audacity tables
            (:mod:`train.thresholds`); ``None``: the species never reached the asked precision and
            is left out of them; a class not listed falls back to ``min_score``.
        calibration: ``{"recording": {"slope", "intercept"}, "segment": ... or None}``
            (:mod:`train.calibrate`): every table's scores are mapped through it.
        formats: any of :data:`train.tables.FORMATS`.
        combined: one Raven table for all recordings instead of one per recording.
        batch_size: windows per forward pass; workers: DataLoader processes reading windows.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
    """

    hop_seconds: float | None = None
    segment_seconds: float | None = None
    top_k: int = 5
    min_score: float = DEFAULT_MIN_SCORE
    thresholds: Mapping[str, float | None] | None = None
    calibration: Mapping[str, Any] | None = None
    formats: tuple[str, ...] = ("csv",)
    combined: bool = False
    batch_size: int = 8
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in tables.FORMATS]
        if unknown or not self.formats:
            raise UserError(f"unknown format {unknown[0] if unknown else '(none)'}; choose from {list(tables.FORMATS)}")
        if self.hop_seconds is not None and not self.hop_seconds > 0:
            raise UserError(f"--hop must be positive seconds, got {self.hop_seconds}")
        if self.segment_seconds is not None and not self.segment_seconds > 0:
            raise UserError(f"--segments must be positive seconds, got {self.segment_seconds}")
        if self.top_k < 1 or not 0.0 <= self.min_score <= 1.0:
            raise UserError(f"--top-k must be >= 1 and --min-score in [0, 1], got {self.top_k} and {self.min_score}")
        if self.calibration is not None and self.segment_seconds is not None and not self.calibration.get("segment"):
            raise UserError("the calibration holds no segment map (its store had no annotated calls): calibrate on a "
                            "store featurized with --annotations, or predict without --segments")
        if self.batch_size < 1 or self.workers < 0:
            raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {self.batch_size} and {self.workers}")


# ------------------------------------------------------------------------------------------ the work


def result_key(file_id: str, source: Mapping[str, Any], trained: TrainedModel, options: PredictOptions,
               hop: int) -> str:
    """What a recording's scores depend on, as one JSON string (see the module docstring)."""
    return json.dumps({"journal": JOURNAL_VERSION, "file": file_id, "source": dict(source),
                       "checkpoint": trained.digest, "hop_px": hop, "segment_seconds": options.segment_seconds},
                      sort_keys=True)


# ------------------------------------------------------------------------------------------ prediction


def hop_px(trained: TrainedModel, options: PredictOptions) -> int:
    seconds = options.hop_seconds if options.hop_seconds is not None else trained.crop_seconds / 2
    return max(1, int(round(seconds * trained.featurizer_config.pixels_per_second)))


def answer(windows: FileWindows, *, file_id: str, path: str, duration: float, n_frames: int, trained: TrainedModel,
           options: PredictOptions) -> Prediction:
    """One recording's :class:`Prediction` from its window results."""
    prediction = Prediction(file=file_id, duration=duration, path=path, scores=windows.recording_scores())
    if options.segment_seconds is not None:
        config = trained.featurizer_config
        segments = segment_scores(windows, width=trained.crop_width, n_frames=n_frames, duration=duration,
                                  pixels_per_second=config.pixels_per_second, segment_seconds=options.segment_seconds,
                                  nyquist=config.sample_rate / 2)
        prediction.segments, prediction.segment_scores, prediction.bands = (segments.bounds, segments.scores,
                                                                            segments.bands)
    return prediction


def detections(prediction: Prediction, trained: TrainedModel, *, top_k: int, min_score: float,
               segments: bool, calibration: Mapping[str, Any] | None = None) -> list[tables.Detection]:
    """Table rows: the ``top_k`` best species (score >= ``min_score``) per recording or per segment,
    scores mapped through ``calibration`` (:class:`train.calibration.Platt` dicts) when given."""
    nyquist = trained.featurizer_config.sample_rate / 2
    if segments:
        scored = calibrated(prediction.segment_scores, calibration, "segment")
        spans = [(tuple(b), s, tuple(f)) for b, s, f in zip(prediction.segments, scored, prediction.bands)]
    else:
        spans = [((0.0, prediction.duration), calibrated(prediction.scores, calibration, "recording"),
                  (0.0, nyquist))]
    rows = []
    for (start, end), scores, (low, high) in spans:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:top_k]
        for rank, c in enumerate(order, start=1):
            if scores[c] >= min_score:
                rows.append(tables.Detection(prediction.file, float(start), float(end), trained.classes[c],
                                             trained.class_names[c], float(scores[c]), rank, float(low), float(high),
                                             prediction.path).rounded())
    return rows


def calibrated(scores: np.ndarray, calibration: Mapping[str, Any] | None, kind: str) -> np.ndarray:
    """``scores`` through the ``kind`` map of ``calibration`` (unchanged without one)."""
    if calibration is None:
        return np.asarray(scores)
    from soundception.train.calibration import Platt

    return Platt.from_dict(calibration[kind]).apply(scores)


def shown(rows: Sequence[tables.Detection], *, min_score: float,
          thresholds: Mapping[str, float | None] | None) -> list[tables.Detection]:
    """The rows the Raven and Audacity tables list: score >= the species' threshold (``min_score`` for
    a species without one; none of a species whose threshold is ``None``), and none of the class
    :data:`shared.decisions.NOISE_LABEL` (a head or model that learned from a review's wrong
    detections has it; it is no species to open in Raven; the CSV keeps it)."""
    kept = []
    for row in rows:
        if row.class_id == NOISE_LABEL:
            continue
        threshold = thresholds.get(row.class_id, min_score) if thresholds is not None else min_score
        if threshold is not None and row.score >= threshold:
            kept.append(row)
    return kept


def write_tables(out: Path, entries: Mapping[str, str], trained: TrainedModel, options: PredictOptions) -> list[Path]:
    """Every chosen format, streamed from the journal one recording at a time; returns the files written.

    Args:
        entries: file id -> journal key, in table order (every one must be in the journal).

    Only one recording's :class:`Prediction` and rows are held at a time: tables that gather every
    recording are appended to as the entries are read, and each is renamed into place at the end
    (:func:`train.tables.atomic_open`), so a crash leaves the previous tables whole.
    """
    segments = options.segment_seconds is not None
    chosen = options.formats
    whole_seconds = segments and float(options.segment_seconds).is_integer()
    ids = tables.media_ids(list(entries)) if "birdclef" in chosen else {}
    top = tables.BIRDCLEF_MAX_SPECIES
    written: dict[str, list[Path]] = {name: [] for name in tables.FORMATS}
    with contextlib.ExitStack() as stack:

        def gathered(name: str, path: Path, header: str = "") -> Any:
            written[name].append(path)
            handle = stack.enter_context(tables.atomic_open(path))
            handle.write(header)
            return handle

        csv_table = gathered("csv", out / "predictions.csv", tables.csv_text([])) if "csv" in chosen else None
        combined = (gathered("raven", out / "raven" / "combined.selections.txt", tables.raven_text([]))
                    if "raven" in chosen and options.combined else None)
        recordings = gathered("birdclef", out / "birdclef" / "recordings.txt") if "birdclef" in chosen else None
        segment_table = (gathered("birdclef", out / "birdclef" / "segments.txt")
                         if recordings is not None and whole_seconds else None)
        selections, offset = 0, 0.0
        for file_id, key in entries.items():
            prediction = read_journal(out, file_id, key)
            if prediction is None:
                raise UserError(f"{out / 'journal'}: the entry of {file_id!r} went missing or is unreadable; "
                                "rerun the same command to predict it again")
            every = detections(prediction, trained, top_k=options.top_k, min_score=0.0, segments=segments,
                               calibration=options.calibration)
            if csv_table is not None:  # the CSV keeps every top-k row: filters are for the tables people open
                csv_table.write(tables.csv_text(every, header=False))
            rows = shown(every, min_score=options.min_score, thresholds=options.thresholds)
            if combined is not None:  # recordings laid end to end, selections numbered on
                combined.write(tables.raven_text(rows, offsets={file_id: offset}, header=False,
                                                 first_selection=selections + 1))
                selections, offset = selections + len(rows), offset + prediction.duration
            elif "raven" in chosen:
                written["raven"].append(tables.write_file(out / "raven" / tables.table_name(file_id, ".selections.txt"),
                                                          tables.raven_text(rows)))
            if "audacity" in chosen:
                written["audacity"].append(tables.write_file(out / "audacity" / tables.table_name(file_id, ".txt"),
                                                             tables.audacity_text(rows)))
            if recordings is not None:  # BirdCLEF's MAP needs its 100 best species, whatever the filters
                recordings.write(tables.birdclef_recording_text(
                    detections(prediction, trained, top_k=top, min_score=0.0, segments=False,
                               calibration=options.calibration), ids))
            if segment_table is not None:
                segment_table.write(tables.birdclef_segment_text(
                    detections(prediction, trained, top_k=top, min_score=0.0, segments=True,
                               calibration=options.calibration), ids))
    return [path for name in tables.FORMATS for path in written[name]]


def write_failures(out: Path, failures: Sequence[tuple[str, str, str]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "stage", "error"))
    writer.writerows(failures)
    return tables.write_file(out / "failures.csv", text.getvalue())


def write_classes(out: Path, trained: TrainedModel) -> Path:
    """``OUT/classes.csv`` (``class_id,class_name``): the journal's score columns, in order, so that a
    reader of the journal (``soundception review``) needs no checkpoint."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("class_id", "class_name"))
    writer.writerows(zip(trained.classes, trained.class_names))
    return tables.write_file(out / "classes.csv", text.getvalue())


def versions() -> dict[str, str]:
    import numpy
    import timm
    import torch
    import zarr
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("soundception")
    except PackageNotFoundError:
        own = "unknown"
    return {"soundception": own, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "zarr": zarr.__version__}


def predict_store(checkpoint: str | Path, store_url: str, out: str | Path, options: PredictOptions = PredictOptions(),
                  *, file_ids: Sequence[str] | None = None, sources: Mapping[str, Mapping[str, Any]] | None = None,
                  failures: Sequence[tuple[str, str, str]] = (), storage_options: dict[str, Any] | None = None,
                  progress: bool = True, trained: TrainedModel | None = None,
                  embeddings: str | Path | None = None) -> dict[str, Any]:
    """Predict every done recording of a store (or ``file_ids``) into ``out``; see the module docstring.

    Args:
        sources: file id -> ``{"size", "mtime", "path"}`` of its audio file, when known (audio input).
        failures: earlier failures to report with this run's (``(file, stage, error)``).
        embeddings: also write every window's pooled features to this Zarr (:mod:`train.embeddings`).

    Returns:
        A summary: ``predicted`` (this run), ``reused`` (from the journal), ``failed``, ``tables``, ``out``.
    """
    started = time.time()
    out = Path(out)
    bound_heap()  # memory bounded by the batch, not by how long the run has gone on
    trained = trained or load_trained_model(checkpoint, resolve_device(options.device))
    store = FeatureStore(store_url, storage_options)
    trained.check_store(store)
    unknown = sorted(set(options.thresholds or ()) - set(trained.classes))
    if unknown:
        raise UserError(f"the thresholds name {len(unknown)} class(es) {checkpoint} does not know, e.g. {unknown[0]!r}")
    table = store.table
    position = {file_id: i for i, file_id in enumerate(store.ids)}
    wanted = list(store.ids) if file_ids is None else list(file_ids)
    missing = [f for f in wanted if f not in position]
    if missing:
        raise UserError(f"{store_url} has no file {missing[0]!r}")
    failed = list(failures)
    hop = hop_px(trained, options)
    audio_root = str(store.attrs.get("audio_root", ""))
    keys, paths, todo, done = {}, {}, [], set()
    group = None
    if embeddings is not None:
        group = open_embeddings(embeddings, wanted, features=trained.model.main_head[-1].in_features, attrs={
            "checkpoint_sha256": trained.digest, "config_hash": trained.config_hash,
            "window_seconds": trained.crop_seconds, "hop_seconds": hop / trained.featurizer_config.pixels_per_second})
    embedded = written(group) if group is not None else {}
    for file_id in wanted:
        index = position[file_id]
        status = table["status"][index]
        if status != schema.DONE:
            reason = table["error"][index] if status == schema.FAILED else "not featurized yet (status pending)"
            failed.append((file_id, "featurize", reason))
            continue
        source = dict((sources or {}).get(file_id) or {"n_frames": int(table["n_frames"][index]),
                                                      "duration": float(table["duration"][index]),
                                                      "store_config": store.config_hash})
        paths[file_id] = str(source.pop("path", "") or os.path.join(audio_root, str(table["path"][index])))
        keys[file_id] = result_key(file_id, source, trained, options, hop)
        if not holds(out, file_id, keys[file_id]) or (group is not None and not embedded.get(file_id)):
            todo.append(index)
        else:
            done.add(file_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "featurizer_config.json").write_text(json.dumps(trained.featurizer_config.to_dict(), indent=2) + "\n")
    write_classes(out, trained)
    reused = len(done)
    rows = {file_id: row for row, file_id in enumerate(wanted)}
    predicted = run_predictions(trained, store, todo, out, keys, paths, options, hop, failed, done, progress,
                                embedding_rows=(group, rows))
    entries = {f: keys[f] for f in wanted if f in done}
    table_files = write_tables(out, entries, trained, options)
    write_failures(out, failed)
    settings = {"checkpoint": str(trained.path), "checkpoint_sha256": trained.digest, "step": trained.step,
                "config_hash": trained.config_hash, "store": store_url, "options": asdict(options),
                "device_used": str(trained.device), "files": len(wanted),
                "window_px": trained.crop_width, "hop_px": hop, "classes": len(trained.classes),
                "versions": versions(), "predicted": predicted, "reused": reused, "failed": len(failed),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "seconds": round(time.time() - started, 3)}
    tables.write_file(out / "settings.json", json.dumps(settings, indent=2) + "\n")
    return {"predicted": predicted, "reused": reused, "failed": len(failed), "recordings": len(entries),
            "tables": [str(p) for p in table_files], "out": str(out)}


def run_predictions(trained: TrainedModel, store: FeatureStore, todo: list[int], out: Path, keys: dict[str, str],
                    paths: dict[str, str], options: PredictOptions, hop: int, failed: list[tuple[str, str, str]],
                    done: set[str], progress: bool,
                    embedding_rows: tuple[Any, dict[str, int]] = (None, {})) -> int:
    """Predict the store files ``todo``, journal each as it finishes (its id added to ``done``); returns how
    many were predicted.

    ``embedding_rows``: an embeddings group (or ``None``) and each file's row in it.
    """
    group, rows = embedding_rows
    pixels_per_second = trained.featurizer_config.pixels_per_second
    table, ids = store.table, store.ids
    audio_seconds = float(np.sum(table["duration"][todo])) if todo else 0.0
    count, processed, seconds_done, started = 0, 0, 0.0, time.perf_counter()
    with Progress(len(todo), desc="predict", unit="file", disable=not progress) as bar:
        for windows in file_windows(trained.model, store, todo, width=trained.crop_width, hop=hop,
                                    device=trained.device, batch_size=options.batch_size, workers=options.workers):
            index = windows.index
            file_id = str(ids[index])
            if windows.error:
                failed.append((file_id, "predict", windows.error))
            else:
                prediction = answer(windows, file_id=file_id, path=paths[file_id],
                                    duration=float(table["duration"][index]), n_frames=int(table["n_frames"][index]),
                                    trained=trained, options=options)
                if group is not None and windows.embedding is not None:  # before the journal: a rerun redoes both
                    write_file_embeddings(group, rows[file_id], windows.embedding, windows.starts / pixels_per_second,
                                          trained.crop_seconds, duration_s=prediction.duration, path=paths[file_id])
                write_journal(out, keys[file_id], prediction)
                done.add(file_id)
                count += 1
            processed += 1
            seconds_done += float(table["duration"][index])
            bar.update(processed)
            speed = seconds_done / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(f"{speed:.0f} s of audio per s, {seconds_done / 3600:.2f} of {audio_seconds / 3600:.2f} h")
    return count
