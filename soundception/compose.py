"""``soundception predict`` and ``explain``: the one thin layer that may use both sides.

Over a feature store they are pure trainer-side calls (:mod:`train.predict`, :mod:`train.explain`).
Given audio instead, this layer featurizes it first with the checkpoint's own featurizer config
(never retyped) into a scratch store under ``OUT/stores/``, resumable and reused on a rerun, and
then predicts from that store: the store stays the one pipe between the two sides. Everything is
imported inside the commands, so importing this module loads neither torch nor dask, and a GPU box
with only the train extra can still predict from a store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from soundception.shared.errors import Interrupted, command_errors
from soundception.shared.location import is_url, normalize
from soundception.shared.text import JSON_OBJECT
from soundception.train.config import explain_error

SERIAL_SECONDS = 300.0  # less audio than this is featurized in-process: a local cluster's start costs more


def audio_inputs(inputs: Sequence[str], storage_options: dict | None = None) -> tuple[str, dict[str, str]]:
    """Audio files and folders (local, or fsspec URLs such as ``s3://bucket/audio``) -> their
    common root and ``{file id: path or URL}`` (ids relative to the root).

    Raises:
        click.UsageError: an input that is neither an audio file nor a folder holding audio, or a
            mix of local paths and URLs.
    """
    import posixpath

    from soundception.featurize.audio import AUDIO_EXTENSIONS
    from soundception.featurize.labels import discover_audio
    from soundception.shared.text import redact

    inputs = [normalize(text) for text in inputs]  # file:///x is the path /x
    remote = {is_url(text) for text in inputs}
    if len(remote) > 1:
        raise click.UsageError("give either local audio or URLs, not both")
    files: list[str] = []
    for text in inputs:
        kind, location = _kind(text, storage_options)
        shown = redact(text)
        if kind == "dir":
            found = [str(f) for f in discover_audio(location, storage_options=storage_options)]
            if not found:
                raise click.UsageError(f"{shown}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
            files += found
        elif kind == "file":
            if posixpath.splitext(location)[1].lower() not in AUDIO_EXTENSIONS:
                raise click.UsageError(f"{shown}: not an audio file (expected one of {', '.join(AUDIO_EXTENSIONS)})")
            files.append(location)
        else:
            raise click.UsageError(f"{shown}: no such file or folder")
    files = sorted(set(files))
    if remote == {True}:
        prefix = files[0][: files[0].index("://") + 3]  # as the user wrote it ("s3://")
        keys = [f[len(prefix):] for f in files]
        root = prefix + posixpath.commonpath([posixpath.dirname(k) for k in keys])
        return root, {f[len(root) + 1 :]: f for f in files}
    root = os.path.commonpath([str(Path(f).parent) for f in files])
    return root, {Path(f).relative_to(root).as_posix(): f for f in files}


def _kind(text: str, storage_options: dict | None) -> tuple[str, str]:
    """``("dir" | "file" | "missing", location)`` for a local path or a URL."""
    if not is_url(text):
        path = Path(text).resolve()
        return ("dir" if path.is_dir() else "file" if path.is_file() else "missing"), str(path)
    import fsspec

    url = text.rstrip("/")
    try:
        filesystem, key = fsspec.core.url_to_fs(url, **(storage_options or {}))
        kind = "dir" if filesystem.isdir(key) else "file" if filesystem.isfile(key) else "missing"
    except (OSError, ValueError):
        kind = "missing"
    return kind, url


def featurize_inputs(root: str, files: dict[str, str], out: Path, featurizer_config: Any, *, workers: int | None,
                     progress: bool, storage_options: dict | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Featurize ``files`` into ``OUT/stores/<root hash>.zarr`` with the checkpoint's config.

    One call to :func:`featurize.pipeline.featurize_store` with the files' fingerprints: under the
    store's lock, a file whose size or modification time changed since it was featurized is done
    again (its old image deleted first). Files that fail to decode are recorded in the store as
    failed and reported by ``predict``. Returns the store path and ``{file id: {"size", "mtime",
    "path"}}``. Less than :data:`SERIAL_SECONDS` of audio (from the file headers) is featurized in
    this process; more on a local dask cluster of ``workers`` processes.
    """
    from soundception.featurize.audio import fingerprint
    from soundception.featurize.pipeline import featurize_store

    store = out / "stores" / (hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:12] + ".zarr")
    fingerprints = {i: fingerprint(p, storage_options) for i, p in files.items()}
    with featurize_client(workers, files.values(), storage_options) as client:
        summary = featurize_store(root, str(store), config=featurizer_config, labels="none", client=client,
                                  only=list(files), new_audio_root=False, storage_options=storage_options,
                                  fingerprints=fingerprints)
    if progress:
        click.echo(f"featurized {summary.submitted} file(s) into {store} ({summary.skipped} already there)", err=True)
    return str(store), {i: {**f, "path": files[i]} for i, f in fingerprints.items()}


