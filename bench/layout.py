"""Benchmark (issue 9): the image array's objects, one per chunk (today) versus Zarr v3 shards.

Featurizes a generated corpus (``featurize.synthetic``, 60-120 s recordings) once with the real
pipeline, then writes the same images into one store per layout, on local disk and on a moto S3
server on loopback, and measures:

* image objects per hour of audio;
* write throughput, each file's image written as a featurize task writes it: the array opened
  per file, the last chunk zero-padded, calls of ``write`` chunks from column 0 (today
  ``store.WRITE_CHUNKS`` = 4). Calls of 4 chunks into a 12-chunk shard make zarr read the shard
  back and rewrite it (read-modify-write); "MB put" and "MB got" show that traffic;
* random 15 s crops (``image[f, :, :, s:s + 2990]``) per second read with zarr-python (as
  ``shared.reader`` does) and with tensorstore's ``zarr3`` driver (no cache), with the bytes and
  requests each crop costs: zarr store calls counted by a wrapper around the store (shard index
  reads included) and, on S3, the S3 API calls s3fs made. "serial trips" is the longest chain of
  requests one after another in a zarr-python 3.1 crop: chunks are fetched concurrently, but the
  inner chunks of one shard one at a time after its index (``ShardingCodec._decode_partial_single``).

The layouts are measured side by side: each file is written, and each crop read, into every
layout in turn (in rotated order), so load from other processes hits them alike. The table gives
the median of the rounds and their range, and each layout's ratio to today's in the same round.

    .venv/bin/python bench/layout.py [--files 40] [--rounds 3] [--crops 200] [--backends local,s3]
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore


from soundception.featurize.store import WRITE_CHUNKS
from soundception.shared import schema
from soundception.shared.reader import FeatureStore

CHUNK = 1024  # columns per chunk, store.DEFAULT_TIME_CHUNK
CROP = 2990  # columns in a 15 s crop at 299 px per 1.5 s


@dataclass(frozen=True)
class Layout:
    name: str
    shard_chunks: int  # chunks per shard along time; 0: one object per chunk
    write_chunks: int  # chunks per write call


LAYOUTS = (
    Layout("chunk (today)", 0, WRITE_CHUNKS),
    Layout("shard 12, writes of 4", 12, WRITE_CHUNKS),
    Layout("shard 12", 12, 12),
    Layout("shard 4", 4, 4),
)


@dataclass
class Counts:
    """Store traffic: requests and bytes each way (a miss is a get of a key that does not exist)."""

    gets: int = 0
    misses: int = 0
    got: int = 0
    puts: int = 0
    put: int = 0


class CountingStore(WrapperStore):
    """A zarr store that counts the requests and bytes going through it."""

    def __init__(self, store: Any, counts: Counts | None = None) -> None:
        super().__init__(store)
        self.counts = counts if counts is not None else Counts()

    def _with_store(self, store: Any) -> CountingStore:
        return type(self)(store, self.counts)

    def _count_get(self, value: Any) -> Any:
        self.counts.gets += 1
        if value is None:
            self.counts.misses += 1
        else:
            self.counts.got += len(value)
        return value

    async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
        return self._count_get(await self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype, key_ranges):  # type: ignore[no-untyped-def]
        return [self._count_get(v) for v in await self._store.get_partial_values(prototype, key_ranges)]

    async def set(self, key, value):  # type: ignore[no-untyped-def]
        self.counts.puts += 1
        self.counts.put += len(value)
        await self._store.set(key, value)


class S3Calls(logging.Handler):
    """Counts the S3 API calls s3fs makes (its debug log has one ``CALL: method`` line per call)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("CALL:"):
            self.calls += 1

    @classmethod
    def install(cls) -> S3Calls:
        handler, logger = cls(), logging.getLogger("s3fs")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        return handler


