"""Part c: the training loop launched as the trainer is launched: plain ``python``, ``torchrun`` with one
process (``WORLD_SIZE`` 1: the single-process path) and ``torchrun`` with one process per GPU (two gloo
processes on the CPU), the distributed path with ``DistributedDataParallel``. Each launch is a child
process running ``python -m bench.gpu --child``; its timing is the trainer's own ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.gpu.common import Clock, Report, Sizes, fmt, run_child, say, train_run


def launches(device: torch.device) -> list[tuple[str, int]]:
    """``(label, processes)``; 0 processes: plain python, no launcher."""
    plans = [("python (no launcher)", 0), ("torchrun --nproc_per_node=1", 1)]
    ranks = torch.cuda.device_count() if device.type == "cuda" else 2
    if ranks > 1:
        plans.append((f"torchrun --nproc_per_node={ranks}", ranks))
    return plans


def part_c(report: Report, sizes: Sizes, device: torch.device, clock: Clock, tmp: Path, store_url: str, batch: int,
           in_process: dict[str, Any] | None) -> None:
    report.add("", "## c. Launchers and DDP", "")
    workers = min(sizes.ddp_workers, os.cpu_count() or 1)
    rows, plain = [], None
    for index, (label, ranks) in enumerate(launches(device)):
        if clock.left() < 50:
            rows.append([label, "skipped: time budget spent"] + [""] * 5)
            continue
        result_path = tmp / f"ddp-{index}.json"
        spec = {"kind": "loop", "store": store_url, "out": str(tmp / f"ddp-run-{index}"), "workers": workers,
                "batch": batch, "device": "auto" if ranks > 1 and device.type == "cuda" else str(device), "tiny": sizes.tiny,
                "loop_timed": sizes.loop_timed, "result": str(result_path)}
        command = [sys.executable, "-m", "bench.gpu", "--child", json.dumps(spec)]
        if ranks:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                       "-m", *command[2:]]
        started = time.perf_counter()
        status = run_child(command, max(clock.left() - 10, 30))
        wall = time.perf_counter() - started
        r = json.loads(result_path.read_text()) if result_path.exists() else {"error": f"no result ({status})"}
        if r.get("oom") or "error" in r:
            say(f"  [{wall:.0f} s] {label}: {r.get('error', 'out of memory')}")
            rows.append([label, r.get("error", "out of memory")] + [""] * 5)
            continue
        plain = plain or (r["samples_s"] if not ranks else None)
        say(f"  [{wall:.0f} s] {label}: {r['samples_s']:.1f} samples/s, process group: {r['group']}")
        rows.append([label, r["group"], fmt(r["samples_s"]), fmt(r["step_s"], 3), f"{100 * r['wait_share']:.1f} %",
                     fmt(r["samples_s"] / plain, 3) if plain else "n/a", fmt(wall, 0)])
    report.add(f"`train.loop.train` in a child process, batch {batch} per process, {workers} loader worker(s) per "
               f"process, {sizes.loop_warmup} warm-up + {sizes.loop_timed} timed steps (the trainer's own "
               f"`step_time` and `data_time`). `torchrun --nproc_per_node=1` sets `WORLD_SIZE=1`, and "
               f"`train.runtime.start` joins a process group only when `WORLD_SIZE > 1`, so the trainer under it is "
               f"the single-process path. With more processes each is one DDP rank (NCCL, one GPU each; gloo on "
               f"the CPU) and samples/s counts all ranks; with one GPU there is no such row.")
    if in_process:
        report.add(f"For reference, the same loop in this process (part b, {in_process['workers']} workers): "
                   f"{fmt(in_process['samples_s'])} samples/s.")
    report.table(["launch", "process group", "samples/s", "s/step", "waits for data", "vs python", "wall s (child)"],
                 rows, "|---|---|---:|---:|---:|---:|---:|")


def loop_child(spec: dict[str, Any], sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """One launch of part c, inside the child (every rank runs it; rank 0 writes the result)."""
    result = train_run(spec["store"], Path(spec["out"]), sizes, device, workers=spec["workers"], batch=spec["batch"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    result["group"] = (f"{backend}, {world} ranks, DDP" if world > 1
                       else "none (WORLD_SIZE=1)" if "WORLD_SIZE" in os.environ else "none")
    return result
