"""Benchmark on one CUDA device: training throughput, loader-versus-GPU balance, DDP and a profile of the
step, as one report.

    python3 bench/gpu.py --out gpu.md [--compile] [--budget-s 420]
    python3 bench/gpu.py --out gpu.md --parts b,d --workers 1,2 --budget-s 150    # a short second run
    python3 bench/gpu.py --out gpu.md --parts e --budget-s 120                      # the pooling variants
    .venv/bin/python bench/gpu.py --tiny --device cpu --out /tmp/gpu.md     # the whole path in ~1 min

Five parts, each timed, printed as it finishes and written to ``--out`` (markdown) after each:

a. **Training step.** ``train.loop.train_step`` itself (what the trainer calls every step: the
   batch's host-to-device copy from pinned memory, on-device augmentation, normalisation, forward of
   the main and auxiliary branches in bf16 autocast and channels_last, loss, backward, gradient
   clipping, AdamW) on ``Soundception('inception_v4', 1500 classes)`` at 299 x 2,990 px, with
   the batch already in host memory (no loader): samples/s, s/step, peak GPU memory and MFU (a
   FLOP count of forward + backward from ``torch.utils.flop_counter`` over the device's dense bf16
   peak, chosen from the name torch reports or ``--peak-tflops``). Stage 2 (everything trains) at
   batch 16, 32, 64 (an out-of-memory batch is skipped with a note), stage 1 (frozen backbone),
   cuDNN autotuning (the trainer leaves ``torch.backends.cudnn.benchmark`` off) and, with
   ``--compile``, ``torch.compile`` (run last, in a child process killed when ``--budget-s`` or
   ``--compile-limit`` runs out).
b. **Loader against the GPU.** A synthetic store (``featurize.synthetic`` audio, 20-60 s per file,
   serial ``featurize_store``), then (1) the training loader alone (``WindowSampler`` +
   ``WindowDataset`` + ``make_loader``, CPU only): crops/s with 0, 4, 8, 12 workers (``--workers``),
   and (2) ``train.loop.train`` (the library call behind ``soundception train``) for a fixed number of
   stage-2 steps (``--loop-timed``) with the same worker counts. The loop has no data-wait measurement of its own,
   so the bench wraps the loader iterator the loop draws from (``train.loop.stage_batches``, patched
   in this process only): a CUDA event before and after each ``next()``; the GPU time between the
   two is time the GPU had nothing to do because the batch was not there yet. Checkpoint writing is
   patched out (``train.loop.save``); nothing under ``train/`` is edited.
c. **DDP.** The same loop in child processes: plain ``python``; ``torchrun --nproc_per_node=1`` as
   the trainer runs under it (``WORLD_SIZE`` is 1, so ``train.runtime.start`` makes no process
   group and no DDP wrapper: the single-process path); and ``torchrun --nproc_per_node=1`` with the
   bench forcing the distributed path (NCCL process group of one rank, ``DistributedDataParallel``,
   its gradient all-reduce) to show it works and what it costs on one GPU. Scaling over several
   GPUs cannot be measured with one.
d. **Where the step's time goes.** Part a's step at batch 32 under ``torch.profiler`` (CPU + CUDA):
   the top 15 operations by CUDA time, kernel time by kernel family, the step's phases (input copy,
   augmentation, normalisation, forward, loss, backward, clipping, optimizer: ``train_step`` runs
   unchanged, the bench marks the phases from wrappers of the functions it calls, with CUDA events on
   unprofiled steps and ``record_function`` ranges on the profiled ones) and the GPU's idle share.
   It runs right after a (before the loader parts); any failure in it is a line of the report.
e. **Average pooling alternatives.** d's profile puts a third of the GPU time in ``aten::avg_pool2d``
   and its backward: timm's Inception blocks' ``nn.AvgPool2d(3, stride=1, padding=1,
   count_include_pad=False)`` on channels_last bf16. Part a's stage-2 step at batch 32, each variant
   built fresh (3 warm-up + 8 timed steps): (1) as the trainer runs it, (2) the model and input in NCHW,
   (3) every ``nn.AvgPool2d`` replaced by a depthwise ones-convolution divided by the count of valid
   positions (``BoxAvgPool2d``), (4) each ``nn.AvgPool2d`` run on an NCHW copy and converted back,
   (5) the replacement as separable shifted sums; with each row the max abs difference of the main logits
   of a fixed 2-crop batch (fp32) against row 1's, a unit check of the replacements against
   ``nn.AvgPool2d`` (forward and gradient, fp32 and bf16) and the pooling alone, timed per shape.

``--tiny`` shrinks everything (mobilenetv3_small_050, 299 x 300 crops, batch 2-4, a few steps and
files) so the whole path, torchrun with gloo included, runs on a CPU in a minute or two.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundception.shared.config import FeaturizerConfig
from soundception.train import loop
from soundception.train import runtime as rt
from soundception.train.augment import read_width
from soundception.train.config import RunConfig, StageConfig, crop_width_px

ROOT = Path(__file__).resolve().parents[1]

# dense bf16 peak (TFLOP/s) by a substring of torch.cuda.get_device_name, first match wins
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("L40S", 362.0), ("B200", 2250.0))
N_CLASSES = 1500


@dataclass(frozen=True)
class Sizes:
    """Everything that ``--tiny`` shrinks."""

    backbone: str
    crop_px: int
    step_batches: tuple[int, ...]
    step_warmup: int
    step_timed: int
    species: int
    files_per_species: int
    min_seconds: float
    max_seconds: float
    workers: tuple[int, ...]
    loop_batch: int
    loop_warmup: int
    loop_timed: int
    loader_batches: int  # timed batches of the loader alone, on top of 2 x workers skipped
    ddp_workers: int
    profile_batch: int  # part d
    profile_steps: int
    tiny: bool


FULL = Sizes(backbone="inception_v4", crop_px=2990, step_batches=(16, 32, 64), step_warmup=3, step_timed=10,
             species=8, files_per_species=6, min_seconds=20.0, max_seconds=60.0, workers=(0, 4, 8, 12),
             loop_batch=32, loop_warmup=5, loop_timed=30, loader_batches=24, ddp_workers=8,
             profile_batch=32, profile_steps=6, tiny=False)
TINY = Sizes(backbone="mobilenetv3_small_050", crop_px=300, step_batches=(2, 4), step_warmup=2, step_timed=2,
             species=2, files_per_species=2, min_seconds=20.0, max_seconds=30.0, workers=(0, 2),
             loop_batch=2, loop_warmup=1, loop_timed=2, loader_batches=4, ddp_workers=1,
             profile_batch=2, profile_steps=2, tiny=True)


def say(text: str = "") -> None:
    print(text, flush=True)


class Clock:
    """The run's time budget: ``left()`` seconds before ``--budget-s`` runs out."""

    def __init__(self, budget: float) -> None:
        self.started, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()


class Report:
    """Markdown lines, printed as added and rewritten to ``path`` after each part."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.lines = path, []

    def add(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
            say(line)

    def table(self, header: list[str], rows: list[list[str]], align: str | None = None) -> None:
        align = align or "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
        self.add("", "| " + " | ".join(header) + " |", align, *("| " + " | ".join(r) + " |" for r in rows), "")

    def write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join(self.lines) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def crop_seconds(sizes: Sizes) -> float:
    """The ``--crop-seconds`` that gives ``sizes.crop_px`` at the default featurizer scale."""
    return sizes.crop_px / FeaturizerConfig().pixels_per_second


def device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak on CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key}"
    return None, f"unknown peak for {name!r}: pass --peak-tflops"


def attempt(function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``function(...)``'s dict, or ``{"error": one line}`` after printing the traceback: one failed
    measurement (a loader worker killed for want of shared memory, say) must not end the run."""
    import traceback

    try:
        return function(*args, **kwargs)
    except Exception as error:
        traceback.print_exc()
        line = " ".join(f"{type(error).__name__}: {error}".split())
        return {"error": line[:160]}
    finally:
        gc.collect()


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


# ---------------------------------------------------------------------------------------------- a. the step


def step_config(sizes: Sizes, device: torch.device, *, batch: int, train_backbone: bool, compile_model: bool = False,
                store: str = "-", out: str = "-", workers: int = 0, steps: int = 1) -> RunConfig:
    """A run config whose only stage is stage 2 (everything trains) or stage 1 (frozen backbone)."""
    stage = StageConfig(steps=steps, batch_size=batch, lr=1e-4, warmup_steps=0, train_backbone=train_backbone)
    empty = StageConfig(steps=0, batch_size=1, lr=1e-4, warmup_steps=0, train_backbone=not train_backbone)
    stages = {"stage1": stage, "stage2": empty} if not train_backbone else {"stage1": empty, "stage2": stage}
    return RunConfig(store=store, out=out, backbone=sizes.backbone, crop_seconds=crop_seconds(sizes),
                     num_workers=workers, device=str(device), compile=compile_model, log_every=10 ** 6,
                     eval_every=0, checkpoint_every=0, eval_max_files=1, **stages)


