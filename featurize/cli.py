"""``soundception featurize``, ``inspect`` and ``synth``: thin wrappers over the library."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from soundception.shared.config import RESIZE_METHODS, FeaturizerConfig
from soundception.shared.errors import Interrupted, command_errors
from soundception.shared.location import is_url, normalize
from soundception.shared.text import JSON_OBJECT, parse_json_object, redact, refuse_credentials_in_url

_DEFAULT = FeaturizerConfig()


@click.command("featurize")
@click.argument("audio_dir")
@click.option("--store", default="stores/features.zarr", show_default=True,
              help="Zarr store path or fsspec URL (s3://bucket/name.zarr).")
@click.option("--metadata", default=None,
              help="Labels: a CSV (path,label[,background]) or a folder of BirdCLEF XML files.")
@click.option("--labels", type=click.Choice(["auto", "xml", "csv", "folders", "none"]), default="auto",
              show_default=True, help="Where labels come from (auto: CSV, XML next to the audio, or none).")
@click.option("--annotations", type=click.Path(exists=True), default=None,
              help="Call annotations: a Raven selection table, an Audacity label file, a CSV "
                   "(path,start,end,label[,low_hz,high_hz]) or a folder of them; stored as the store's events.")
@click.option("--annotations-format", type=click.Choice(["auto", "raven", "audacity", "csv", "decisions"]),
              default="auto", show_default=True,
              help="Format of the --annotations files (auto: Raven header, a review's decisions header, .csv, "
                   "else Audacity).")
@click.option("--annotation-label-column", default=None,
              help="The species column of Raven tables [default: Species, Annotation, Species Code, ...].")
@click.option("--annotations-report", type=click.Path(dir_okay=False), default=None,
              help="Write every annotation naming no recording or ending after its recording here (one per line).")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, default=None, help="Local cluster worker processes [default: CPU cores].")
@click.option("--cluster", "cluster_kind", type=click.Choice(["local", "slurm", "pbs"]), default="local",
              show_default=True, help="Where workers run: this machine, or batch jobs via dask-jobqueue.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch jobs to submit with --cluster slurm|pbs (each runs dask workers).")
@click.option("--cluster-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON or YAML of dask-jobqueue options (cores, memory, walltime, queue, account, ...).")
@click.option("--worker-wait", type=click.FloatRange(min=0), default=600, show_default=True,
              help="With --cluster slurm|pbs: seconds to wait for the first worker before cancelling the jobs.")
@click.option("--print-job-script", is_flag=True,
              help="With --cluster slurm|pbs: print the job script and the submit command, submit nothing.")
@click.option("--serial", is_flag=True, help="No dask: featurize in this process (debugging).")
@click.option("--dashboard", is_flag=True,
              help="Serve the local cluster's dask dashboard and print its address (adds about 0.8 s of start-up).")
@click.option("--retry-failed", is_flag=True, help="Featurize files that failed in an earlier run again.")
@click.option("--redo-corrupt", is_flag=True,
              help="Verify every done file first (as inspect --verify) and featurize the bad ones again.")
@click.option("--new-audio-root", is_flag=True, help="The store's recordings moved to AUDIO_DIR: accept the new path.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A featurizer config JSON (e.g. a run's featurizer_config.json): reproduces that store's images. "
                   "Replaces the image options below.")
@click.option("--min-duration", type=float, default=_DEFAULT.min_duration, show_default=True,
              help="Seconds; shorter clips are self-concatenated.")
@click.option("--hop-lengths", type=(int, int, int), default=_DEFAULT.hop_lengths, show_default=True,
              help="STFT hop per FFT window (128, 512, 2048), samples.")
@click.option("--time-resize", type=click.Choice(RESIZE_METHODS), default=_DEFAULT.time_resize, show_default=True,
              help="Frames -> columns: loudest frame in each column (max), their mean (area), or bilinear.")
@click.option("--frequency-resize", type=click.Choice(RESIZE_METHODS), default=_DEFAULT.frequency_resize,
              show_default=True, help="FFT bins -> 299 rows: max, area or bilinear.")
@click.option("--floor-db", type=float, default=_DEFAULT.floor_db, show_default=True,
              help="Grey 0 sits this many dB above each channel's background level (its median).")
@click.option("--ceiling-percentile", type=float, default=_DEFAULT.ceiling_percentile, show_default=True,
              help="Percentile of each channel's dB values mapped to 255 (louder outliers clipped).")
@click.option("--dynamic-range-db", type=(float, float), default=_DEFAULT.dynamic_range_db, show_default=True,
              help="Least and most dB between grey 0 and grey 255.")
@click.option("--empty-band-db", type=float, default=_DEFAULT.empty_band_db, show_default=True,
              help="Rows this far below the typical row level (a codec's cut-off band) are left out of the "
                   "background level ('inf': keep all).")
@click.option("--time-chunk", type=int, default=1024, show_default=True,
              help="Image columns per Zarr chunk (new stores only).")
@click.option("--shard-chunks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Store this many image chunks per object (Zarr v3 sharding; fewer objects, slower crops with "
                   "zarr 3.1); 1: one object per chunk (new stores only).")
@click.option("--zstd-level", type=click.IntRange(0, 22), default=0, show_default=True,
              help="Compress image chunks with zstd at this level; 0 stores them raw (new stores only).")
@click.option("--storage-options", default=None, type=JSON_OBJECT,
              help="fsspec options as JSON, e.g. an S3 endpoint.")
@command_errors()
def featurize_command(audio_dir: str, store: str, metadata: str | None, labels: str, scheduler: str | None,
                      workers: int | None, cluster_kind: str, jobs: int, cluster_config: str | None,
                      worker_wait: float, print_job_script: bool, serial: bool, redo_corrupt: bool,
                      dashboard: bool, retry_failed: bool, new_audio_root: bool, min_duration: float,
                      hop_lengths: tuple[int, int, int], time_resize: str,
                      frequency_resize: str, floor_db: float, ceiling_percentile: float,
                      dynamic_range_db: tuple[float, float], time_chunk: int, shard_chunks: int,
                      zstd_level: int, storage_options: dict | None, config_file: str | None,
                      empty_band_db: float, annotations: str | None, annotations_format: str,
                      annotation_label_column: str | None, annotations_report: str | None) -> None:
    """Featurize every recording under AUDIO_DIR (a folder or an fsspec URL such as s3://bucket/audio)
    into a Zarr feature store (resumable). Credentials for URLs come from the environment and
    fsspec's configuration (or --storage-options)."""
    import logging

    from soundception.featurize import cluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    config = _config(config_file, min_duration=min_duration, hop_lengths=hop_lengths, time_resize=time_resize,
                     frequency_resize=frequency_resize, floor_db=floor_db, ceiling_percentile=ceiling_percentile,
                     dynamic_range_db=dynamic_range_db, empty_band_db=empty_band_db)
    options = cluster.read_cluster_config(cluster_config)
    if print_job_script:
        click.echo(_job_script(cluster_kind, jobs, options))
        return
    audio_dir, store = normalize(audio_dir), normalize(store)  # file:///x is the path /x
    metadata = normalize(metadata) if metadata else metadata
    try:
        for what, url in (("AUDIO_DIR", audio_dir), ("--store", store), ("--metadata", metadata or "")):
            refuse_credentials_in_url(url, what)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    lock = _take_store(store, storage_options)  # before any cluster starts or job is submitted
    client = None
    try:
        client = None if serial else cluster.start_client(
            scheduler=scheduler, system=cluster_kind, jobs=jobs, cluster_options=options, workers=workers,
            dashboard=dashboard, wait_seconds=worker_wait)
        if client is not None:
            click.echo(cluster.describe(client[0], dashboard=dashboard or cluster_kind != "local" or bool(scheduler)))
        _featurize(audio_dir, store, config, client, lock=lock, metadata=metadata, labels=labels,
                   retry_failed=retry_failed, new_audio_root=new_audio_root, storage_options=storage_options,
                   time_chunk=time_chunk, shard_chunks=shard_chunks, zstd_level=zstd_level, redo_corrupt=redo_corrupt,
                   annotations=annotations, annotations_format=annotations_format,
                   annotation_label_column=annotation_label_column, annotations_report=annotations_report)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: files finished so far are kept in {redact(store)}; rerun the same command "
                          "to featurize the rest") from None
    finally:
        if client is not None:
            cluster.close_client(client[0], own_cluster=client[1])
        lock.release()