def featurize_client(workers: int | None, paths: Iterable[str], storage_options: dict | None = None) -> Any:
    """The dask client to featurize ``paths`` with, as a context: none (this process) for ``workers == 0``
    or, by default, for less than :data:`SERIAL_SECONDS` of audio; else a local cluster of ``workers``."""
    from soundception.featurize.cluster import local_cluster

    serial = workers == 0 or (workers is None and total_seconds(paths, storage_options) < SERIAL_SECONDS)
    return contextlib.nullcontext() if serial else local_cluster(workers)


def total_seconds(paths: Iterable[str], storage_options: dict | None = None) -> float:
    """Seconds of audio in ``paths``, from their headers (:func:`featurize.audio.audio_seconds`),
    stopping once past :data:`SERIAL_SECONDS`."""
    from soundception.featurize.audio import audio_seconds

    total = 0.0
    for path in paths:
        total += audio_seconds(path, storage_options)
        if total >= SERIAL_SECONDS:
            break
    return total


@click.command("predict")
@click.argument("inputs", nargs=-1)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A training checkpoint (runs/NAME/checkpoints/last.pt).")
@click.option("--store", default=None, help="Predict every done recording of this feature store (instead of audio).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--format", "formats", default="csv", show_default=True,
              help="Comma-separated: csv, raven, audacity, birdclef.")
@click.option("--segments", type=float, default=None,
              help="Score segments of this many seconds (e.g. 5) instead of one list per recording.")
@click.option("--hop", type=float, default=None, help="Seconds between windows [default: half a window].")
@click.option("--top-k", type=int, default=5, show_default=True, help="Species per recording or segment.")
@click.option("--min-score", type=float, default=0.1, show_default=True,
              help="Raven and Audacity tables leave out lower scores (the CSV keeps every top-k row).")
@click.option("--thresholds", "thresholds_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Per-species thresholds for the Raven and Audacity tables (soundception thresholds); "
                   "a species not in it falls back to --min-score.")
@click.option("--calibration", "calibration_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Map every score through this calibration (soundception calibrate) before the tables.")
@click.option("--combined", is_flag=True, help="One Raven table for all recordings.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes reading windows.")
@click.option("--featurize-workers", type=int, default=None,
              help="Local dask workers to featurize audio (0: in this process) [default: by amount of audio].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--embeddings", type=click.Path(file_okay=False), default=None,
              help="Also write every window's pooled features to this Zarr (dims file, window, feature).")
@click.option("--storage-options", type=JSON_OBJECT, default=None, help="JSON dict of fsspec options for a URL store.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@command_errors(explain=explain_error)
def predict_command(inputs: tuple[str, ...], checkpoint: str, store: str | None, out: str, formats: str,
                    segments: float | None, hop: float | None, top_k: int, min_score: float, combined: bool,
                    batch_size: int, workers: int, featurize_workers: int | None, device: str,
                    storage_options: dict | None, no_progress: bool, embeddings: str | None,
                    thresholds_file: str | None = None, calibration_file: str | None = None) -> None:
    """Predict species for AUDIO files/folders (local or URLs such as s3://bucket/audio), or for a
    --store, with a trained checkpoint."""
    from soundception.train.predict import PredictOptions, predict_store
    from soundception.train.runtime import resolve_device
    from soundception.train.trained import load_trained_model

    if bool(inputs) == bool(store):
        raise click.UsageError("give either audio files/folders or --store, not both and not neither")
    trained = load_trained_model(checkpoint, resolve_device(device))
    thresholds = calibration = None
    if thresholds_file is not None:
        from soundception.train.thresholds import read_thresholds

        thresholds = read_thresholds(thresholds_file)
    if calibration_file is not None:
        from soundception.train.calibrate import read_calibration

        calibration = {kind: (platt.to_dict() if platt else None)
                       for kind, platt in read_calibration(calibration_file, trained.digest).items()}
    options = PredictOptions(hop_seconds=hop, segment_seconds=segments, top_k=top_k, min_score=min_score,
                             thresholds=thresholds, calibration=calibration,
                             formats=tuple(f.strip() for f in formats.split(",") if f.strip()), combined=combined,
                             batch_size=batch_size, workers=workers, device=device)
    sources = None
    fsspec_options = storage_options
    try:
        if inputs:
            root, files = audio_inputs(inputs, fsspec_options)
            store, sources = featurize_inputs(root, files, Path(out), trained.featurizer_config,
                                              workers=featurize_workers, progress=not no_progress,
                                              storage_options=fsspec_options)
            fsspec_options = None  # the scratch store is local
        summary = predict_store(checkpoint, store, out, options, trained=trained, sources=sources,
                                storage_options=fsspec_options, progress=not no_progress,
                                file_ids=list(sources) if sources else None, embeddings=embeddings)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: recordings already predicted are kept in {Path(out) / 'journal'}; run the "
                          "same command again to continue") from None
    failed = f"{summary['failed']} failed (see {Path(out) / 'failures.csv'})" if summary["failed"] else "0 failed"
    click.echo(f"predicted {summary['predicted']} recording(s), {summary['reused']} already done, {failed}; "
               f"tables in {out}")


