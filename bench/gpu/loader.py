"""Part b: the training loader against the GPU. The loader alone (crops/s, no model), then
``train.loop.train`` with the same worker counts, its data wait read from the trainer's own
``data_time`` in ``metrics.jsonl``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from bench.gpu.common import Clock, Report, Sizes, attempt, fmt, free, make_store, say, train_run
from soundception.train.augment import AugmentConfig, read_width


def time_loader(store_url: str, sizes: Sizes, *, workers: int, batch: int, pin_memory: bool) -> float:
    """Crops/s of the training loader alone (no model): steady state after ``2 x workers`` batches."""
    from soundception.shared.reader import FeatureStore
    from soundception.train.dataset import WindowDataset, WindowSampler, make_loader, trainable_indices

    store = FeatureStore(store_url)
    width = read_width(sizes.crop_px, AugmentConfig())
    skip = max(2, 2 * workers)
    total = skip + max(sizes.loader_batches, 6 * workers)
    sampler = WindowSampler(store, trainable_indices(store), batch_size=batch, read_width=width, seed=0,
                            stop_step=total)
    iterator = iter(make_loader(WindowDataset(store, width=width), sampler, num_workers=workers,
                                pin_memory=pin_memory))
    for _ in range(skip):
        next(iterator)
    started = time.perf_counter()
    crops = sum(b["image"].shape[0] for b in iterator)
    return crops / (time.perf_counter() - started)


def part_b(report: Report, sizes: Sizes, device: torch.device, clock: Clock, tmp: Path,
           gpu_rates: dict[int, float], *, workers_given: bool = False
           ) -> tuple[str, int, dict[int, dict[str, Any]]]:
    """Returns the store, the batch used and the loop's results by worker count (part c compares with them)."""
    report.add("", "## b. Loader against the GPU", "")
    store_url = make_store(report, sizes, tmp)
    report.write()
    batch = sizes.loop_batch
    if device.type == "cuda" and gpu_rates and batch not in gpu_rates:  # the largest batch that fitted
        batch = max([b for b in gpu_rates if b <= batch] or [min(gpu_rates)])
    # --workers is measured as given; the default counts stop at the machine's CPUs
    workers = list(sizes.workers) if workers_given else [w for w in sizes.workers if w <= (os.cpu_count() or 1)]
    alone: dict[int, dict[str, Any]] = {}
    for count in workers:
        if clock.left() < 30:
            break
        started = time.perf_counter()
        alone[count] = attempt(lambda n=count: {"rate": time_loader(store_url, sizes, workers=n, batch=batch,
                                                                    pin_memory=device.type == "cuda")})
        say(f"  [{time.perf_counter() - started:.0f} s] loader alone, {count} workers: "
            + (alone[count].get("error") or f"{alone[count]['rate']:.1f} crops/s"))
    loops: dict[int, dict[str, Any]] = {}
    for count in workers:
        if clock.left() < 45:
            say(f"  skipped the loop with {count} workers: time budget")
            break
        started = time.perf_counter()
        r = loops[count] = attempt(train_run, store_url, tmp / f"run-w{count}", sizes, device, workers=count,
                                   batch=batch)
        if "error" in r:
            free(device)
        say(f"  [{time.perf_counter() - started:.0f} s] train loop, {count} workers: "
            + ("out of memory" if r.get("oom") else r.get("error") or f"{r['samples_s']:.1f} samples/s, "
               f"waiting for data {100 * r['wait_share']:.1f} %"))
    gpu = gpu_rates.get(batch)
    report.add(f"(1) The training loader alone (no model; `WindowSampler` + `WindowDataset` + `make_loader`, "
               f"batch {batch}, pin_memory {'on' if device.type == 'cuda' else 'off'}): crops/s in steady state, "
               f"{os.cpu_count()} CPUs. (2) `train.loop.train`, stage 2 only, batch {batch}, {sizes.loop_warmup} "
               f"warm-up steps then {sizes.loop_timed} timed, each step's `step_time` and `data_time` read from the "
               f"run's `metrics.jsonl`: `waits for data` is data_time over step_time, the share of the step the "
               f"trainer spent in `next()` on the loader (the step ends on a read of the loss, so on a GPU this is "
               f"time the GPU had nothing queued); `vs resident` compares with the resident step at the same batch "
               f"(part a, else part d)" + (f" ({fmt(gpu)} samples/s)." if gpu else "."))
    rows = [loader_row(count, alone.get(count, {}), loops.get(count, {}), gpu) for count in workers]
    report.table(["loader workers", "loader alone crops/s", "per worker", "loop steps/s", "loop samples/s",
                  "data_time ms/step", "waits for data", "vs resident", "loop wall s (incl. set-up)"], rows)
    per_worker = [r["rate"] / count for count, r in alone.items() if count and "rate" in r]
    if gpu and per_worker:
        report.add(f"Balance: the GPU consumes {fmt(gpu)} samples/s at batch {batch}; one loader worker reads "
                   f"{fmt(max(per_worker))} crops/s at best here, so about {gpu / max(per_worker):.1f} workers keep "
                   f"it fed (more when the store is not in the page cache, or on object storage).")
    return store_url, batch, loops


def loader_row(count: int, alone: dict[str, Any], r: dict[str, Any], gpu: float | None) -> list[str]:
    rate = alone.get("rate")
    cells = [str(count), alone.get("error", fmt(rate)), fmt(rate / count if rate and count else None)]
    if not r:
        return cells + ["skipped"] + [""] * 5
    if r.get("oom") or "error" in r:
        return cells + ["out of memory" if r.get("oom") else f"failed: {r['error']}"] + [""] * 5
    return cells + [fmt(1 / r["step_s"], 2), fmt(r["samples_s"]), fmt(1e3 * r["data_s"], 1),
                    f"{100 * r['wait_share']:.1f} %", fmt(r["samples_s"] / gpu, 2) if gpu else "n/a",
                    fmt(r["wall_s"], 0)]