def _take_store(store: str, storage_options: dict | None) -> Any:
    """Check the ``--store`` place and take its lock, or stop with one line."""
    from soundception.featurize.lock import StoreLock, check_atomic_create
    from soundception.featurize.store import check_location

    if is_url(store):
        check_atomic_create(store)  # before anything touches the place
    check_location(store, storage_options)
    return StoreLock(store, storage_options).acquire()


def _job_script(system: str, jobs: int, options: dict) -> str:
    """The batch job script ``--cluster`` would submit ``jobs`` times, and the command that submits it."""
    from soundception.featurize import cluster

    if system == "local":
        raise click.UsageError("--print-job-script needs --cluster slurm or --cluster pbs")
    batch = cluster.batch_cluster(system, options)
    try:
        submit = f"{batch.job_cls.submit_command} <job script>   (x {jobs}: one per job)"
        return f"{batch.job_script()}\n# submitted with: {submit}"
    finally:
        batch.close()


def _featurize(audio_dir: str, store: str, config: FeaturizerConfig, client: tuple | None, *,
               annotations_report: str | None = None, **options: Any) -> None:
    """Run the featurize library call with a progress display."""
    import gc
    import logging

    from soundception.featurize.pipeline import featurize_store
    from soundception.shared.progress import Progress

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("soundception").addHandler(handler)
    bar = Progress(None, desc="featurize", unit="file")  # a bar on a terminal, plain lines in a log
    started = time.perf_counter()

    def progress(summary: Any) -> None:
        if bar.total != summary.submitted:
            bar.set_total(summary.submitted)
        bar.set_postfix(summary.progress_line(time.perf_counter() - started))
        bar.update(summary.finished)

    gc.freeze()  # what is loaded now lives until exit: spare the collector walking it (0.2 s at exit)
    try:
        summary = featurize_store(audio_dir, store, config=config, client=client[0] if client else None,
                                  progress=progress, **options)
    finally:
        bar.close()
    for line in summary.lines():
        click.echo(line)
    if annotations_report:
        Path(annotations_report).write_text("".join(f"{line}\n" for line in summary.annotation_issues), encoding="utf-8")
        click.echo(f"wrote {len(summary.annotation_issues)} annotation issue(s) to {annotations_report}")