@click.command("explain")
@click.argument("audio", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--store", default=None, help="A feature store holding the recording (with --file).")
@click.option("--file", "file_id", default=None, help="The recording's file id in --store.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--start", type=float, default=None, help="Window start, s [default: the most confident window].")
@click.option("--seconds", type=float, default=None, help="Window length, s [default: the training window].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--storage-options", type=JSON_OBJECT, default=None, help="JSON dict of fsspec options for a URL store.")
@command_errors(interrupted="interrupted: no picture written", explain=explain_error)
def explain_command(audio: str | None, checkpoint: str, store: str | None, file_id: str | None, out: str,
                    start: float | None, seconds: float | None, device: str, storage_options: dict | None) -> None:
    """Draw what the two attentions look at (paper figures 4 and 5) for AUDIO or --store/--file."""
    from soundception.train.explain import explain_file
    from soundception.train.runtime import resolve_device
    from soundception.train.trained import load_trained_model

    if bool(audio) == bool(store and file_id):
        raise click.UsageError("give either AUDIO or both --store and --file")
    trained = load_trained_model(checkpoint, resolve_device(device))
    with tempfile.TemporaryDirectory(prefix="soundception-explain-") as scratch:
        if audio:  # featurized in a scratch store that goes when the picture is drawn
            root, files = audio_inputs([audio])
            store, _ = featurize_inputs(root, files, Path(scratch), trained.featurizer_config, workers=0,
                                        progress=False)
            file_id = next(iter(files))
        summary = explain_file(checkpoint, store, file_id, out, start=start, seconds=seconds, device=device,
                               storage_options=storage_options, trained=trained)
    top = ", ".join(f"{name} {p:.2f}" for _, name, p in summary["top"])
    click.echo(f"wrote {out}: {summary['file']} from {summary['start_s']:.1f} s, top {top}")



@click.command("search")
@click.option("--embeddings", required=True, type=click.Path(exists=True, file_okay=False),
              help="An embeddings Zarr written by predict --embeddings (the corpus).")
@click.option("--query", "queries", multiple=True,
              help="A file id of the embeddings, whole or FILE:START-END (s). Repeatable.")
@click.option("--query-audio", "audio_queries", multiple=True,
              help="An audio file, whole or PATH:START-END (s), embedded with --checkpoint. Repeatable.")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The checkpoint that wrote the embeddings (needed for --query-audio).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for search.csv and the Raven table.")
@click.option("--top", type=int, default=100, show_default=True, help="Hits to write (none overlapping another).")
@click.option("--label", default="query", show_default=True, help="The Raven table's Species column.")
@click.option("--include-queries", is_flag=True, help="Keep the query spans themselves among the hits.")
@command_errors(explain=explain_error)
def search_command(embeddings: str, queries: tuple[str, ...], audio_queries: tuple[str, ...], checkpoint: str | None,
                   out: str, top: int, label: str, include_queries: bool) -> None:
    """Rank every window of EMBEDDINGS by similarity to example calls; write the top as CSV and Raven."""
    import numpy as np
    import zarr

    from soundception.shared.config import FeaturizerConfig
    from soundception.train import search
    from soundception.train.config import UserError
    from soundception.train.tables import write_file
    from soundception.train.trained import load_trained_model

    if not queries and not audio_queries:
        raise click.UsageError("give at least one --query or --query-audio")
    if audio_queries and not checkpoint:
        raise click.UsageError("--query-audio needs --checkpoint (the one that wrote the embeddings)")
    if top < 1:
        raise click.BadParameter("must be at least 1", param_hint="--top")
    try:
        group = zarr.open_group(embeddings, mode="r", use_consolidated=False)
        group["embedding"]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise UserError(f"{embeddings} is not an embeddings Zarr (write one with predict --embeddings)") from None
    spans = [search.Span.parse(q) for q in queries]
    vectors = [search.query_vectors(group, spans)] if spans else []
    trained = load_trained_model(checkpoint) if checkpoint else None  # read once: queries and the band
    if audio_queries:
        vectors.append(_audio_query_vectors(group, audio_queries, trained))
    nyquist = (trained.featurizer_config if trained else FeaturizerConfig()).sample_rate / 2
    hits = search.search(group, np.concatenate(vectors), top=top, exclude=() if include_queries else spans)
    folder = Path(out)
    seconds = search.recording_seconds(group)
    complete = len(seconds) == group["file"].shape[0]
    write_file(folder / "search.csv", search.hits_csv(hits))
    write_file(folder / "search.selections.txt",
               search.hits_raven(hits, label=label, nyquist=nyquist, seconds=seconds if complete else {}))
    best = f", best {hits[0].file} {hits[0].start_s:g}-{hits[0].end_s:g} s ({hits[0].similarity:.3f})" if hits else ""
    click.echo(f"{len(hits)} hit(s) in {folder / 'search.csv'} and {folder / 'search.selections.txt'}{best}")


def _audio_query_vectors(group: Any, audio_queries: Sequence[str], trained: Any) -> Any:
    """Featurize and embed audio queries in a scratch folder with the corpus's checkpoint and windows."""
    from soundception.train import search
    from soundception.train.config import UserError
    from soundception.train.predict import PredictOptions, predict_store

    checkpoint = trained.path
    if group.attrs.get("checkpoint_sha256") != trained.digest:
        raise UserError(f"{checkpoint} did not write these embeddings (their checkpoint_sha256 differs): "
                        "embed the queries with the same checkpoint")
    spans = []
    for text in audio_queries:
        span = search.Span.parse(text)
        if not Path(span.file).is_file():
            span = search.Span(text) if Path(text).is_file() else span
        spans.append(span)
    with tempfile.TemporaryDirectory(prefix="soundception-search-") as scratch:
        root, files = audio_inputs([s.file for s in spans])
        store, sources = featurize_inputs(root, files, Path(scratch), trained.featurizer_config, workers=0,
                                          progress=False)
        options = PredictOptions(hop_seconds=float(group.attrs["hop_seconds"]), device="cpu")
        summary = predict_store(checkpoint, store, Path(scratch) / "out", options, trained=trained, sources=sources,
                                progress=False, file_ids=list(files), embeddings=Path(scratch) / "queries.zarr")
        if summary["failed"]:
            raise UserError(f"could not embed {summary['failed']} query file(s): see the featurizer's message "
                            "(soundception featurize on the file says why)")
        import zarr

        scratch_group = zarr.open_group(str(Path(scratch) / "queries.zarr"), mode="r", use_consolidated=False)
        ids = {str(Path(path).resolve()): file_id for file_id, path in files.items()}
        return search.query_vectors(scratch_group, [search.Span(ids[str(Path(s.file).resolve())], s.start_s, s.end_s)
                                                    for s in spans])


@click.command("fit-head")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The base model (a training checkpoint).")
@click.option("--store", default=None, help="Labelled recordings of your species, featurized with the base's config.")
@click.option("--audio", type=click.Path(exists=True, file_okay=False), default=None,
              help="Or a folder of labelled recordings: one subfolder per species (or --metadata), featurized "
                   "with the base's config into OUT/store.zarr (kept; a rerun reuses it).")
@click.option("--metadata", type=click.Path(exists=True), default=None,
              help="With --audio: labels from a CSV path,label[,background] or BirdCLEF XML instead of subfolders.")
@click.option("--annotations", type=click.Path(exists=True), default=None,
              help="With --audio: call annotations (Raven, Audacity, CSV, a review's decisions); the windows over "
                   "each call become examples of its species, and labels come from them, not from subfolders.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for head.pt (and the embeddings).")
@click.option("--embeddings", type=click.Path(exists=True, file_okay=False), default=None,
              help="Embeddings of STORE that predict --embeddings wrote with this checkpoint [default: embed here].")
@click.option("--validation-fraction", type=float, default=0.2, show_default=True,
              help="Recordings held out per class (none of a class with fewer than 3).")
@click.option("--windows-per-recording", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass (embedding).")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes (embedding).")
@click.option("--featurize-workers", type=int, default=None,
              help="With --audio: local dask workers (0: in this process) [default: by amount of audio].")
@click.option("--no-progress", is_flag=True)
@command_errors(interrupted="interrupted: embeddings written so far are kept; rerun the same command to go on",
                explain=explain_error)
def fit_head_command(checkpoint: str, store: str | None, audio: str | None, metadata: str | None,
                     annotations: str | None, out: str, embeddings: str | None, validation_fraction: float,
                     windows_per_recording: int, seed: int, device: str, batch_size: int, workers: int,
                     featurize_workers: int | None, no_progress: bool) -> None:
    """Fit a linear head for your species on a trained model's embeddings (few-shot; seconds on a CPU),
    from a --store or from labelled --audio."""
    from soundception.train.head import HeadOptions, fit_head
    from soundception.train.trained import load_trained_model

    if bool(store) == bool(audio):
        raise click.UsageError("give either --store or --audio, not both and not neither")
    if (metadata or annotations) and not audio:
        raise click.UsageError("--metadata and --annotations go with --audio (a --store holds its labels already)")
    if windows_per_recording < 1:
        raise click.BadParameter("must be at least 1", param_hint="--windows-per-recording")
    trained = load_trained_model(checkpoint, device)
    if audio:
        store = featurize_labelled(audio, Path(out), trained.featurizer_config, metadata=metadata,
                                   annotations=annotations, workers=featurize_workers, progress=not no_progress)
    result = fit_head(checkpoint, str(store), out, embeddings=embeddings, device=device, batch_size=batch_size,
                      workers=workers, progress=not no_progress, trained=trained,
                      options=HeadOptions(validation_fraction=validation_fraction,
                                          windows_per_recording=windows_per_recording, seed=seed))
    scores = ", ".join(f"C={c:g}: {v:.3f}" for c, v in result["cv_map"].items()) or "not cross-validated"
    held = result["validation"]
    held = (f"held-out MAP {held['map']:.3f} on {held['n_recordings']} recordings" if held
            else "no recordings held out")
    click.echo(f"wrote {result['checkpoint']}: {result['recordings']} recordings, {result['windows']} windows, "
               f"C={result['c']:g} (cross-validated MAP {scores}); {held}; embedding {result['embed_seconds']:.1f} s, "
               f"fit {result['fit_seconds']:.1f} s")


def featurize_labelled(audio: str, out: Path, featurizer_config: Any, *, metadata: str | None,
                       annotations: str | None, workers: int | None, progress: bool) -> str:
    """Featurize a folder of labelled recordings into ``OUT/store.zarr`` with the base checkpoint's
    featurizer config. Labels from ``metadata``; else, with ``annotations``, from the calls annotated
    (subfolders may then be sites, not species); else from the subfolders. Returns the store.

    A recording that fails to featurize is left out and named on stderr, one line each.

    Raises:
        UserError: no recording could be featurized.
    """
    from soundception.featurize.labels import discover_audio
    from soundception.featurize.pipeline import featurize_store
    from soundception.shared.errors import UserError

    store = out / "store.zarr"
    with featurize_client(workers, (str(p) for p in discover_audio(audio))) as client:
        summary = featurize_store(audio, str(store), config=featurizer_config, metadata=metadata,
                                  labels="auto" if metadata else "none" if annotations else "folders",
                                  client=client, annotations=annotations)
    if progress:
        for line in summary.lines():
            click.echo(line, err=True)
    for file_id, reason in summary.failures:  # a broken file is left out, named; the rest still fit
        click.echo(f"left out {file_id}: {reason}", err=True)
    if summary.done + summary.skipped == 0:
        raise UserError(f"no recording of {audio} could be featurized")
    if annotations and not metadata:
        from soundception.shared.reader import FeatureStore

        if not FeatureStore(str(store)).classes:  # else fit-head says "no classes", the cause unseen with --no-progress
            issues = summary.annotation_issues
            raise UserError(f"no call annotation of {annotations} names a recording under {audio}"
                            + (f" ({len(issues)} such; the first: {issues[0]})" if issues else ""))
    return str(store)