def serial_trips(layout: Layout, start: int) -> int:
    """Requests one after another for a crop at ``start`` in zarr-python 3.1 (see the docstring)."""
    first, last = start // CHUNK, (start + CROP - 1) // CHUNK
    if not layout.shard_chunks:
        return 1
    per_shard = layout.shard_chunks
    longest = 0
    for shard in range(first // per_shard, last // per_shard + 1):
        inside = min(last, (shard + 1) * per_shard - 1) - max(first, shard * per_shard) + 1
        longest = max(longest, 1 if inside == per_shard else 1 + inside)  # a whole shard: one get
    return longest


# --- data -------------------------------------------------------------------------------------

def featurized_images(work: Path, files: int) -> tuple[list[np.ndarray], float]:
    """Images of a generated corpus made by the real featurizer, and the hours of audio."""
    from soundception.featurize.pipeline import featurize_store
    from soundception.featurize.synthetic import make_dataset

    work = work / f"corpus{files}"
    url = str(work / "source.zarr")
    if not (work / "data" / "labels.csv").exists():
        make_dataset(work / "data", n_species=5, files_per_species=-(-files // 5), min_seconds=60.0,
                     max_seconds=120.0, seed=9)
    started = time.perf_counter()
    summary = featurize_store(work / "data" / "audio", url, metadata=work / "data" / "labels.csv", labels="csv")
    print(f"featurized {summary.done} files in {time.perf_counter() - started:.0f} s", flush=True)
    store = FeatureStore(url)
    done = store.done_indices()[:files]
    return [store.image(int(i)) for i in done], float(store.table["duration"][done].sum()) / 3600


# --- stores -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    """A moto S3 server on loopback (its own process) and the storage options that reach it."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        raise SystemExit("moto_server is not installed: pip install 'moto[server]'")
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.terminate()
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.2)
    return process, {"endpoint_url": f"http://127.0.0.1:{port}", "key": "x", "secret": "x"}


@dataclass
class Backend:
    """Where stores go: a local folder or an S3 bucket; ``open`` returns a fresh counting store."""

    name: str
    root: str
    storage_options: dict[str, str] = field(default_factory=dict)
    s3_calls: S3Calls | None = None

    def open(self, name: str, counts: Counts) -> CountingStore:
        if self.name == "local":
            return CountingStore(LocalStore(f"{self.root}/{name}"), counts)
        return CountingStore(FsspecStore.from_url(f"{self.root}/{name}", storage_options=self.storage_options),
                             counts)

    def tensorstore_spec(self, name: str) -> dict[str, Any]:
        """The image array for tensorstore's ``zarr3`` driver (credentials from the environment)."""
        if self.name == "local":
            kvstore = {"driver": "file", "path": f"{self.root}/{name}/{schema.IMAGE}/"}
        else:
            kvstore = {"driver": "s3", "bucket": self.root.removeprefix("s3://"), "path": f"{name}/{schema.IMAGE}/",
                       "endpoint": self.storage_options["endpoint_url"], "aws_region": "us-east-1",
                       "aws_credentials": {"type": "environment"}}
        return {"driver": "zarr3", "kvstore": kvstore}

    def remove(self, name: str) -> None:
        if self.name == "local":
            shutil.rmtree(f"{self.root}/{name}", ignore_errors=True)
        else:
            import s3fs

            s3fs.S3FileSystem(**self.storage_options).rm(f"{self.root}/{name}", recursive=True)


async def _keys(store: CountingStore, prefix: str) -> list[str]:
    return [key async for key in store._store.list_prefix(prefix)]


# --- the three measurements -------------------------------------------------------------------

def create_image(store: CountingStore, layout: Layout, n_files: int, extent: int, height: int) -> None:
    """The image array as ``store._create_arrays`` makes it, plus ``shards`` for a sharded layout."""
    shards = {"shards": (1, 3, height, layout.shard_chunks * CHUNK)} if layout.shard_chunks else {}
    group = zarr.open_group(store, mode="w-", zarr_format=3)
    group.create_array(schema.IMAGE, shape=(n_files, 3, height, extent), chunks=(1, 3, height, CHUNK),
                       dtype="uint8", fill_value=0, dimension_names=schema.IMAGE_DIMS,
                       compressors=[Crc32cCodec()], **shards)


def write_file(store: CountingStore, index: int, image: np.ndarray, write_chunks: int) -> None:
    """One featurize task: open the array, write ``image`` in calls of ``write_chunks`` chunks."""
    array = zarr.open_array(store, path=schema.IMAGE, mode="r+").with_config({"write_empty_chunks": True})
    width, step = image.shape[2], write_chunks * CHUNK
    end = min(-(-width // CHUNK) * CHUNK, array.shape[3])  # the last chunk is zero-padded
    for start in range(0, width, step):
        stop = min(start + step, end)
        block = image[:, :, start:stop]
        if block.shape[2] < stop - start:
            block = np.pad(block, ((0, 0), (0, 0), (0, stop - start - block.shape[2])))
        array[index, :, :, start:stop] = block


def rotated(layouts: tuple[Layout, ...], step: int) -> tuple[Layout, ...]:
    """The layouts starting at a different one each step, so none is always first after a pause."""
    k = step % len(layouts)
    return layouts[k:] + layouts[:k]


def measure_writes(stores: dict[str, CountingStore], layouts: tuple[Layout, ...],
                   images: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Each file written into every layout in turn (paired timings), then the objects counted."""
    extent = -(-max(i.shape[2] for i in images) // (12 * CHUNK)) * 12 * CHUNK
    for layout in layouts:
        create_image(stores[layout.name], layout, len(images), extent, images[0].shape[1])
    before = {name: Counts(**vars(store.counts)) for name, store in stores.items()}
    seconds = dict.fromkeys(stores, 0.0)
    for index, image in enumerate(images):
        for layout in rotated(layouts, index):
            started = time.perf_counter()
            write_file(stores[layout.name], index, image, layout.write_chunks)
            seconds[layout.name] += time.perf_counter() - started
    megabytes = sum(i.nbytes for i in images) / 1e6
    found = {}
    for name, store in stores.items():
        counts = store.counts
        found[name] = {"write_mb_s": megabytes / seconds[name], "files_s": len(images) / seconds[name],
                       "put_ratio": (counts.put - before[name].put) / 1e6 / megabytes,
                       "got_ratio": (counts.got - before[name].got) / 1e6 / megabytes,
                       "objects": len(sync(_keys(store, f"{schema.IMAGE}/c/")))}
    return found


def crop_starts(images: list[np.ndarray], crops: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    files = rng.integers(0, len(images), crops)
    return [(int(f), int(rng.integers(0, images[f].shape[2] - CROP + 1))) for f in files]


def open_readers(stores: dict[str, CountingStore], backend: Backend, names: dict[str, str],
                 images: list[np.ndarray], picks: list[tuple[int, int]]) -> dict[str, tuple[Any, Any]]:
    """Per layout, the image opened by zarr-python and by tensorstore, checked against the featurizer."""
    import tensorstore

    readers = {}
    for name, store in stores.items():
        array = zarr.open_array(store.with_read_only(True), path=schema.IMAGE, mode="r")
        tensor = tensorstore.open(backend.tensorstore_spec(names[name]), read=True).result()
        for f, s in picks[:3]:  # every layout must hold the featurizer's pixels
            expected = images[f][:, :, s:s + CROP]
            assert np.array_equal(array[f, :, :, s:s + CROP], expected)
            assert np.array_equal(tensor[f, :, :, s:s + CROP].read().result(), expected)
        readers[name] = (array, tensor)
    return readers


def measure_reads(stores: dict[str, CountingStore], layouts: tuple[Layout, ...], backend: Backend,
                  names: dict[str, str], images: list[np.ndarray],
                  picks: list[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """Each crop read from every layout in turn, with zarr-python then tensorstore (paired timings)."""
    readers = open_readers(stores, backend, names, images, picks)
    zarr_seconds, tensorstore_seconds = dict.fromkeys(stores, 0.0), dict.fromkeys(stores, 0.0)
    requests, got = dict.fromkeys(stores, 0), dict.fromkeys(stores, 0)
    for step, (f, s) in enumerate(picks):
        for layout in rotated(layouts, step):
            array, counts, calls = readers[layout.name][0], stores[layout.name].counts, backend.s3_calls
            gets, fetched, s3_calls = counts.gets, counts.got, calls.calls if calls else 0
            started = time.perf_counter()
            array[f, :, :, s:s + CROP]
            zarr_seconds[layout.name] += time.perf_counter() - started
            requests[layout.name] += (calls.calls - s3_calls) if calls else (counts.gets - gets)
            got[layout.name] += counts.got - fetched
        for layout in rotated(layouts, step):
            started = time.perf_counter()
            readers[layout.name][1][f, :, :, s:s + CROP].read().result()
            tensorstore_seconds[layout.name] += time.perf_counter() - started
    n = len(picks)
    return {layout.name: {"crops_s": n / zarr_seconds[layout.name],
                          "tensorstore_crops_s": n / tensorstore_seconds[layout.name],
                          "mb_crop": got[layout.name] / 1e6 / n, "requests_crop": requests[layout.name] / n,
                          "serial_trips": float(np.mean([serial_trips(layout, s) for _, s in picks]))}
            for layout in layouts}


# --- driver -----------------------------------------------------------------------------------

def run_round(backend: Backend, layouts: tuple[Layout, ...], images: list[np.ndarray], crops: int,
              seed: int) -> dict[str, dict[str, float]]:
    """All layouts on one backend: stores made side by side, written, read, removed."""
    names = {layout.name: f"r{seed}-{layout.shard_chunks}-{layout.write_chunks}.zarr" for layout in layouts}
    stores = {name: backend.open(path, Counts()) for name, path in names.items()}
    picks = crop_starts(images, crops, seed)
    try:
        written = measure_writes(stores, layouts, images)
        read = measure_reads(stores, layouts, backend, names, images, picks)
    finally:
        for path in names.values():
            backend.remove(path)
    found = {name: written[name] | read[name] for name in names}
    for name, row in found.items():
        print(f"  {backend.name} round {seed}: {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()),
              flush=True)
    return found


def cell(values: list[float], digits: int = 0, base: list[float] | None = None) -> str:
    """Median (min-max) of the rounds; with ``base``, the median (min-max) of the per-round ratios."""
    text = f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
    if base is not None:
        ratios = np.asarray(values) / np.asarray(base)
        text += f" x{np.median(ratios):.2f} ({ratios.min():.2f}-{ratios.max():.2f})"
    return text


def print_table(results: dict[str, dict[str, list[float]]], hours: float, rounds: int) -> None:
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"zarr {zarr.__version__}; {hours:.2f} h of audio; median (min-max) of {rounds} rounds; "
          "x: ratio to today's layout on the same backend in the same round, median (min-max)\n")
    print("| backend | layout | objects/h audio | write MB/s | files/s | MB put, got / MB image "
          "| crops/s zarr | crops/s tensorstore | MB read/crop | requests/crop | serial trips/crop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in results.items():
        backend, layout = key.split(" | ")
        base = results[f"{backend} | {LAYOUTS[0].name}"]
        print(f"| {backend} | {layout} | {np.median(row['objects']) / hours:.0f} "
              f"| {cell(row['write_mb_s'], 0, base['write_mb_s'])} | {cell(row['files_s'], 1)} "
              f"| {np.median(row['put_ratio']):.2f}, {np.median(row['got_ratio']):.2f} "
              f"| {cell(row['crops_s'], 0, base['crops_s'])} "
              f"| {cell(row['tensorstore_crops_s'], 0, base['tensorstore_crops_s'])} "
              f"| {np.median(row['mb_crop']):.2f} | {np.median(row['requests_crop']):.1f} "
              f"| {np.median(row['serial_trips']):.1f} |")
    print("\nrequests: zarr store calls (local) or S3 API calls made by s3fs (s3) per zarr-python crop")


@click.command()
@click.option("--files", default=40, show_default=True, help="Recordings of 60-120 s to featurize.")
@click.option("--rounds", default=3, show_default=True)
@click.option("--crops", default=200, show_default=True, help="Random 15 s crops read per layout and round.")
@click.option("--backends", default="local,s3", show_default=True)
@click.option("--work", default=None, help="Keep the corpus and its featurized store here (reused on rerun).")
def main(files: int, rounds: int, crops: int, backends: str, work: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images, hours = featurized_images(Path(work or tmp), files)
        moto, results = None, {}
        try:
            chosen = []
            for name in backends.split(","):
                if name == "local":
                    chosen.append(Backend("local", f"{tmp}/layouts"))
                else:
                    import s3fs

                    moto, options = start_moto()
                    s3fs.S3FileSystem(**options).mkdir("bench")
                    os.environ.setdefault("AWS_ACCESS_KEY_ID", options["key"])  # tensorstore's credentials
                    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", options["secret"])
                    chosen.append(Backend("s3", "s3://bench", options, S3Calls.install()))
            for round_ in range(rounds):
                for backend in chosen:
                    for layout, found in run_round(backend, LAYOUTS, images, crops, round_).items():
                        row = results.setdefault(f"{backend.name} | {layout}", {})
                        for key, value in found.items():
                            row.setdefault(key, []).append(value)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(timeout=10)
    ordered = {f"{b} | {layout.name}": results[f"{b} | {layout.name}"] for b in ("local", "s3") for layout in LAYOUTS
               if f"{b} | {layout.name}" in results}
    print_table(ordered, hours, rounds)


if __name__ == "__main__":
    main()