def resident_batch(run: loop.Run, batch: int, n_classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader-shaped batch in (pinned, on CUDA) host memory: uint8 windows, labels, targets."""
    generator = torch.Generator().manual_seed(0)
    height = FeaturizerConfig().image_height
    labels = torch.randint(0, n_classes, (batch,), generator=generator)
    out = {"image": torch.randint(0, 256, (batch, 3, height, run.window_width), dtype=torch.uint8,
                                  generator=generator),
           "label": labels, "target": torch.nn.functional.one_hot(labels, n_classes).float()}
    return {k: v.pin_memory() for k, v in out.items()} if device.type == "cuda" else out


def step_setup(config: RunConfig, device: torch.device, batch: int, train_backbone: bool,
               transform: Callable[[nn.Module], Any] | None = None) -> tuple[Any, ...]:
    """What the trainer builds before its steps, with one resident batch repeated instead of a loader:
    ``run, runner, optimizer, scheduler, sampler, batches``. ``transform(model)`` (part e) edits the model
    in place after ``initial_model``, before the optimizer is made."""
    model = loop.initial_model(config, N_CLASSES, None, device)
    if transform is not None:
        transform(model)
    crop = crop_width_px(config.crop_seconds, FeaturizerConfig())
    run = loop.Run(config=config, runtime=rt.Runtime(device=device), store=None, split=None,  # type: ignore[arg-type]
                   model=model, crop_width=crop, window_width=read_width(crop, config.augment))
    stage = config.stage2 if train_backbone else config.stage1
    loop.set_stage_mode(model, stage.train_backbone)
    optimizer, scheduler = loop.stage_optimizer(run, stage, None)
    runner = loop.wrap_model(run)
    sampler = SimpleNamespace(global_micro_batch=lambda micro: micro)
    batches = itertools.repeat(resident_batch(run, batch, N_CLASSES, device))
    return run, runner, optimizer, scheduler, sampler, batches


def time_step(sizes: Sizes, device: torch.device, *, batch: int, train_backbone: bool = True,
              compile_model: bool = False, cudnn_benchmark: bool = False, count_flops: bool = False,
              warmup: int | None = None, timed: int | None = None,
              transform: Callable[[nn.Module], Any] | None = None,
              prepare: Callable[[loop.Run], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Time ``train.loop.train_step`` on a resident batch; ``{"oom": True}`` when it does not fit.
    ``transform``: see ``step_setup``; ``prepare(run)``: called before the first step, its dict joins the result."""
    warmup = sizes.step_warmup if warmup is None else warmup
    timed = sizes.step_timed if timed is None else timed
    config = step_config(sizes, device, batch=batch, train_backbone=train_backbone, compile_model=compile_model)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    result: dict[str, Any] = {"batch": batch}
    oom = False
    try:
        run, runner, optimizer, scheduler, sampler, batches = step_setup(config, device, batch, train_backbone,
                                                                         transform)
        model, crop = run.model, run.crop_width
        if prepare is not None:
            result.update(prepare(run))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for step in range(warmup):
            loop.train_step(run, runner, optimizer, batches, sampler, step)  # type: ignore[arg-type]
            scheduler.step()
            if step == 0:
                sync(device)
                result["first_step_s"] = time.perf_counter() - started
        sync(device)
        started = time.perf_counter()
        each = []
        for step in range(warmup, warmup + timed):
            loop.train_step(run, runner, optimizer, batches, sampler, step)  # type: ignore[arg-type]
            scheduler.step()
            if compile_model:  # each step timed alone: a recompilation shows as one slow step
                sync(device)
                each.append(time.perf_counter() - started - sum(each))
        sync(device)
        seconds = (time.perf_counter() - started) / timed
        if each:
            say("  compiled steps (s): " + ", ".join(f"{t:.3f}" for t in each))
            seconds = float(np.median(each))
        result.update(step_s=seconds, samples_s=batch / seconds, crop=crop,
                      params_m=sum(p.numel() for p in model.parameters()) / 1e6)
        if device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            result["reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2 ** 30
        if count_flops:
            result["flops_per_sample"] = flops_per_sample(run, runner, optimizer, device)
    except torch.OutOfMemoryError:
        oom = True
    finally:
        torch.backends.cudnn.benchmark = previous
    if oom:  # outside the handler, so the traceback's frames (and their tensors) are gone
        result = {"batch": batch, "oom": True}
    model = runner = optimizer = batches = run = None
    free(device)
    return result


def flops_per_sample(run: loop.Run, runner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device, batch: int = 2) -> float:
    """FLOPs of one sample's forward + backward (convolutions and matmuls), counted on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    batches = itertools.repeat(resident_batch(run, batch, N_CLASSES, device))
    sampler = SimpleNamespace(global_micro_batch=lambda micro: micro)
    with FlopCounterMode(display=False) as counter:
        loop.train_step(run, runner, optimizer, batches, sampler, 10 ** 6)  # type: ignore[arg-type]
    sync(device)
    return counter.get_total_flops() / batch


def part_a(report: Report, sizes: Sizes, device: torch.device, clock: Clock, *, peak: float | None
           ) -> tuple[dict[int, float], dict[bool, float]]:
    """Training-step table; returns samples/s of stage 2 by batch size (what the loader must feed) and
    FLOPs per sample by ``train_backbone``."""
    report.add("", "## a. Training step, data resident in host memory", "")
    report.add(f"`train.loop.train_step` on `Soundception('{sizes.backbone}', {N_CLASSES} classes)`, crop "
               f"{FeaturizerConfig().image_height} x {sizes.crop_px} px, "
               f"{'bf16 autocast + channels_last' if device.type == 'cuda' else 'fp32'}, AdamW, default "
               f"augmentation on the device; {sizes.step_warmup} warm-up steps, mean of {sizes.step_timed} "
               f"timed steps. Peak memory counts the warm-up (allocator peak of tensors; reserved in brackets).")
    rows, rates, flops = [], {}, {}
    plan: list[tuple[str, dict[str, Any]]] = [("stage 2 (all layers train)", {"batch": b}) for b in sizes.step_batches]
    plan += [("stage 1 (frozen backbone)", {"batch": 32 if device.type == "cuda" else sizes.step_batches[0],
                                            "train_backbone": False}),
             ("stage 2, cudnn.benchmark on", {"batch": 32 if device.type == "cuda" else sizes.step_batches[0],
                                             "cudnn_benchmark": True})]
    for label, kwargs in plan:
        if clock.left() < 20:
            rows.append([label, str(kwargs["batch"]), "skipped: time budget spent"] + [""] * 6)
            continue
        key = kwargs.get("train_backbone", True)
        started = time.perf_counter()
        r = attempt(time_step, sizes, device, count_flops=key not in flops, **kwargs)
        say(f"  [{time.perf_counter() - started:.0f} s] {label} batch {kwargs['batch']}: "
            + ("out of memory" if r.get("oom") else r.get("error") or f"{r['samples_s']:.1f} samples/s"))
        if "error" in r:
            free(device)
            rows.append([label, str(kwargs["batch"]), f"failed: {r['error']}"] + [""] * 6)
            continue
        if "flops_per_sample" in r:
            flops[key] = r["flops_per_sample"]
        if r.get("oom"):
            rows.append([label, str(r["batch"]), "out of memory, skipped"] + [""] * 6)
            continue
        if key and "cudnn_benchmark" not in kwargs:
            rates[r["batch"]] = r["samples_s"]
        tflops = flops.get(key, float("nan")) * r["samples_s"] / 1e12
        mfu = 100 * tflops / peak if peak else None
        rows.append([label, str(r["batch"]), fmt(r["step_s"], 3), fmt(r["samples_s"]),
                     f"{fmt(r.get('peak_gib'))} ({fmt(r.get('reserved_gib'))})", fmt(flops.get(key, 0) / 1e9, 0),
                     fmt(tflops), fmt(mfu) + (" %" if mfu is not None else ""), fmt(r.get("first_step_s"), 2)])
    report.table(STEP_HEADER, rows, STEP_ALIGN)
    report.add("GFLOP/sample counts convolutions and matrix products of forward + backward "
               "(`torch.utils.flop_counter`); the augmentation, normalisation and optimizer are in the time, "
               "not in the count. `first step s`: the first warm-up step (cuDNN's algorithm choice, allocations).")
    return rates, flops


STEP_HEADER = ["run", "batch", "s/step", "samples/s", "peak GiB (reserved)", "GFLOP/sample (fwd+bwd)", "TFLOP/s",
               "MFU", "first step s"]
STEP_ALIGN = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"


def part_compile(report: Report, sizes: Sizes, device: torch.device, clock: Clock, *, limit: float,
                 flops: float | None, peak: float | None) -> None:
    """Part a's ``torch.compile`` row, run last so that it only uses what is left of the budget."""
    report.add("", "## a, continued. Training step with torch.compile", "")
    report.add("`RunConfig(compile=True)` (`torch.compile` of the model, default mode) in a child process that is "
               "killed when the time budget runs out; 3 warm-up steps (the first compiles), then the median of 6 "
               "steps timed one by one (the log lists them: a recompilation shows as one slow step).")
    report.table(STEP_HEADER, [compile_row(sizes, device, clock, limit, flops, peak)], STEP_ALIGN)


def compile_row(sizes: Sizes, device: torch.device, clock: Clock, limit: float, flops: float | None,
                peak: float | None) -> list[str]:
    """``torch.compile`` at batch 32 in a child process, killed when the budget (or ``limit``) runs out."""
    batch = 32 if device.type == "cuda" else sizes.step_batches[0]
    label = "stage 2, torch.compile"
    timeout = min(limit, clock.left() - 5)
    if timeout < (10 if sizes.tiny else 60):
        return [label, str(batch), f"skipped: {max(timeout, 0):.0f} s left of the budget"] + [""] * 6
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "compile.json"
        spec = {"kind": "compile", "batch": batch, "device": str(device), "tiny": sizes.tiny,
                "loop_timed": sizes.loop_timed, "result": str(result_path)}
        say(f"  torch.compile child (limit {timeout:.0f} s) ...")
        started = time.perf_counter()
        status = run_child([sys.executable, __file__, "--child", json.dumps(spec)], timeout)
        if status == "killed":
            return [label, str(batch), f"not done within {timeout:.0f} s, killed"] + [""] * 6
        say(f"  [{time.perf_counter() - started:.0f} s] torch.compile child done")
        if not result_path.exists():
            return [label, str(batch), "child failed (see the log)"] + [""] * 6
        r = json.loads(result_path.read_text())
    if r.get("oom"):
        return [label, str(batch), "out of memory"] + [""] * 6
    tflops = (flops or float("nan")) * r["samples_s"] / 1e12
    mfu = 100 * tflops / peak if peak else None
    return [label, str(batch), fmt(r["step_s"], 3), fmt(r["samples_s"]),
            f"{fmt(r.get('peak_gib'))} ({fmt(r.get('reserved_gib'))})", fmt((flops or 0) / 1e9, 0), fmt(tflops),
            fmt(mfu) + (" %" if mfu is not None else ""), fmt(r.get("first_step_s"), 1) + " (compiling)"]


# ---------------------------------------------------------------------------------------------- b. loader vs GPU


def make_store(report: Report, sizes: Sizes, tmp: Path) -> str:
    """Synthetic audio featurized serially into ``tmp/store.zarr``; returns its path."""
    from soundception.featurize.pipeline import featurize_store
    from soundception.featurize.synthetic import make_dataset

    started = time.perf_counter()
    data = make_dataset(tmp / "audio", n_species=sizes.species, files_per_species=sizes.files_per_species,
                        min_seconds=sizes.min_seconds, max_seconds=sizes.max_seconds, formats=("wav",))
    made = time.perf_counter() - started
    url = str(tmp / "store.zarr")
    started = time.perf_counter()
    summary = featurize_store(data["paths"]["audio"], url, labels="folders")
    featurized = time.perf_counter() - started
    size = sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())
    report.add(f"Store: {data['n_files']} synthetic recordings of {sizes.min_seconds:.0f}-{sizes.max_seconds:.0f} s "
               f"({data['total_seconds'] / 60:.1f} min of audio; clips under 60 s are self-concatenated), "
               f"{sizes.species} species, written in {made:.1f} s, featurized serially (`featurize_store`, one "
               f"process) in {featurized:.1f} s: {summary.done} done, {summary.failed} failed, "
               f"{size / 2 ** 20:.0f} MiB on local disk (raw chunks, in the page cache when read).")
    return url


def time_loader(store_url: str, sizes: Sizes, *, workers: int, batch: int, pin_memory: bool) -> float:
    """Crops/s of the training loader alone (no model): steady state after ``2 x workers`` batches."""
    from soundception.shared.reader import FeatureStore
    from soundception.train.augment import AugmentConfig
    from soundception.train.dataset import (
        WindowDataset,
        WindowSampler,
        make_loader,
        trainable_indices,
    )

    store = FeatureStore(store_url)
    width = read_width(sizes.crop_px, AugmentConfig())
    skip = max(2, 2 * workers)
    total = skip + max(sizes.loader_batches, 6 * workers)
    sampler = WindowSampler(store, trainable_indices(store), batch_size=batch, read_width=width, seed=0,
                            stop_step=total)
    loader = make_loader(WindowDataset(store, width=width), sampler, num_workers=workers, pin_memory=pin_memory)
    iterator = iter(loader)
    for _ in range(skip):
        next(iterator)
    started = time.perf_counter()
    crops = sum(b["image"].shape[0] for b in iterator)
    seconds = time.perf_counter() - started
    del iterator, loader
    return crops / seconds


class TimedBatches:
    """The loop's batch iterator, with the time the consumer waited in each ``next()``.

    On CUDA a timing event is recorded on the current stream before and after each ``next()``: the
    GPU reaches the first when it has finished the work queued so far, and the second only once
    the host has the batch and queues it; the time between them is time the GPU sat idle for data
    (0 when the batch was ready before the GPU finished the previous step). On the CPU, where every
    step is synchronous, it is the wall time spent in ``next()``.
    """

    def __init__(self, inner: Iterator[dict[str, torch.Tensor]], device: torch.device) -> None:
        self.inner, self.cuda = inner, device.type == "cuda"
        self.events: list[tuple[Any, Any]] = []
        self.times: list[tuple[float, float]] = []

    def __iter__(self) -> TimedBatches:
        return self

    def _event(self) -> Any:
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __next__(self) -> dict[str, torch.Tensor]:
        before, event = time.perf_counter(), self._event()
        batch = next(self.inner)
        self.events.append((event, self._event()))
        self.times.append((before, time.perf_counter()))
        return batch

    def summary(self, warmup: int) -> dict[str, float]:
        """Over the steps from ``warmup`` up to the last ``next()`` (whose step is not complete)."""
        last = len(self.times) - 1
        steps = last - warmup
        if steps < 1:
            raise RuntimeError(f"only {len(self.times)} batches drawn")
        if self.cuda:
            torch.cuda.synchronize()
            span = self.events[warmup][0].elapsed_time(self.events[last][0]) / 1e3
            waited = sum(a.elapsed_time(b) for a, b in self.events[warmup:last]) / 1e3
        else:
            span = self.times[last][0] - self.times[warmup][0]
            waited = sum(b - a for a, b in self.times[warmup:last])
        host = sum(b - a for a, b in self.times[warmup:last])
        return {"steps": steps, "step_s": span / steps, "wait_share": waited / span, "host_next_s": host / steps}


TIMERS: list[TimedBatches] = []
RUNNERS: list[str] = []  # the class of the module each stage's steps called (DistributedDataParallel, ...)


@contextlib.contextmanager
def instrumented_loop(device: torch.device, *, force_ddp: bool = False) -> Iterator[None]:
    """Patch ``train.loop`` (this process only): time the batch iterator, skip checkpoint writes, and
    with ``force_ddp`` treat a one-process ``torchrun`` as distributed."""
    original_batches, original_save, original_start = loop.stage_batches, loop.save, rt.start
    original_wrap = loop.wrap_model

    def wrap_model(run: loop.Run) -> torch.nn.Module:
        runner = original_wrap(run)
        RUNNERS.append(type(runner).__name__)
        return runner

    def stage_batches(*args: Any, **kwargs: Any) -> tuple[Any, TimedBatches]:
        sampler, batches = original_batches(*args, **kwargs)
        TIMERS.append(TimedBatches(batches, device))
        return sampler, TIMERS[-1]

    loop.stage_batches, loop.wrap_model = stage_batches, wrap_model
    loop.save = lambda *args, **kwargs: None
    if force_ddp:
        rt.start = forced_ddp_start
    try:
        yield
    finally:
        loop.stage_batches, loop.save, rt.start = original_batches, original_save, original_start
        loop.wrap_model = original_wrap


class ForcedDistributed(rt.Runtime):
    """A one-rank process group that still takes the distributed path (DDP wrapper, all-reduce)."""

    @property
    def distributed(self) -> bool:
        return True


def forced_ddp_start(device: str = "auto") -> rt.Runtime:
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = rt.resolve_device(device, local_rank)
    if chosen.type == "cuda":
        chosen = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    return ForcedDistributed(device=chosen, rank=dist.get_rank(), world_size=dist.get_world_size(),
                             local_rank=local_rank)


def loop_run(store_url: str, out: Path, sizes: Sizes, device: torch.device, *, workers: int, batch: int,
             force_ddp: bool = False) -> dict[str, Any]:
    """``train.loop.train`` for ``warmup + timed + 1`` stage-2 steps; timings of the timed ones."""
    steps = sizes.loop_warmup + sizes.loop_timed + 1
    config = step_config(sizes, device, batch=batch, train_backbone=True, store=store_url, out=str(out),
                         workers=workers, steps=steps + 1)
    TIMERS.clear()
    RUNNERS.clear()
    started = time.perf_counter()
    oom = False
    with instrumented_loop(device, force_ddp=force_ddp):
        try:
            loop.train(config, progress=False, stop_at=steps)
        except torch.OutOfMemoryError:
            oom = True
    wall = time.perf_counter() - started
    if oom:
        TIMERS.clear()
        free(device)
        return {"oom": True, "wall_s": wall}
    result = TIMERS[-1].summary(sizes.loop_warmup)
    result.update(samples_s=batch / result["step_s"], wall_s=wall, workers=workers, batch=batch,
                  runner=RUNNERS[-1] if RUNNERS else "?")
    TIMERS.clear()
    free(device)
    return result


def part_b(report: Report, sizes: Sizes, device: torch.device, clock: Clock, tmp: Path,
           gpu_rates: dict[int, float], *, workers_given: bool = False
           ) -> tuple[str | None, int, dict[int, dict[str, Any]]]:
    report.add("", "## b. Loader against the GPU", "")
    store_url = make_store(report, sizes, tmp)
    report.write()
    batch = sizes.loop_batch
    fitting = [b for b in gpu_rates if b <= batch]
    if device.type == "cuda" and gpu_rates and batch not in gpu_rates:
        batch = max(fitting) if fitting else min(gpu_rates)
    # --workers is measured as given; the default counts stop at the machine's CPUs
    workers = list(sizes.workers) if workers_given else [w for w in sizes.workers if w <= (os.cpu_count() or 1)]
    loader_rates: dict[int, float] = {}
    loader_errors: dict[int, str] = {}
    for count in workers:
        if clock.left() < 30:
            break
        started = time.perf_counter()
        r = attempt(lambda n=count: {"rate": time_loader(store_url, sizes, workers=n, batch=batch,
                                                         pin_memory=device.type == "cuda")})
        if "error" in r:
            loader_errors[count] = r["error"]
        else:
            loader_rates[count] = r["rate"]
        say(f"  [{time.perf_counter() - started:.0f} s] loader alone, {count} workers: "
            + (r.get("error") or f"{r.get('rate', 0):.1f} crops/s"))
    loops: dict[int, dict[str, Any]] = {}
    for count in workers:
        if clock.left() < 45:
            say(f"  skipped the loop with {count} workers: time budget")
            break
        started = time.perf_counter()
        loops[count] = attempt(loop_run, store_url, tmp / f"run-w{count}", sizes, device, workers=count,
                               batch=batch)
        r = loops[count]
        if "error" in r:
            free(device)
        say(f"  [{time.perf_counter() - started:.0f} s] train loop, {count} workers: "
            + ("out of memory" if r.get("oom") else r.get("error") or f"{r['samples_s']:.1f} samples/s, "
               f"GPU waiting for data {100 * r['wait_share']:.1f} %"))
    gpu = gpu_rates.get(batch)
    report.add(f"(1) The training loader alone (no model; `WindowSampler` + `WindowDataset` + `make_loader`, "
               f"batch {batch}, pin_memory {'on' if device.type == 'cuda' else 'off'}): crops/s in steady state, "
               f"{os.cpu_count()} CPUs. (2) `train.loop.train`, stage 2 only, batch {batch}, "
               f"{sizes.loop_warmup} warm-up steps then {sizes.loop_timed} timed; `GPU waits` is the share of "
               f"the timed GPU time spent idle until the host had the next batch (CUDA events around each "
               f"`next()`); `vs resident` compares with the resident step at the same batch (part a, else part "
               f"d's unprofiled steps)"
               + (f" ({fmt(gpu)} samples/s)." if gpu else "."))
    rows = []
    for count in workers:
        rate = loader_rates.get(count)
        r = loops.get(count, {})
        cells = [str(count), loader_errors.get(count, fmt(rate)), fmt(rate / count if rate and count else None)]
        if not r:
            cells += ["skipped"] + [""] * 4
        elif r.get("oom"):
            cells += ["out of memory"] + [""] * 4
        elif "error" in r:
            cells += [f"failed: {r['error']}"] + [""] * 4
        else:
            cells += [fmt(1 / r["step_s"], 2), fmt(r["samples_s"]), f"{100 * r['wait_share']:.1f} %",
                      fmt(r["samples_s"] / gpu, 2) if gpu else "n/a", fmt(r["wall_s"], 0)]
        rows.append(cells)
    report.table(["loader workers", "loader alone crops/s", "per worker", "loop steps/s", "loop samples/s",
                  "GPU waits", "vs resident", "loop wall s (incl. set-up)"], rows)
    per_worker = [rate / count for count, rate in loader_rates.items() if count]
    if gpu and per_worker:
        need = gpu / max(per_worker)
        report.add(f"Balance: the GPU consumes {fmt(gpu)} samples/s at batch {batch}; one loader worker reads "
                   f"{fmt(max(per_worker))} crops/s at best here, so about {need:.1f} workers keep it fed "
                   f"(more when the store is not in the page cache, or on object storage).")
    return store_url, batch, loops


# ---------------------------------------------------------------------------------------------- c. DDP


def part_c(report: Report, sizes: Sizes, device: torch.device, clock: Clock, tmp: Path, store_url: str, batch: int,
           in_process: dict[str, Any] | None) -> None:
    report.add("", "## c. DDP on one GPU", "")
    workers = min(sizes.ddp_workers, os.cpu_count() or 1)
    modes = [("python (no launcher)", False, False), ("torchrun --nproc_per_node=1", True, False),
             ("torchrun --nproc_per_node=1, forced DDP", True, True)]
    rows = []
    plain = None
    for label, torchrun, force in modes:
        if clock.left() < 50:
            rows.append([label, "skipped: time budget spent"] + [""] * 6)
            continue
        result_path = tmp / f"ddp-{len(rows)}.json"
        spec = {"kind": "loop", "store": store_url, "out": str(tmp / f"ddp-run-{len(rows)}"), "workers": workers,
                "batch": batch, "device": str(device), "tiny": sizes.tiny, "loop_timed": sizes.loop_timed,
                "force_ddp": force, "result": str(result_path)}
        command = [sys.executable, __file__, "--child", json.dumps(spec)]
        if torchrun:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                       *command[1:]]
        started = time.perf_counter()
        status = run_child(command, max(clock.left() - 10, 30))
        wall = time.perf_counter() - started
        if not result_path.exists():
            say(f"  [{wall:.0f} s] {label}: no result ({status})")
            rows.append([label, f"no result ({status})"] + [""] * 6)
            continue
        r = json.loads(result_path.read_text())
        if r.get("oom"):
            rows.append([label, "out of memory"] + [""] * 6)
            continue
        plain = plain or (r["samples_s"] if not torchrun else None)
        say(f"  [{wall:.0f} s] {label}: {r['samples_s']:.1f} samples/s, process group: {r['group']}")
        rows.append([label, r["group"], f"`{r['runner']}`", fmt(r["samples_s"]), fmt(r["step_s"], 3),
                     f"{100 * r['wait_share']:.1f} %",
                     fmt(r["samples_s"] / plain, 3) if plain else "n/a", fmt(wall, 0)])
    report.add(f"`train.loop.train` in a child process, batch {batch}, {workers} loader worker(s), "
               f"{sizes.loop_warmup} warm-up + {sizes.loop_timed} timed steps, checkpoints off. "
               f"`torchrun --nproc_per_node=1` sets `WORLD_SIZE=1`, and `train.runtime.start` joins a process "
               f"group only when `WORLD_SIZE > 1`, so the trainer under it is the single-process path; the last "
               f"row forces the distributed path (a one-rank {'NCCL' if device.type == 'cuda' else 'gloo'} "
               f"process group, `DistributedDataParallel`, its bucketed gradient all-reduce) to show that it "
               f"works and what it costs. With one GPU nothing says how it scales over several.")
    if in_process:
        report.add(f"For reference, the same loop in this process (part b, {in_process['workers']} workers): "
                   f"{fmt(in_process['samples_s'])} samples/s.")
    report.table(["launch", "process group", "model called", "samples/s", "s/step", "GPU waits", "vs python",
                  "wall s (child)"], rows, "|---|---|---|---:|---:|---:|---:|---:|")


