"""Benchmark: how long ``fit-head`` takes to fit once the embeddings exist.

Embeddings of ``--recordings`` recordings (``--windows`` windows each, 1,536 features as
Inception-v4's pooled width) are drawn around one random centre per class (cosine between
centres about 0, windows spread around theirs), then :func:`train.head.choose_c` (the grouped
cross-validation over the C grid) and the final fit run as ``fit-head`` runs them. Embedding the
recordings is not part of this: it is ``predict --embeddings``'s cost (docs/performance.md).

    .venv/bin/python bench/head.py                    # 1,000 recordings, 20 classes
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundception.train.head import HeadOptions, choose_c, classifier, one_blas_thread  # noqa: E402


@click.command()
@click.option("--recordings", type=int, default=1000, show_default=True)
@click.option("--classes", type=int, default=20, show_default=True)
@click.option("--windows", type=int, default=8, show_default=True, help="Windows per recording (fit-head's default).")
@click.option("--features", type=int, default=1536, show_default=True)
@click.option("--spread", type=float, default=20.0, show_default=True, help="Window noise over the class centre.")
def main(recordings: int, classes: int, windows: int, features: int, spread: float) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, features))
    labels = np.arange(recordings) % classes
    x = np.repeat(centres[labels], windows, axis=0) + spread * rng.normal(size=(recordings * windows, features))
    y = np.repeat(labels, windows)
    groups = np.repeat(np.arange(recordings), windows)
    options = HeadOptions()
    import threadpoolctl

    blas = threadpoolctl.threadpool_info()
    threads = max((pool["num_threads"] for pool in blas if pool["user_api"] == "blas"), default=1)
    print(f"{recordings:,} recordings x {windows} windows x {features} features, {classes} classes")
    totals = {}
    for name, context in ((f"BLAS {threads} threads (numpy's default)", contextlib.nullcontext()),
                          ("BLAS 1 thread (fit-head's)", one_blas_thread())):
        with context:
            started = time.perf_counter()
            c, scores = choose_c(x, y, groups, classes, options)
            search_seconds = time.perf_counter() - started
            started = time.perf_counter()
            classifier(c, options.seed).fit(x, y)
            fit_seconds = time.perf_counter() - started
        totals[name] = search_seconds + fit_seconds
        print(f"{name}: cross-validation over C {options.c_grid}: {search_seconds:.1f} s "
              f"(MAP {', '.join(f'{v:.3f}' for v in scores.values())}); final fit at C={c:g}: {fit_seconds:.1f} s; "
              f"total {totals[name]:.1f} s")
    first, second = totals.values()
    print(f"one thread takes {second / first:.2f}x the default's time")

if __name__ == "__main__":
    main()
