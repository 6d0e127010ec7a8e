"""Benchmark: how long an exact search by example takes over a corpus of window embeddings.

Writes an embeddings Zarr as ``predict --embeddings`` lays it out (one file per chunk row, 512
windows per chunk) with random float32 features, then times :func:`train.search.search` for one
query and for ten, side by side with the bare matrix product over the same vectors held in
memory (the floor: what the arithmetic costs without reading the store). Reported: seconds, and
millions of windows per second.

    .venv/bin/python bench/search.py                           # 1,000,000 windows x 1,536 features (6.1 GB)
    .venv/bin/python bench/search.py --windows 100000          # a quick look
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundception.train.embeddings import open_embeddings, write_file_embeddings  # noqa: E402
from soundception.train.search import search, unit  # noqa: E402


def make_corpus(path: Path, windows: int, features: int, per_file: int, seed: int) -> None:
    """``windows`` random windows, ``per_file`` to a file, written as predict writes them."""
    rng = np.random.default_rng(seed)
    files = -(-windows // per_file)
    group = open_embeddings(path, [f"rec{k:06d}.wav" for k in range(files)], features=features,
                            attrs={"checkpoint_sha256": "bench", "config_hash": "bench", "window_seconds": 15.0,
                                   "hop_seconds": 7.5})
    for k in range(files):
        count = min(per_file, windows - k * per_file)
        write_file_embeddings(group, k, rng.standard_normal((count, features), dtype=np.float32),
                              np.arange(count) * 7.5, 15.0, duration_s=count * 7.5 + 7.5, path=f"rec{k:06d}.wav")


@click.command()
@click.option("--windows", type=int, default=1_000_000, show_default=True)
@click.option("--features", type=int, default=1536, show_default=True, help="Inception-v4's pooled features.")
@click.option("--per-file", type=int, default=480, show_default=True, help="Windows per recording (1 h at 7.5 s).")
@click.option("--work", type=click.Path(file_okay=False), default="bench/data/search", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the corpus for another run.")
def main(windows: int, features: int, per_file: int, work: str, keep: bool) -> None:
    import zarr

    path = Path(work) / f"emb-{windows}-{features}.zarr"
    if not path.exists():
        started = time.perf_counter()
        make_corpus(path, windows, features, per_file, seed=0)
        print(f"wrote {windows:,} windows x {features} features in {time.perf_counter() - started:.0f} s "
              f"({sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e9:.1f} GB on disk)")
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    rng = np.random.default_rng(1)
    rows = []
    for n_queries in (1, 10):
        queries = rng.standard_normal((n_queries, features))
        started = time.perf_counter()
        hits = search(group, queries, top=100)
        seconds = time.perf_counter() - started
        rows.append((f"search, {n_queries} quer{'y' if n_queries == 1 else 'ies'}", seconds, len(hits)))
    block = np.asarray(group["embedding"][: min(200, group["embedding"].shape[0])]).reshape(-1, features)
    block = block[np.isfinite(block).all(axis=1)]
    queries = unit(rng.standard_normal((10, features))).astype(np.float32)
    started = time.perf_counter()
    (block @ queries.T).max(axis=1)
    per_window = (time.perf_counter() - started) / len(block)
    rows.append(("matrix product alone, 10 queries (in memory)", per_window * windows, 0))
    print(f"\n{windows:,} windows x {features} features, top 100")
    print(f"{'':48s} {'s':>8s} {'M windows/s':>12s} {'x floor':>8s}")
    for name, seconds, _ in rows:
        print(f"{name:48s} {seconds:8.2f} {windows / seconds / 1e6:12.2f} {seconds / rows[-1][1]:8.1f}")
    if not keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
