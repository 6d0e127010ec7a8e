"""Benchmark: random 15 s training crops per second read from a local store by the DataLoader.

Builds temporary stores (noise audio, default featurizer config, 299 px high) for each time-chunk
size, or uses ``--store``; then for each worker count times the real training loader
(:class:`train.dataset.WindowSampler` + :class:`train.dataset.WindowDataset`) and reports crops/s,
crops/s per worker and the compressed MB read per crop (sizes of the chunk objects each crop touches).

    .venv/bin/python bench/loader.py [--store S] [--workers 1,2] [--time-chunks 512,1024,2048]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np


from soundception.shared.reader import FeatureStore
from soundception.train.augment import AugmentConfig, read_width
from soundception.train.dataset import WindowDataset, WindowSampler, make_loader, trainable_indices
from soundception.train.config import crop_width_px


def make_noise_audio(root: Path, *, files: int, seconds: float, sample_rate: int = 22050) -> Path:
    """``files`` recordings of coloured noise with a few tones, in 2 class folders."""
    import soundfile

    rng = np.random.default_rng(0)
    for k in range(files):
        folder = root / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        signal = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (2000 + 500 * k) * t) * (t % 2 < 0.3)
        soundfile.write(folder / f"n{k:03d}.wav", signal.astype(np.float32), sample_rate)
    return root


def chunk_bytes(store: FeatureStore) -> dict[tuple[int, int], int]:
    """Stored (compressed) size of each image chunk ``(file, time_chunk_index)`` of a local store."""
    base = Path(store.url) / "image" / "c"
    sizes = {}
    for path in base.rglob("*"):
        if path.is_file():
            parts = path.relative_to(base).parts
            sizes[(int(parts[0]), int(parts[-1]))] = path.stat().st_size
    return sizes


def time_loader(store: FeatureStore, *, workers: int, batches: int, batch_size: int) -> tuple[float, float]:
    """``(crops per second, mean MB read per crop)`` of the training loader."""
    crop = crop_width_px(15.0, store.config)
    width = read_width(crop, AugmentConfig())
    files = trainable_indices(store)
    sampler = WindowSampler(store, files, batch_size=batch_size, read_width=width, seed=0, stop_step=batches + 2)
    loader = make_loader(WindowDataset(store, width=width), sampler, num_workers=workers, pin_memory=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first reads are not what we time
    started = time.perf_counter()
    crops = 0
    for batch in iterator:
        crops += batch["image"].shape[0]
    seconds = time.perf_counter() - started
    sizes, tc = chunk_bytes(store), store.time_chunk
    read = [sum(sizes.get((f, c), 0) for c in range(s // tc, (s + width - 1) // tc + 1))
            for step in range(1, batches + 2) for f, s in sampler.batch(step)]
    return crops / seconds, float(np.mean(read)) / 1e6


@click.command()
@click.option("--store", default=None, help="Use this local store instead of building temporary ones.")
@click.option("--files", default=20, show_default=True)
@click.option("--seconds", default=60.0, show_default=True, help="Length of each generated recording.")
@click.option("--workers", default="1,2", show_default=True)
@click.option("--time-chunks", default="512,1024,2048", show_default=True)
@click.option("--batches", default=40, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
def main(store: str | None, files: int, seconds: float, workers: str, time_chunks: str, batches: int,
         batch_size: int) -> None:
    worker_counts = [int(w) for w in workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if store:
            stores = {FeatureStore(store).time_chunk: store}
        else:
            from soundception.featurize.pipeline import featurize_store

            audio = make_noise_audio(Path(tmp) / "audio", files=files, seconds=seconds)
            stores = {}
            for tc in (int(t) for t in time_chunks.split(",")):
                url = str(Path(tmp) / f"tc{tc}.zarr")
                featurize_store(audio, url, labels="folders", time_chunk=tc)
                stores[tc] = url
        for tc, url in stores.items():
            opened = FeatureStore(url)
            for count in worker_counts:
                rate, megabytes = time_loader(opened, workers=count, batches=batches, batch_size=batch_size)
                rows.append((tc, count, rate, rate / max(count, 1), megabytes))
    config = FeatureStore(store).config if store else None
    height = config.image_height if config else 299
    print(f"\nrandom 15 s crops (read width incl. dilation margin), {height} px high, batch {batch_size}, "
          f"{os.cpu_count()} CPUs\n")
    print("| time chunk (px) | workers | crops/s | crops/s per worker | MB read per crop (compressed) |")
    print("|---:|---:|---:|---:|---:|")
    for tc, count, rate, per_worker, megabytes in rows:
        print(f"| {tc} | {count} | {rate:.1f} | {per_worker:.1f} | {megabytes:.2f} |")


if __name__ == "__main__":
    main()
