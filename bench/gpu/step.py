"""Part a: the training step with the batch already in host memory (no loader), and its
``torch.compile`` row (a child process, run last, killed when the budget runs out)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu.common import (
    N_CLASSES,
    Clock,
    Report,
    Sizes,
    attempt,
    fmt,
    free,
    run_child,
    say,
    step_config,
    stepper,
    sync,
)
from soundception.shared.config import FeaturizerConfig

HEADER = ["run", "batch", "s/step", "samples/s", "peak GiB (reserved)", "GFLOP/sample (fwd+bwd)", "TFLOP/s",
          "MFU", "first step s"]
ALIGN = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"


def time_step(sizes: Sizes, device: torch.device, *, batch: int, train_backbone: bool = True,
              compile_model: bool = False, cudnn_benchmark: bool = False, count_flops: bool = False,
              warmup: int | None = None, timed: int | None = None) -> dict[str, Any]:
    """Time ``train.loop.train_step`` on a resident batch; ``{"oom": True}`` when it does not fit."""
    warmup = sizes.step_warmup if warmup is None else warmup
    timed = sizes.step_timed if timed is None else timed
    config = step_config(sizes, device, batch=batch, train_backbone=train_backbone, compile_model=compile_model)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    result: dict[str, Any] = {"batch": batch}
    oom = False
    try:
        steps = stepper(config, device, batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        steps(1)
        sync(device)
        result["first_step_s"] = time.perf_counter() - started
        steps(warmup - 1)
        each = []
        for _ in range(timed):  # each step timed alone: a recompilation shows as one slow step
            sync(device)
            started = time.perf_counter()
            steps(1)
            sync(device)
            each.append(time.perf_counter() - started)
        if compile_model:
            say("  compiled steps (s): " + ", ".join(f"{t:.3f}" for t in each))
        seconds = float(np.median(each)) if compile_model else float(np.mean(each))
        result.update(step_s=seconds, samples_s=batch / seconds, crop=steps.run.crop_width)
        if device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            result["reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2 ** 30
        if count_flops:
            result["flops_per_sample"] = flops_per_sample(config, device)
    except torch.OutOfMemoryError:
        oom = True
    finally:
        torch.backends.cudnn.benchmark = previous
    if oom:  # outside the handler, so the traceback's frames (and their tensors) are gone
        result = {"batch": batch, "oom": True}
    steps = None
    free(device)
    return result


def flops_per_sample(config: Any, device: torch.device, batch: int = 2) -> float:
    """FLOPs of one sample's forward + backward (convolutions and matmuls), counted on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    steps = stepper(config, device, batch)
    with FlopCounterMode(display=False) as counter:
        steps(1)
    sync(device)
    return counter.get_total_flops() / batch


