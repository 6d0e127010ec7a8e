"""``soundception featurize``, ``inspect`` and ``synth``: thin wrappers over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shared.config import RESIZE_METHODS, FeaturizerConfig
from shared.text import parse_json_option

_DEFAULT = FeaturizerConfig()


def _json_object(ctx: click.Context, param: click.Parameter, text: str | None) -> dict | None:
    """Click callback: the option's JSON object (or None); a one-line usage error otherwise."""
    try:
        return parse_json_option(text, param.opts[0])
    except ValueError as error:
        raise click.UsageError(str(error), ctx) from None


def _start_client(scheduler: str | None, workers: int | None, dashboard: bool) -> Any:
    """A dask client on ``scheduler``, or on a new local cluster; prints where to watch it."""
    if scheduler:
        from distributed import Client

        client = Client(scheduler)
    else:
        from featurize.pipeline import local_client

        client = local_client(workers, dashboard_address=":0" if dashboard else None)
    # without a dashboard the link still names the scheduler's plain HTTP port, so say so instead
    where = f"dask dashboard: {client.dashboard_link}" if scheduler or dashboard else "dask: local cluster"
    hint = "" if scheduler or dashboard else "; --dashboard to watch it"
    click.echo(f"{where}  ({len(client.scheduler_info()['workers'])} workers){hint}")
    return client


def _stop_client(client: Any, *, own_cluster: bool) -> None:
    """Close ``client``, and its cluster when this command started it (a ``--scheduler`` is left running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None and own_cluster:
        cluster.close()


@click.command("featurize")
@click.argument("audio_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--store", default="stores/features.zarr", show_default=True,
              help="Zarr store path or fsspec URL (s3://bucket/name.zarr).")
@click.option("--metadata", type=click.Path(exists=True), default=None,
              help="Labels: a CSV (path,label[,background]) or a folder of BirdCLEF XML files.")
@click.option("--labels", type=click.Choice(["auto", "xml", "csv", "folders", "none"]), default="auto",
              show_default=True, help="Where labels come from (auto: CSV, XML next to the audio, or none).")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, default=None, help="Local cluster worker processes [default: CPU cores].")
@click.option("--serial", is_flag=True, help="No dask: featurize in this process (debugging).")
@click.option("--dashboard", is_flag=True,
              help="Serve the local cluster's dask dashboard and print its address (adds about 0.8 s of start-up).")
@click.option("--retry-failed", is_flag=True, help="Featurize files that failed in an earlier run again.")
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
@click.option("--clip-percentiles", type=(float, float), default=_DEFAULT.clip_percentiles, show_default=True,
              help="Percentiles of each channel's resized dB values mapped to 0 and 255 (outliers clipped).")
@click.option("--empty-band-db", type=float, default=_DEFAULT.empty_band_db, show_default=True,
              help="Rows this far below the typical row level (a codec's cut-off band) are left out of the clip "
                   "percentiles ('inf': keep all).")
@click.option("--time-chunk", type=int, default=1024, show_default=True,
              help="Image columns per Zarr chunk (new stores only).")
@click.option("--zstd-level", type=click.IntRange(0, 22), default=0, show_default=True,
              help="Compress image chunks with zstd at this level; 0 stores them raw (new stores only).")
@click.option("--storage-options", default=None, callback=_json_object,
              help="fsspec options as JSON, e.g. an S3 endpoint.")
def featurize_command(audio_dir: str, store: str, metadata: str | None, labels: str, scheduler: str | None,
                      workers: int | None, serial: bool, dashboard: bool, retry_failed: bool, new_audio_root: bool,
                      min_duration: float, hop_lengths: tuple[int, int, int], time_resize: str,
                      frequency_resize: str, clip_percentiles: tuple[float, float], time_chunk: int,
                      zstd_level: int, storage_options: dict | None, config_file: str | None,
                      empty_band_db: float) -> None:
    """Featurize every recording under AUDIO_DIR into a Zarr feature store (resumable)."""
    import gc
    import logging

    from featurize.pipeline import featurize_store
    from featurize.store import StoreMismatch
    from shared.progress import Progress

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("soundception").addHandler(handler)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    config = _config(config_file, min_duration=min_duration, hop_lengths=hop_lengths, time_resize=time_resize,
                     frequency_resize=frequency_resize, clip_percentiles=clip_percentiles, empty_band_db=empty_band_db)
    client = None if serial else _start_client(scheduler, workers, dashboard)
    bar = Progress(None, desc="featurize", unit="file")  # a bar on a terminal, plain lines in a log

    def progress(finished: int, total: int) -> None:
        if bar.total != total:
            bar.set_total(total)
        bar.update(finished)

    gc.freeze()  # what is loaded now lives until exit: spare the collector walking it (0.2 s at exit)
    try:
        summary = featurize_store(audio_dir, store, config=config, metadata=metadata, labels=labels,
                                  client=client, retry_failed=retry_failed, new_audio_root=new_audio_root,
                                  storage_options=storage_options, time_chunk=time_chunk, zstd_level=zstd_level,
                                  progress=progress)
    except (StoreMismatch, FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        bar.close()
        if client is not None:
            _stop_client(client, own_cluster=not scheduler)
    for line in summary.lines():
        click.echo(line)


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
        data = parse_json_option(Path(config_file).read_text(encoding="utf-8"), config_file)
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
@click.option("--storage-options", default=None, callback=_json_object, help="fsspec options as JSON.")
def inspect_command(store: str, failed: bool, png: tuple[str, str] | None, storage_options: dict | None) -> None:
    """Summarize a feature store, list its failures or draw one file's image."""
    from featurize.report import failure_lines, render_png, summary_lines
    from shared.reader import FeatureStore, StoreError

    try:
        opened = FeatureStore(store, storage_options)
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    if failed:
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
def synth_command(out_dir: str, species: int, files_per_species: int, min_seconds: float, max_seconds: float,
                  seed: int) -> None:
    """Write a deterministic synthetic bird dataset (audio, labels.csv, XML, calls.csv)."""
    from featurize.synthetic import make_dataset

    summary = make_dataset(out_dir, n_species=species, files_per_species=files_per_species,
                           min_seconds=min_seconds, max_seconds=max_seconds, seed=seed)
    click.echo(f"wrote {summary['n_files']} recordings ({summary['total_seconds'] / 60:.1f} min) "
               f"of {len(summary['species'])} species to {out_dir}")