def _config(config_file: str | None, **options: Any) -> FeaturizerConfig:
    """The featurizer config from ``--config FILE`` or from the image options; not both."""
    context = click.get_current_context()
    given = [name for name in options
             if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    try:
        if config_file is None:
            return FeaturizerConfig(**options)
        if given:
            raise click.UsageError(f"--config replaces the image options; drop --{given[0].replace('_', '-')} "
                                   f"or edit {config_file}")
        data = parse_json_object(Path(config_file).read_text(encoding="utf-8"))
        if data is None:
            raise ValueError("the file is empty")
        return FeaturizerConfig.from_dict(data)
    except ValueError as error:
        raise click.UsageError(f"{config_file or 'options'}: {error}") from None


@click.command("inspect")
@click.argument("store")
@click.option("--failed", is_flag=True, help="List failed files with their reasons.")
@click.option("--png", nargs=2, metavar="FILE_ID OUT.png", default=None,
              help="Render FILE_ID's image and its channels to OUT.png.")
@click.option("--verify", is_flag=True,
              help="Read every image object of every done file, check checksums and widths, name bad files "
                   "(exit status 1 if any).")
@click.option("--storage-options", default=None, type=JSON_OBJECT, help="fsspec options as JSON.")
@command_errors()
def inspect_command(store: str, failed: bool, png: tuple[str, str] | None, verify: bool,
                    storage_options: dict | None) -> None:
    """Summarize a feature store, list its failures, verify it or draw one file's image."""
    from soundception.featurize.report import failure_lines, render_png, summary_lines
    from soundception.shared.reader import FeatureStore

    opened = FeatureStore(store, storage_options)
    if verify:
        from soundception.featurize.verify import report_lines, verify_store
        from soundception.shared.progress import Progress

        with Progress(len(opened.done_indices()), desc="verify", unit="file") as bar:
            report = verify_store(store, storage_options, progress=lambda checked, total: bar.update(checked))
        click.echo("\n".join(report_lines(report, store)))
        if not report.sound:
            raise SystemExit(1)
    elif failed:
        lines = failure_lines(opened)
        click.echo("\n".join(lines) if lines else "no failed files")
    elif png:
        try:
            out = render_png(opened, png[0], png[1])
        except (KeyError, ValueError) as error:
            raise click.ClickException(str(error).strip("'\"")) from None
        click.echo(f"wrote {out}")
    else:
        click.echo("\n".join(summary_lines(opened)))


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--species", type=int, default=5, show_default=True)
@click.option("--files-per-species", type=int, default=6, show_default=True)
@click.option("--min-seconds", type=float, default=4.0, show_default=True)
@click.option("--max-seconds", type=float, default=90.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prefix", default="sp", show_default=True,
              help="Species ids are PREFIX00, PREFIX01, ... (a second, disjoint set: another prefix).")
@command_errors(interrupted="interrupted: the folder holds part of the dataset; run the same command again")
def synth_command(out_dir: str, species: int, files_per_species: int, min_seconds: float, max_seconds: float,
                  seed: int, prefix: str) -> None:
    """Write a deterministic synthetic bird dataset (audio, labels.csv, XML, calls.csv)."""
    import re

    from soundception.featurize.synthetic import make_dataset

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", prefix):
        raise click.BadParameter("a letter, then letters, digits, '_' or '-'", param_hint="--prefix")
    summary = make_dataset(out_dir, n_species=species, files_per_species=files_per_species,
                           min_seconds=min_seconds, max_seconds=max_seconds, seed=seed, prefix=prefix)
    click.echo(f"wrote {summary['n_files']} recordings ({summary['total_seconds'] / 60:.1f} min) "
               f"of {len(summary['species'])} species to {out_dir}")