def part_a(report: Report, sizes: Sizes, device: torch.device, clock: Clock, *, peak: float | None
           ) -> tuple[dict[int, float], dict[bool, float]]:
    """Training-step table; returns samples/s of stage 2 by batch size (what the loader must feed) and
    FLOPs per sample by ``train_backbone``."""
    cuda = device.type == "cuda"
    report.add("", "## a. Training step, data resident in host memory", "")
    report.add(f"`train.loop.train_step` on `Soundception('{sizes.backbone}', {N_CLASSES} classes)`, crop "
               f"{FeaturizerConfig().image_height} x {sizes.crop_px} px, "
               f"{'bf16 autocast + channels_last' if cuda else 'fp32'}, AdamW, default augmentation on the "
               f"device; {sizes.step_warmup} warm-up steps, mean of {sizes.step_timed} timed steps. Peak memory "
               f"counts the warm-up (allocator peak of tensors; reserved in brackets).")
    middle = 32 if cuda else sizes.step_batches[0]
    plan: list[tuple[str, dict[str, Any]]] = [("stage 2 (all layers train)", {"batch": b}) for b in sizes.step_batches]
    plan += [("stage 1 (frozen backbone)", {"batch": middle, "train_backbone": False}),
             ("stage 2, cudnn.benchmark on", {"batch": middle, "cudnn_benchmark": True})]
    rows, rates, flops = [], {}, {}
    for label, kwargs in plan:
        if clock.left() < 20:
            rows.append([label, str(kwargs["batch"]), "skipped: time budget spent"] + [""] * 6)
            continue
        key = kwargs.get("train_backbone", True)
        started = time.perf_counter()
        r = attempt(time_step, sizes, device, count_flops=key not in flops, **kwargs)
        say(f"  [{time.perf_counter() - started:.0f} s] {label} batch {kwargs['batch']}: "
            + ("out of memory" if r.get("oom") else r.get("error") or f"{r['samples_s']:.1f} samples/s"))
        if "error" in r or r.get("oom"):
            free(device)
            rows.append([label, str(kwargs["batch"]), "out of memory, skipped" if r.get("oom")
                         else f"failed: {r['error']}"] + [""] * 6)
            continue
        if "flops_per_sample" in r:
            flops[key] = r["flops_per_sample"]
        if key and "cudnn_benchmark" not in kwargs:
            rates[r["batch"]] = r["samples_s"]
        rows.append(step_row(label, r, flops.get(key), peak))
    report.table(HEADER, rows, ALIGN)
    report.add("GFLOP/sample counts convolutions and matrix products of forward + backward "
               "(`torch.utils.flop_counter`); the augmentation, normalisation and optimizer are in the time, "
               "not in the count. `first step s`: the first warm-up step (cuDNN's algorithm choice, allocations).")
    return rates, flops


def step_row(label: str, r: dict[str, Any], flops: float | None, peak: float | None, first_note: str = ""
             ) -> list[str]:
    tflops = (flops or float("nan")) * r["samples_s"] / 1e12
    mfu = 100 * tflops / peak if peak else None
    return [label, str(r["batch"]), fmt(r["step_s"], 3), fmt(r["samples_s"]),
            f"{fmt(r.get('peak_gib'))} ({fmt(r.get('reserved_gib'))})", fmt((flops or 0) / 1e9, 0), fmt(tflops),
            fmt(mfu) + (" %" if mfu is not None else ""), fmt(r.get("first_step_s"), 2) + first_note]


def part_compile(report: Report, sizes: Sizes, device: torch.device, clock: Clock, *, limit: float,
                 flops: float | None, peak: float | None) -> None:
    """Part a's ``torch.compile`` row at batch 32 (the tiny batch on the CPU), run last in a child
    process killed when the budget (or ``limit``) runs out."""
    report.add("", "## a, continued. Training step with torch.compile", "")
    report.add("`RunConfig(compile=True)` (`torch.compile` of the model, default mode) in a child process that is "
               "killed when the time budget runs out; 3 warm-up steps (the first compiles), then the median of 6 "
               "steps timed one by one (the log lists them: a recompilation shows as one slow step).")
    batch = 32 if device.type == "cuda" else sizes.step_batches[0]
    label = "stage 2, torch.compile"
    timeout = min(limit, clock.left() - 5)
    row = [label, str(batch), f"skipped: {max(timeout, 0):.0f} s left of the budget"] + [""] * 6
    if timeout >= (10 if sizes.tiny else 60):
        with tempfile.TemporaryDirectory() as tmp:
            result_path = Path(tmp) / "compile.json"
            spec = {"kind": "compile", "batch": batch, "device": str(device), "tiny": sizes.tiny,
                    "result": str(result_path)}
            say(f"  torch.compile child (limit {timeout:.0f} s) ...")
            status = run_child([sys.executable, "-m", "bench.gpu", "--child", json.dumps(spec)], timeout)
            r = json.loads(result_path.read_text()) if result_path.exists() else {}
        if status == "killed":
            row[2] = f"not done within {timeout:.0f} s, killed"
        elif not r:
            row[2] = f"child failed ({status}; see the log)"
        elif r.get("oom"):
            row[2] = "out of memory"
        else:
            row = step_row(label, r, flops, peak, " (compiling)")
    report.table(HEADER, [row], ALIGN)