def run_child(command: list[str], timeout: float) -> str:
    """Run ``command`` in its own process group; kill the whole group after ``timeout`` s.

    Returns ``"exit N"`` or ``"killed"`` (torchrun's workers and inductor's compile workers go too).
    """
    import signal

    process = subprocess.Popen(command, start_new_session=True)
    try:
        return f"exit {process.wait(timeout=timeout)}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "killed"


def child(spec: dict[str, Any]) -> None:
    """A child process: one compiled-step measurement or one loop run; writes its JSON result."""
    sizes = replace(TINY if spec["tiny"] else FULL, loop_timed=spec["loop_timed"])
    device = rt.resolve_device(spec["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if spec["kind"] == "compile":
        result = time_step(sizes, device, batch=spec["batch"], compile_model=True, warmup=3, timed=6)
    else:
        result = loop_run(spec["store"], Path(spec["out"]), sizes, device, workers=spec["workers"],
                          batch=spec["batch"], force_ddp=spec["force_ddp"])
        result["group"] = group_description(spec["force_ddp"])
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["result"]).write_text(json.dumps(result))


def group_description(force_ddp: bool) -> str:
    world = os.environ.get("WORLD_SIZE")
    if force_ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        return f"{backend}, 1 rank, DDP"
    return "none (WORLD_SIZE=1)" if world else "none"


# ---------------------------------------------------------------------------------------------- d. the step's time


PHASES = ("input copy", "augmentation", "normalisation", "forward", "loss", "backward", "gradient clipping",
          "optimizer")
PHASE_NOTES = {
    "input copy": "`zero_grad`, `next(batches)`, the uint8 batch's host-to-device copy",
    "augmentation": "`augment_batch` (called by `get_batch`)",
    "normalisation": "`model.normalize`, channels_last copy, labels and targets to the device",
    "forward": "`runner(images)` under bf16 autocast (main and auxiliary heads)",
    "loss": "`soundception_loss` (with its two `float()` reads of the parts)",
    "backward": "`loss.backward()` and the `float(loss)` read after it",
    "gradient clipping": "`torch.nn.utils.clip_grad_norm_`",
    "optimizer": "`optimizer.step()` (AdamW)",
}
END = "end"
PREFIX = "phase: "


class PhaseMarks:
    """Phase boundaries inside ``train.loop.train_step``, stamped from wrappers of the functions it calls.

    Each ``mark(name)`` ends the running phase and starts ``name``: on CUDA a timing event recorded on
    the current stream (the GPU passes it when the work queued before it is done, so the time between
    two marks is the GPU time the phase took, idle gaps in it included), on the CPU ``perf_counter``.
    With ``annotate`` each phase is also a ``torch.profiler.record_function`` range (``phase: name``),
    so that the profiler can attribute kernels to phases by when their launching op ran on the host.
    """

    def __init__(self, device: torch.device, annotate: bool = False) -> None:
        self.cuda, self.annotate = device.type == "cuda", annotate
        self.steps: list[list[tuple[str, Any]]] = []
        self.active = False
        self.range: Any = None

    def start_step(self) -> None:
        self.active = True
        self.steps.append([])
        self.mark(PHASES[0])

    def end_step(self) -> None:
        self.mark(END)
        self.active = False

    def mark(self, name: str) -> None:
        if not self.active:
            return
        if self.annotate:
            if self.range is not None:
                self.range.__exit__(None, None, None)
                self.range = None
            if name != END:
                self.range = torch.profiler.record_function(PREFIX + name)
                self.range.__enter__()
        if self.cuda:
            stamp = torch.cuda.Event(enable_timing=True)
            stamp.record()
        else:
            stamp = time.perf_counter()
        self.steps[-1].append((name, stamp))

    def seconds(self) -> tuple[dict[str, float], float]:
        """Seconds per phase summed over the steps, and the steps' total (call after a sync)."""
        spans: dict[str, float] = {}
        total = 0.0
        for marks in self.steps:
            for (name, a), (_, b) in itertools.pairwise(marks):
                span = a.elapsed_time(b) / 1e3 if self.cuda else b - a
                spans[name] = spans.get(name, 0.0) + span
                total += span
        return spans, total


@contextlib.contextmanager
def phase_hooks(runner: torch.nn.Module, optimizer: torch.optim.Optimizer, holder: list[PhaseMarks]
                ) -> Iterator[None]:
    """Mark ``holder[0]``'s phases from what ``train_step`` calls (this process only, undone on exit):
    ``train.loop.augment_batch`` and ``train.loop.soundception_loss`` (wrapped), a forward pre-hook on
    the runner, ``torch.nn.utils.clip_grad_norm_`` (wrapped) and an optimizer step pre-hook."""
    original_augment, original_loss = loop.augment_batch, loop.soundception_loss
    original_clip = torch.nn.utils.clip_grad_norm_

    def augment_batch(*args: Any, **kwargs: Any) -> Any:
        holder[0].mark("augmentation")
        out = original_augment(*args, **kwargs)
        holder[0].mark("normalisation")
        return out

    def soundception_loss(*args: Any, **kwargs: Any) -> Any:
        holder[0].mark("loss")
        out = original_loss(*args, **kwargs)
        holder[0].mark("backward")
        return out

    def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
        holder[0].mark("gradient clipping")
        return original_clip(*args, **kwargs)

    handles = [runner.register_forward_pre_hook(lambda module, args: holder[0].mark("forward")),
               optimizer.register_step_pre_hook(lambda opt, args, kwargs: holder[0].mark("optimizer"))]
    loop.augment_batch, loop.soundception_loss = augment_batch, soundception_loss
    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
    try:
        yield
    finally:
        loop.augment_batch, loop.soundception_loss = original_augment, original_loss
        torch.nn.utils.clip_grad_norm_ = original_clip
        for handle in handles:
            handle.remove()


def profile_step(sizes: Sizes, device: torch.device, batch: int) -> dict[str, Any]:
    """Warm-up steps, then ``profile_steps`` steps timed phase by phase, then as many under
    ``torch.profiler``; returns the raw material of part d (the profiler's events, not a table)."""
    from torch.profiler import ProfilerActivity, profile

    config = step_config(sizes, device, batch=batch, train_backbone=True)
    result: dict[str, Any] = {"batch": batch}
    oom = False
    try:
        run, runner, optimizer, scheduler, sampler, batches = step_setup(config, device, batch, True)
        holder = [PhaseMarks(device)]
        step = 0

        def steps(count: int) -> float:
            nonlocal step
            sync(device)
            started = time.perf_counter()
            for _ in range(count):
                holder[0].start_step()
                loop.train_step(run, runner, optimizer, batches, sampler, step)  # type: ignore[arg-type]
                holder[0].end_step()
                scheduler.step()
                step += 1
            sync(device)
            return time.perf_counter() - started

        with phase_hooks(runner, optimizer, holder):
            steps(sizes.step_warmup)
            holder[0] = PhaseMarks(device)
            wall = steps(sizes.profile_steps)
            result["phase_s"], result["marked_s"] = holder[0].seconds()
            result["step_s"] = wall / sizes.profile_steps
            holder[0] = PhaseMarks(device, annotate=True)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                result["profiled_s"] = steps(sizes.profile_steps)
            holder[0] = PhaseMarks(device)
        started = time.perf_counter()
        result["events"] = prof.events()
        result["averages"] = prof.key_averages()
        result["parse_s"] = time.perf_counter() - started
    except torch.OutOfMemoryError:
        oom = True
    if oom:
        result = {"batch": batch, "oom": True}
    run = runner = optimizer = scheduler = batches = None
    free(device)
    return result


def device_time(item: Any, self_only: bool = True) -> float:
    """Microseconds of device time of a profiler event or average (names changed across torch versions)."""
    names = (("self_device_time_total", "self_cuda_time_total") if self_only
             else ("device_time_total", "cuda_time_total"))
    for name in names:
        value = getattr(item, name, None)
        if value is not None:
            return float(value)
    return 0.0


def device_events(events: list[Any]) -> list[Any]:
    """The kernels, memcpys and memsets on the GPU: device events that are not ``record_function`` ranges
    mirrored on the GPU (flagged ``is_user_annotation``, or, in a torch without that flag, named like a
    host event)."""
    from torch.autograd import DeviceType

    host_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    return [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            and e.name not in host_names and not e.name.startswith(PREFIX)]


def per_step(count: int, steps: int) -> str:
    return str(count // steps) if count % steps == 0 else f"{count / steps:.1f}"


def kernel_family(name: str) -> str:
    """A coarse family from a kernel's name (first match wins)."""
    lower = name.lower()
    for family, keys in (("memcpy / memset", ("memcpy", "memset")),
                         ("layout conversion (NCHW <-> NHWC, transpose)", ("nchwtonhwc", "nhwctonchw", "transpose")),
                         ("convolution (cuDNN / implicit GEMM)", ("conv", "fprop", "dgrad", "wgrad", "implicit",
                                                                  "xmma", "cudnn")),
                         ("matrix product (GEMM)", ("gemm", "cublas", "cutlass", "matmul")),
                         ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
                         ("multi-tensor (optimizer, grad norm)", ("multi_tensor", "foreach")),
                         ("reduction", ("reduce",)),
                         ("pooling", ("pool",)),
                         ("elementwise", ("elementwise", "vectorized", "unrolled"))):
        if any(key in lower for key in keys):
            return family
    return "other"


def short(name: str, width: int = 70) -> str:
    name = " ".join(name.split()).replace("|", "/")
    return name if len(name) <= width else name[:width - 3] + "..."


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def part_d(report: Report, sizes: Sizes, device: torch.device, clock: Clock) -> dict[str, Any]:
    """Profile of ``train_step`` at batch 32: top ops, phases, GPU idle. Every failure is a report line."""
    cuda = device.type == "cuda"
    batch = sizes.profile_batch
    report.add("", "## d. Where the step's time goes", "")
    report.add(f"`train.loop.train_step`, stage 2, batch {batch}, the setup of part a "
               f"(`Soundception('{sizes.backbone}', {N_CLASSES} classes)`, {FeaturizerConfig().image_height} x "
               f"{sizes.crop_px} px, {'bf16 autocast + channels_last' if cuda else 'fp32'}, AdamW, resident "
               f"batch): {sizes.step_warmup} warm-up steps, {sizes.profile_steps} steps timed phase by phase, then "
               f"{sizes.profile_steps} steps under `torch.profiler` (activities CPU"
               f"{' + CUDA' if cuda else ''}).")
    if clock.left() < (10 if sizes.tiny else 40):
        report.add("", f"Skipped: {max(clock.left(), 0):.0f} s left of the budget.")
        return {}
    started = time.perf_counter()
    r = attempt(profile_step, sizes, device, batch)
    say(f"  [{time.perf_counter() - started:.0f} s] profiled {sizes.profile_steps} steps"
        + (f" (profiler post-processing {r['parse_s']:.0f} s)" if "parse_s" in r else ""))
    if r.get("oom"):
        report.add("", f"Out of memory at batch {batch}: nothing measured.")
        return {}
    if "error" in r:
        free(device)
        report.add("", f"Failed: {r['error']}")
        return {}
    steps = sizes.profile_steps
    report.add("", f"Unprofiled: {fmt(r['step_s'], 3)} s/step ({fmt(batch / r['step_s'])} samples/s); under the "
                   f"profiler: {fmt(r['profiled_s'] / steps, 3)} s/step.")
    kernels: dict[str, Any] = {}
    for name, function in (("top operations", d_top_ops), ("kernel families", d_families),
                           ("phases", d_phases), ("GPU idle", d_idle)):
        try:
            function(report, r, cuda, steps, kernels)
        except Exception as error:
            import traceback

            traceback.print_exc()
            report.add("", f"{name}: failed ({' '.join(f'{type(error).__name__}: {error}'.split())[:200]}).")
    summary = {"step_s": r["step_s"], "batch": batch}
    r.clear()
    gc.collect()
    return summary


def d_top_ops(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(i) The top 15 operations by self device time (self CPU time on the CPU), with their main kernel."""
    from torch.autograd import DeviceType

    events = r["events"]
    on_device = device_events(events) if cuda else []
    total = sum(e.time_range.elapsed_us() for e in on_device)
    kernels.update(events=on_device, total_us=total)
    main_kernel: dict[str, dict[str, float]] = {}
    for event in events:
        if event.device_type == DeviceType.CPU:
            for kernel in getattr(event, "kernels", []):
                by_name = main_kernel.setdefault(event.name, {})
                by_name[kernel.name] = by_name.get(kernel.name, 0.0) + kernel.duration
    ops = [a for a in r["averages"] if a.device_type == DeviceType.CPU and not a.key.startswith(PREFIX)]
    if cuda:
        ops = [a for a in ops if device_time(a) > 0]
        ops.sort(key=device_time, reverse=True)
        rows = []
        for a in ops[:15]:
            by_name = main_kernel.get(a.key, {})
            top = max(by_name, key=by_name.get) if by_name else ""
            rows.append([f"`{short(a.key, 50)}`", per_step(a.count, steps), fmt(device_time(a) / 1e3 / steps, 2),
                         f"{100 * device_time(a) / total:.1f} %" if total else "n/a",
                         f"`{short(top, 60)}`" + (f" ({100 * by_name[top] / sum(by_name.values()):.0f} %)"
                                                   if top else "")])
        covered = sum(device_time(a) for a in ops[:15])
        report.add("", f"(i) Top 15 operations by self CUDA time (the kernels an operation launches itself, "
                       f"`key_averages()` grouped by operation name, so the shares add up without double counting "
                       f"and to 100 % over all operations). Total kernel time (kernels + copies + memsets on the "
                       f"GPU): {fmt(total / 1e3 / steps, 1)} ms/step; these 15: {100 * covered / total:.1f} %."
                   if total else "(i) No CUDA kernels recorded.")
        report.table(["operation", "calls/step", "CUDA ms/step", "share of CUDA time",
                      "its longest kernel (share of the operation)"], rows, "|---|---:|---:|---:|---|")
    else:
        ops.sort(key=lambda a: a.self_cpu_time_total, reverse=True)
        total_cpu = sum(a.self_cpu_time_total for a in ops)
        rows = [[f"`{short(a.key, 50)}`", per_step(a.count, steps), fmt(a.self_cpu_time_total / 1e3 / steps, 2),
                 f"{100 * a.self_cpu_time_total / total_cpu:.1f} %" if total_cpu else "n/a"] for a in ops[:15]]
        report.add("", "(i) Top 15 operations by self CPU time (`key_averages()`; CPU activity only on the CPU).")
        report.table(["operation", "calls/step", "CPU ms/step", "share of CPU time"], rows)


def d_families(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """Kernel time by kernel family (from the kernels' names)."""
    if not cuda or not kernels.get("total_us"):
        return
    families: dict[str, list[float]] = {}
    for event in kernels["events"]:
        entry = families.setdefault(kernel_family(event.name), [0.0, 0])
        entry[0] += event.time_range.elapsed_us()
        entry[1] += 1
    total = kernels["total_us"]
    rows = [[family, per_step(n, steps), fmt(us / 1e3 / steps, 2), f"{100 * us / total:.1f} %"]
            for family, (us, n) in sorted(families.items(), key=lambda kv: -kv[1][0])]
    report.add("The same kernel time by kernel family (a coarse grouping of the kernels' names):")
    report.table(["kernel family", "kernels/step", "CUDA ms/step", "share"], rows)


def d_phases(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(ii) Phases: span between marks (unprofiled steps) and, on CUDA, kernel time by launching phase."""
    from torch.autograd import DeviceType

    spans, marked = r["phase_s"], r["marked_s"]
    busy: dict[str, float] = {}
    if cuda and kernels.get("total_us"):
        ranges = sorted((e.time_range.start, e.time_range.end, e.name[len(PREFIX):]) for e in r["events"]
                        if e.device_type == DeviceType.CPU and e.name.startswith(PREFIX))
        import bisect

        starts = [a for a, _, _ in ranges]
        for event in r["events"]:
            if event.device_type != DeviceType.CPU:
                continue
            for kernel in getattr(event, "kernels", []):
                i = bisect.bisect_right(starts, event.time_range.start) - 1
                phase = ranges[i][2] if i >= 0 and event.time_range.start <= ranges[i][1] else "outside the phases"
                busy[phase] = busy.get(phase, 0.0) + kernel.duration / 1e6
    if busy:
        missing = kernels["total_us"] / 1e6 - sum(busy.values())
        if missing > 0.001 * kernels["total_us"] / 1e6:  # device events whose launching host event was not found
            busy["not attributed"] = missing
    kernel_total = sum(busy.values())
    names = [p for p in PHASES if p in spans or p in busy] + [p for p in busy if p not in PHASES]
    rows = []
    for name in names:
        span = spans.get(name)
        cells = [name, fmt(span * 1e3 / steps, 2) if span is not None else "n/a",
                 f"{100 * span / marked:.1f} %" if span is not None and marked else "n/a"]
        if cuda:
            k = busy.get(name)
            cells += [fmt(k * 1e3 / steps, 2) if k is not None else "0.00",
                      f"{100 * (k or 0) / kernel_total:.1f} %" if kernel_total else "n/a",
                      f"{100 * (k or 0) / span:.0f} %" if span else "n/a"]
        note = PHASE_NOTES.get(name, {"not attributed": "device events the profiler linked to no host event"}.get(
            name, "kernels launched outside the marked phases"))
        for cuda_only in ([] if cuda else [" under bf16 autocast", "'s host-to-device copy", ", channels_last copy"]):
            note = note.replace(cuda_only, "")
        cells.append(note)
        rows.append(cells)
    how = ("on the GPU: the time between CUDA events recorded at the phase boundaries on the step's stream "
           "(idle gaps inside a phase count towards it)" if cuda else "`perf_counter` at the phase boundaries")
    report.add("", f"(ii) Phases of the step. `train_step` is called unchanged; the bench marks its phases from "
                   f"wrappers of the functions it calls (`train.loop.augment_batch`, `train.loop.soundception_loss`, "
                   f"`torch.nn.utils.clip_grad_norm_`, patched in this process only), a forward pre-hook on the model "
                   f"and an optimizer step pre-hook. `ms/step` is measured on the {steps} unprofiled steps, {how}; "
                   f"the phases add up to {fmt(marked * 1e3 / steps, 1)} ms/step."
               + (" `kernel ms/step` is the profiled steps' kernel time attributed to the phase whose "
                  "`record_function` range was open on the host when the kernel's operation was launched (backward "
                  "kernels are launched by autograd's own thread while the main thread waits in `backward()`), and "
                  "`busy` is that kernel time over the phase's span." if cuda else ""))
    header = ["phase", "ms/step", "share of step"] + (["kernel ms/step", "share of kernel time", "busy"] if cuda
                                                      else []) + ["what it covers"]
    report.table(header, rows, "|---|" + "---:|" * (len(header) - 2) + "---|")


def d_idle(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(iii) GPU idle share: kernel time against wall time."""
    if not cuda:
        report.add("(iii) GPU idle: not applicable on the CPU.")
        return
    events = kernels.get("events") or []
    if not events:
        report.add("(iii) GPU idle: no kernels recorded.")
        return
    busy_us = union_us([(e.time_range.start, e.time_range.end) for e in events])
    kernel_s = kernels["total_us"] / 1e6 / steps
    profiled = r["profiled_s"] / steps
    idle = 100 * (1 - busy_us / 1e6 / steps / profiled)
    report.add(f"(iii) GPU idle within the step. Under the profiler the GPU was busy (union of kernel, copy and "
               f"memset intervals) {fmt(busy_us / 1e3 / steps, 1)} ms of {fmt(profiled * 1e3, 1)} ms/step of wall "
               f"time (synchronised before and after the {steps} steps): idle {idle:.1f} %"
               f" (the profiler's own host overhead included). Against the unprofiled step "
               f"({fmt(r['step_s'] * 1e3, 1)} ms), {fmt(kernel_s * 1e3, 1)} ms of kernel time per step leaves the "
               f"GPU idle {100 * (1 - kernel_s / r['step_s']):.1f} % of the time (kernels on one stream do not "
               f"overlap; a sum above the union would mean they did: "
               f"{fmt(kernels['total_us'] / 1e3 / steps, 1)} vs {fmt(busy_us / 1e3 / steps, 1)} ms).")


# ---------------------------------------------------------------------------------------------- e. average pooling


class BoxAvgPool2d(nn.Module):
    """``nn.AvgPool2d`` as a depthwise convolution with ones weights (``groups`` = channels, no bias) divided
    by the number of positions each window sums: with ``count_include_pad=False`` the non-padded ones, a
    ``(1, 1, H_out, W_out)`` map obtained by convolving a ones tensor of shape ``(1, 1, H, W)`` the same way,
    computed once per input size, dtype and device and cached; else the kernel's area or
    ``divisor_override``. The sum accumulates in fp32 inside the convolution; in bf16 the result is rounded
    twice (the sum, then the quotient) where ``avg_pool2d`` rounds once. ``ceil_mode`` is not supported."""

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, count_include_pad: bool = True,
                 divisor_override: int | None = None) -> None:
        super().__init__()
        pair = torch.nn.modules.utils._pair
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override
        self._weights: dict[tuple[Any, ...], torch.Tensor] = {}
        self._divisors: dict[tuple[Any, ...], torch.Tensor] = {}

    @staticmethod
    def unsupported(pool: nn.AvgPool2d) -> str | None:
        """Why ``pool`` cannot be replaced, or None."""
        return "ceil_mode=True" if pool.ceil_mode else None

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d) -> nn.Module:
        """The replacement of ``pool`` (``pool`` itself when unsupported)."""
        if cls.unsupported(pool):
            return pool
        return cls(pool.kernel_size, pool.stride if pool.stride is not None else pool.kernel_size, pool.padding,
                   pool.count_include_pad, pool.divisor_override)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"count_include_pad={self.count_include_pad}, divisor_override={self.divisor_override}")

    def divisor(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | float:
        if self.divisor_override:
            return float(self.divisor_override)
        if self.count_include_pad:
            return float(self.kernel_size[0] * self.kernel_size[1])
        key = (height, width, dtype, device)
        divisor = self._divisors.get(key)
        if divisor is None:
            with torch.autocast(device.type, enabled=False), torch.no_grad():
                ones = torch.ones(1, 1, height, width, device=device)
                counts = F.conv2d(ones, torch.ones(1, 1, *self.kernel_size, device=device), None, self.stride,
                                  self.padding)
            divisor = self._divisors[key] = counts.to(dtype)  # small integers: exact in bf16
        return divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        key = (channels, x.dtype, x.device)
        weight = self._weights.get(key)
        if weight is None:
            weight = self._weights[key] = torch.ones(channels, 1, *self.kernel_size, dtype=x.dtype, device=x.device)
        out = F.conv2d(x, weight, None, self.stride, self.padding, 1, channels)
        # in place: the convolution's backward needs its input and weight, not its output
        return out.div_(self.divisor(x.shape[-2], x.shape[-1], out.dtype, out.device))


class SeparableAvgPool2d(BoxAvgPool2d):
    """The same average as :class:`BoxAvgPool2d` by shifted sums: zero padding, ``kernel_w - 1`` adds of
    shifted views along W, ``kernel_h - 1`` along H, one division; elementwise kernels only (in bf16 each
    add rounds). Stride 1 only."""

    @staticmethod
    def unsupported(pool: nn.AvgPool2d) -> str | None:
        stride = torch.nn.modules.utils._pair(pool.stride if pool.stride is not None else pool.kernel_size)
        return "ceil_mode=True" if pool.ceil_mode else None if stride == (1, 1) else f"stride {stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kernel_h, kernel_w), (pad_h, pad_w) = self.kernel_size, self.padding
        height, width = x.shape[-2:]
        out_h, out_w = height + 2 * pad_h - kernel_h + 1, width + 2 * pad_w - kernel_w + 1
        padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else x
        rows = padded[..., 0:out_w]
        for j in range(1, kernel_w):
            rows = rows + padded[..., j:j + out_w]
        out = rows[..., 0:out_h, :]
        for i in range(1, kernel_h):
            out = out + rows[..., i:i + out_h, :]
        divisor = self.divisor(height, width, out.dtype, out.device)
        return out.div_(divisor) if out._base is None else out / divisor


class NchwAvgPool2d(nn.Module):
    """An ``nn.AvgPool2d`` run on ``x.contiguous()`` (NCHW), its output converted back to channels_last when
    the input was channels_last."""

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x.contiguous())
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def avg_pools(model: nn.Module) -> list[tuple[str, nn.AvgPool2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.AvgPool2d)]


def pool_config(pool: nn.AvgPool2d) -> str:
    return (f"kernel_size={pool.kernel_size}, stride={pool.stride}, padding={pool.padding}, "
            f"ceil_mode={pool.ceil_mode}, count_include_pad={pool.count_include_pad}, "
            f"divisor_override={pool.divisor_override}")


def replace_pools(model: nn.Module, make: Callable[[nn.AvgPool2d], nn.Module]) -> tuple[int, int]:
    """Put ``make(pool)`` in the place of every ``nn.AvgPool2d`` of ``model``; returns (replaced, found)."""
    found = avg_pools(model)
    replaced = 0
    for name, pool in found:
        parent, _, attribute = name.rpartition(".")
        new = make(pool)
        if new is not pool:
            setattr(model.get_submodule(parent), attribute, new)
            replaced += 1
    return replaced, len(found)


def nchw_model(model: nn.Module) -> None:
    """The model in the default (contiguous) memory format, and its input made contiguous by a forward
    pre-hook (``train.loop.get_batch`` makes the batch channels_last on CUDA)."""
    model.to(memory_format=torch.contiguous_format)
    model.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def forward_check(run: loop.Run, batch: int = 2) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
    """Main logits of a fixed batch of ``batch`` random crops, fp32 (no autocast, TF32 off), eval mode
    (dropout off) with batch norm on the batch's statistics (its running buffers set aside for the call: a
    fresh model's running statistics make the backbone's activations vanish, ~1e-10, so eval-mode logits
    would not depend on the backbone); nothing of the model changes. Also the input shape of each
    ``nn.AvgPool2d``."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model, device = run.model, run.runtime.device
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(batch, 3, FeaturizerConfig().image_height, run.crop_width, generator=generator).to(device)
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:  # returns None: the input is unchanged
            shapes.setdefault(name, tuple(args[0].shape))
        return record

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in avg_pools(model)]
    modes = [(m, m.training) for m in model.modules()]
    norms = [(m, m.running_mean, m.running_var) for m in model.modules() if isinstance(m, _BatchNorm)]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        model.eval()
        for m, _, _ in norms:
            m.running_mean = m.running_var = None
        with torch.no_grad():
            x = model.normalize(images)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)  # as get_batch
            logits = model(x).logits.float().cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        for m, mean, var in norms:
            m.running_mean, m.running_var = mean, var
        for m, training in modes:
            m.training = training
        for handle in handles:
            handle.remove()
    return logits, shapes


def pool_unit_check(report: Report, device: torch.device, pool: nn.AvgPool2d) -> None:
    """Both replacements against ``pool`` on a random tensor: forward and input gradient, fp32 and bf16,
    NCHW and channels_last; in bf16 also each one's error against an fp64 computation on the same values."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(2, 24, 17, 45, generator=generator)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        values = base.to(dtype)
        exact = values.double().requires_grad_()
        truth = pool(exact)
        grad = torch.randn(truth.shape, generator=generator).to(dtype)
        truth.backward(grad.double())
        truth, truth_grad = truth.detach(), exact.grad
        for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            def run(module: nn.Module, values: torch.Tensor = values, grad: torch.Tensor = grad,
                    memory_format: torch.memory_format = memory_format) -> tuple[torch.Tensor, torch.Tensor]:
                x = values.to(device).clone(memory_format=memory_format).requires_grad_()
                out = module(x)
                out.backward(grad.to(device).contiguous(memory_format=memory_format))
                return out.detach(), x.grad

            ref_out, ref_grad = run(pool)
            native_error = (ref_out.double().cpu() - truth).abs().max().item()
            native_grad_error = (ref_grad.double().cpu() - truth_grad).abs().max().item()
            for name, kind in (("depthwise conv", BoxAvgPool2d), ("separable sums", SeparableAvgPool2d)):
                out, grad_in = run(kind.from_pool(pool))
                kept = out.is_contiguous(memory_format=memory_format)
                rows.append([name, str(dtype).replace("torch.", ""), layout,
                             f"{(out - ref_out).abs().max().item():.2e}",
                             f"{(grad_in - ref_grad).abs().max().item():.2e}",
                             f"{(out.double().cpu() - truth).abs().max().item():.2e} vs {native_error:.2e}",
                             (f"{(grad_in.double().cpu() - truth_grad).abs().max().item():.2e} vs "
                              f"{native_grad_error:.2e}"),
                             "yes" if kept else "no"])
    say(f"  unit check against nn.AvgPool2d({pool_config(pool)}) on {device}: max |difference| "
        + ", ".join(f"{r[0]} {r[1]} {r[2]} {r[3]}" for r in rows))
    report.add("", f"(i) Unit check of the replacements against `nn.AvgPool2d({pool_config(pool)})` on a random "
                   f"{tuple(base.shape)} tensor, on {device.type.upper()}: max |difference| of the output and of "
                   f"the input's gradient (a fixed random output gradient); the errors of the output and of the "
                   f"gradient against fp64 on the CPU (NCHW, the same rounded values and output gradient), each "
                   f"against `nn.AvgPool2d`'s own; whether the output keeps the input's memory format. (PyTorch's "
                   f"CUDA channels_last `avg_pool2d` backward ignored the padding, pytorch/pytorch#188344, fixed "
                   f"by #188345: there `nn.AvgPool2d`'s gradient is the wrong one.)")
    report.table(["replacement", "dtype", "input", "output vs AvgPool2d", "gradient vs AvgPool2d",
                  "output error vs fp64 (AvgPool2d's)", "gradient error vs fp64 (AvgPool2d's)", "layout kept"],
                 rows, "|---|---|---|---:|---:|---:|---:|---|")


POOL_VARIANTS = (
    ("1. as the trainer runs it (nn.AvgPool2d)", "today"),
    ("2. contiguous (NCHW) model and input", "nchw"),
    ("3. AvgPool2d -> depthwise 3x3 ones conv / valid count", "conv"),
    ("4. AvgPool2d on x.contiguous() (NCHW), back to channels_last", "wrap"),
    ("5. AvgPool2d -> separable shifted sums / valid count", "separable"),
)


def pool_transform(kind: str, counts: dict[str, tuple[int, int]]) -> Callable[[nn.Module], Any] | None:
    def replace_with(make: Callable[[nn.AvgPool2d], nn.Module]) -> Callable[[nn.Module], Any]:
        def transform(model: nn.Module) -> None:
            counts[kind] = replace_pools(model, make)
        return transform

    return {"today": None, "nchw": nchw_model, "conv": replace_with(BoxAvgPool2d.from_pool),
            "wrap": replace_with(NchwAvgPool2d), "separable": replace_with(SeparableAvgPool2d.from_pool)}[kind]


def survey_pools(sizes: Sizes, device: torch.device) -> list[tuple[str, nn.AvgPool2d]]:
    """The model's ``nn.AvgPool2d`` modules (the model built on the meta device: structure only)."""
    from soundception.train.model import build_model

    config = step_config(sizes, device, batch=2, train_backbone=True)
    try:
        with torch.device("meta"):
            model = build_model(config, N_CLASSES)
    except Exception:
        model = build_model(config, N_CLASSES)
    return avg_pools(model)


def time_pool_op(device: torch.device, shape: tuple[int, ...], module: nn.Module, memory_format: torch.memory_format,
                 reps: int) -> tuple[float, float]:
    """ms of one forward and of one forward + backward of ``module`` on a bf16 tensor (CUDA) / fp32 (CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn_like(module(x).detach())

    def clocked(backward: bool) -> float:
        for _ in range(2):
            out = module(x)
            if backward:
                out.backward(grad)
        sync(device)
        started = time.perf_counter()
        for _ in range(reps):
            out = module(x)
            if backward:
                out.backward(grad)
        sync(device)
        return (time.perf_counter() - started) / reps * 1e3

    try:
        return clocked(False), clocked(True)
    finally:
        x = grad = None
        free(device)


def pool_timings(report: Report, device: torch.device, pool: nn.AvgPool2d, shapes: list[tuple[int, ...]],
                 batch: int, reps: int) -> None:
    """(iii) The pooling alone, each formulation at each distinct input shape of the model's pools."""
    counts: dict[tuple[int, ...], int] = {}
    for shape in shapes:
        counts[(batch, *shape[1:])] = counts.get((batch, *shape[1:]), 0) + 1
    channels_last, nchw = torch.channels_last, torch.contiguous_format
    plans = [("nn.AvgPool2d, channels_last (today)", pool, channels_last, False),
             ("nn.AvgPool2d, NCHW input (variant 2's pool)", pool, nchw, False),
             ("nn.AvgPool2d on x.contiguous(), back (variant 4)", NchwAvgPool2d(pool), channels_last, False),
             ("depthwise ones conv / count (variant 3)", BoxAvgPool2d.from_pool(pool), channels_last, False),
             ("the same, cudnn.benchmark on", BoxAvgPool2d.from_pool(pool), channels_last, True),
             ("separable shifted sums / count (variant 5)", SeparableAvgPool2d.from_pool(pool), channels_last, False)]
    if device.type != "cuda":
        plans = [p for p in plans if not p[3]]
    rows = []
    for label, module, memory_format, benchmark in plans:
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark
        cells, total_fwd, total = [label], 0.0, 0.0
        try:
            for shape, n in counts.items():
                fwd, both = time_pool_op(device, shape, module, memory_format, reps)
                cells.append(f"{fwd:.2f} / {both:.2f}")
                total_fwd, total = total_fwd + n * fwd, total + n * both
            cells += [f"{total_fwd:.1f} / {total:.1f}"]
        except Exception as error:
            import traceback

            traceback.print_exc()
            cells += ["failed: " + " ".join(f"{type(error).__name__}: {error}".split())[:120]]
            cells += [""] * (len(counts) + 2 - len(cells))
            free(device)
        finally:
            torch.backends.cudnn.benchmark = previous
        rows.append(cells)
        say(f"  pooling alone: {' | '.join(cells)}")
    dtype = "bf16" if device.type == "cuda" else "fp32"
    report.add("", f"(iii) The pooling alone: one call's forward / forward + backward in ms ({dtype}, 2 warm-up + "
                   f"{reps} timed calls each, the tensors' sizes at batch {batch}), at each distinct input shape of "
                   f"the model's pools, and the sum over all {len(shapes)} calls of a step.")
    header = ["formulation"] + [f"{'x'.join(map(str, s[1:]))} (x{n}) ms" for s, n in counts.items()] + \
             [f"all {len(shapes)} calls, ms/step"]
    report.table(header, rows)


def part_e(report: Report, sizes: Sizes, device: torch.device, clock: Clock) -> None:
    """Stage-2 ``train_step`` at batch 32 with the model's ``nn.AvgPool2d`` modules as they are, in NCHW,
    replaced by a depthwise convolution or shifted sums, or run on NCHW copies; each row built fresh."""
    cuda = device.type == "cuda"
    batch = 32 if cuda else sizes.step_batches[0]
    warmup, timed = (3, 8) if not sizes.tiny else (sizes.step_warmup, sizes.step_timed)
    report.add("", "## e. Average pooling alternatives", "")
    report.add(f"Part d's profile puts `aten::avg_pool2d` and `aten::avg_pool2d_backward` at a third of the step's "
               f"GPU time. Here `train.loop.train_step`, stage 2, batch {batch}, the setup of part a "
               f"(`Soundception('{sizes.backbone}', {N_CLASSES} classes)`, {FeaturizerConfig().image_height} x "
               f"{sizes.crop_px} px, {'bf16 autocast' if cuda else 'fp32'}, AdamW, resident batch), with the "
               f"model's pooling done differently; each variant built fresh, {warmup} warm-up + {timed} timed steps. "
               + ("Rows 1, 3, 4 and 5 keep the trainer's channels_last model and input." if cuda else
                  "(On the CPU the trainer uses no channels_last: rows 1 and 2 are the same model.)"))
    pools = survey_pools(sizes, device)
    configs: dict[str, int] = {}
    for _, pool in pools:
        configs[pool_config(pool)] = configs.get(pool_config(pool), 0) + 1
    for name, pool in pools:
        say(f"  {name}: nn.AvgPool2d({pool_config(pool)})")
    if pools:
        report.add("", f"The model has {len(pools)} `nn.AvgPool2d` modules (`{pools[0][0]}` ... `{pools[-1][0]}`): "
                       + "; ".join(f"{n} x `{c}`" for c, n in configs.items()) + ".")
    else:
        report.add("", "The model has no `nn.AvgPool2d` modules: variants 3-5 do not apply; the replacements are "
                       "unit-checked below all the same.")
    unit_pool = pools[0][1] if pools else nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    try:
        pool_unit_check(report, device, unit_pool)
    except Exception as error:
        import traceback

        traceback.print_exc()
        report.add("", f"(i) Unit check failed: {' '.join(f'{type(error).__name__}: {error}'.split())[:200]}")
    report.write()
    rows: list[list[str]] = []
    reference: list[torch.Tensor] = []
    shapes: dict[str, tuple[int, ...]] = {}
    replaced: dict[str, tuple[int, int]] = {}
    first_rate = None
    for label, kind in POOL_VARIANTS:
        if kind in ("conv", "wrap", "separable") and not pools:
            rows.append([label, "no AvgPool2d modules"] + [""] * 5)
            continue
        if clock.left() < (10 if sizes.tiny else 25):
            rows.append([label, f"skipped: {max(clock.left(), 0):.0f} s left of the budget"] + [""] * 5)
            continue
        check: dict[str, Any] = {}

        def prepare(run: loop.Run, check: dict[str, Any] = check) -> dict[str, Any]:
            logits, seen = forward_check(run)
            if not shapes:
                shapes.update(seen)
            if not reference:
                reference.append(logits)
                check["diff"] = "reference"
            else:
                diff = (logits - reference[0]).abs().max().item()
                check["diff"] = f"{diff:.1e} ({diff / reference[0].abs().max().item():.1e})"
            return {}

        started = time.perf_counter()
        r = attempt(time_step, sizes, device, batch=batch, warmup=warmup, timed=timed,
                    transform=pool_transform(kind, replaced), prepare=prepare)
        note = f" ({replaced[kind][0]} of {replaced[kind][1]} pools replaced)" if kind in replaced else ""
        say(f"  [{time.perf_counter() - started:.0f} s] {label}{note}: "
            + ("out of memory" if r.get("oom") else r.get("error") or f"{r['samples_s']:.1f} samples/s, "
               f"logits diff {check.get('diff')}"))
        if "error" in r or r.get("oom"):
            free(device)
            rows.append([label + note, "out of memory" if r.get("oom") else f"failed: {r['error']}", "", "",
                         "", check.get("diff", ""), ""])
            continue
        if first_rate is None and not rows:
            first_rate = r["samples_s"]
        rows.append([label + note, fmt(r["step_s"], 3), fmt(r["samples_s"]),
                     f"{r['samples_s'] / first_rate:.2f}" if first_rate else "n/a",
                     fmt(r.get("peak_gib")), check.get("diff", "n/a"), fmt(r.get("first_step_s"), 2)])
        report.write()
    report.add("", f"(ii) The step with each variant. `max abs diff` compares the main logits of a fixed batch of "
                   f"2 random crops ({FeaturizerConfig().image_height} x {sizes.crop_px}) with row 1's, computed "
                   f"before the first step: fp32 (no autocast, TF32 off), eval mode (dropout off) with batch norm "
                   f"on the batch's statistics (a fresh model's running statistics would make the backbone's "
                   f"activations vanish, ~1e-10, and the logits blind to it); relative to the largest |logit| in "
                   f"brackets. Speed-up: samples/s over row 1's.")
    report.table(["variant", "s/step", "samples/s", "speed-up", "peak GiB", "max abs diff of main logits (rel.)",
                  "first step s"], rows, "|---|---:|---:|---:|---:|---:|---:|")
    report.write()
    pool_shapes = [shapes[name] for name, _ in pools if name in shapes] or [(batch, 24, 17, 45)]
    if clock.left() < (5 if sizes.tiny else 12):
        report.add("", f"(iii) The pooling alone: skipped, {max(clock.left(), 0):.0f} s left of the budget.")
        return
    try:
        pool_timings(report, device, unit_pool, pool_shapes, batch, reps=10 if cuda else 3)
    except Exception as error:
        import traceback

        traceback.print_exc()
        report.add("", f"(iii) The pooling alone failed: {' '.join(f'{type(error).__name__}: {error}'.split())[:200]}")



# ---------------------------------------------------------------------------------------------- main


def shared_memory() -> str:
    """Size of /dev/shm, where loader workers hand their batches over (a container may give 64 MiB)."""
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return "No /dev/shm."
    return f"/dev/shm: {usage.total / 2 ** 30:.1f} GiB, {usage.free / 2 ** 30:.1f} GiB free."


def versions() -> str:
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("timm", "zarr", "numcodecs"):
        with contextlib.suppress(Exception):
            found[name] = __import__(name).__version__
    return ", ".join(f"{k} {v}" for k, v in found.items())


@click.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the markdown here.")
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cpu.")
@click.option("--tiny", is_flag=True, help="Tiny sizes (small backbone, 299 x 300 crops, 2 steps): a CPU check.")
@click.option("--parts", default="a,b,c", show_default=True,
              help="Which parts to run, of a,b,c,d,e (d, the profile, and e, the pooling variants, run right "
                   "after a).")
@click.option("--workers", "workers_list", default=None,
              help="Loader worker counts of part b, comma-separated (default 0,4,8,12; tiny 0,2).")
@click.option("--loop-timed", type=int, default=None,
              help="Timed steps of each train-loop run in parts b and c (default 30; tiny 2).")
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True,
              help="Add a torch.compile row (child process, run last, killed at the budget).")
@click.option("--compile-limit", default=240.0, show_default=True, help="Seconds the compile child may take.")
@click.option("--budget-s", default=420.0, show_default=True, help="Stop starting new measurements after this.")
@click.option("--peak-tflops", type=float, default=None, help="Device peak for MFU (default: from the device name).")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the store and runs here.")
@click.option("--child", "child_spec", default=None, hidden=True)
def main(out_path: str | None, device: str, tiny: bool, parts: str, workers_list: str | None,
         loop_timed: int | None, compile_model: bool, compile_limit: float, budget_s: float,
         peak_tflops: float | None, keep: str | None, child_spec: str | None) -> None:
    if child_spec:
        child(json.loads(child_spec))
        return
    import faulthandler

    clock = Clock(budget_s)
    # a hang (a loader deadlock, say) must not eat the device time: dump every thread's stack and exit
    faulthandler.dump_traceback_later(budget_s + 75, exit=True)
    sizes = TINY if tiny else FULL
    if workers_list:  # part b's worker counts
        counts = tuple(int(w) for w in workers_list.split(",") if w.strip())
        if not counts or min(counts) < 0:
            raise click.BadParameter(f"not a list of worker counts: {workers_list!r}", param_hint="--workers")
        sizes = replace(sizes, workers=counts)
    if loop_timed is not None:
        if loop_timed < 1:
            raise click.BadParameter("must be at least 1", param_hint="--loop-timed")
        sizes = replace(sizes, loop_timed=loop_timed)
    chosen = rt.resolve_device(device)
    report = Report(Path(out_path) if out_path else None)
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak, peak_source = device_peak(chosen, peak_tflops)
    report.add(f"# Soundception GPU benchmark{' (tiny sizes)' if tiny else ''}", "",
               f"Device: **{name}**" + (f", {torch.cuda.get_device_properties(chosen).total_memory / 2 ** 30:.0f} GiB"
                                        if chosen.type == "cuda" else "")
               + f"; {os.cpu_count()} CPUs; {versions()}"
               + (f"; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if chosen.type == "cuda"
                  else "") + ".",
               f"MFU peak: {fmt(peak, 0)} TFLOP/s ({peak_source}). {shared_memory()}")
    report.write()
    wanted = {p.strip() for p in parts.split(",") if p.strip()}
    if wanted - set("abcde"):
        raise click.BadParameter(f"unknown part(s) {sorted(wanted - set('abcde'))}", param_hint="--parts")
    gpu_rates: dict[int, float] = {}
    flops: dict[bool, float] = {}
    times = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-bench-")))
        tmp.mkdir(parents=True, exist_ok=True)
        if "a" in wanted:
            started = time.perf_counter()
            gpu_rates, flops = part_a(report, sizes, chosen, clock, peak=peak)
            times["a"] = time.perf_counter() - started
            report.write()
        if "d" in wanted:  # GPU only, short: before the loader parts, so that a tight budget still gets it
            started = time.perf_counter()
            try:
                profiled = part_d(report, sizes, chosen, clock)
            except Exception as error:
                import traceback

                traceback.print_exc()
                profiled = {}
                report.add("", f"Part d failed: {' '.join(f'{type(error).__name__}: {error}'.split())[:200]}")
            free(chosen)
            if profiled and profiled["batch"] not in gpu_rates:  # part b's `vs resident` without part a
                gpu_rates[profiled["batch"]] = profiled["batch"] / profiled["step_s"]
            times["d"] = time.perf_counter() - started
            report.write()
        if "e" in wanted:  # like d: short, before the loader parts
            started = time.perf_counter()
            try:
                part_e(report, sizes, chosen, clock)
            except Exception as error:
                import traceback

                traceback.print_exc()
                report.add("", f"Part e failed: {' '.join(f'{type(error).__name__}: {error}'.split())[:200]}")
            free(chosen)
            times["e"] = time.perf_counter() - started
            report.write()
        store_url, batch, loops = None, sizes.loop_batch, {}
        if "b" in wanted or "c" in wanted:
            started = time.perf_counter()
            store_url, batch, loops = part_b(report, sizes, chosen, clock, tmp, gpu_rates,
                                             workers_given=bool(workers_list)) \
                if "b" in wanted else (make_store(report, sizes, tmp), sizes.loop_batch, {})
            times["b"] = time.perf_counter() - started
            report.write()
        if "c" in wanted and store_url:
            started = time.perf_counter()
            reference = loops.get(min(sizes.ddp_workers, os.cpu_count() or 1))
            part_c(report, sizes, chosen, clock, tmp, store_url, batch,
                   reference if reference and "samples_s" in reference else None)
            times["c"] = time.perf_counter() - started
            report.write()
        if compile_model:
            started = time.perf_counter()
            part_compile(report, sizes, chosen, clock, limit=compile_limit, flops=flops.get(True), peak=peak)
            times["compile"] = time.perf_counter() - started
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report.add("", "Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
               + f"; total {clock.elapsed():.0f} s.")
    report.write()


if __name__ == "__main__":
    main()
