"""What every part of the GPU bench shares: sizes, the time budget, the report, the trainer set-up
with a resident batch, a synthetic store, short training runs read back from their own metrics, and
child processes."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from soundception.shared.config import FeaturizerConfig
from soundception.train import loop
from soundception.train import runtime as rt
from soundception.train.augment import read_width
from soundception.train.config import RunConfig, StageConfig, crop_width_px

ROOT = Path(__file__).resolve().parents[2]
N_CLASSES = 1500

# dense bf16 peak (TFLOP/s) by a substring of torch.cuda.get_device_name, first match wins
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("L40S", 362.0), ("B200", 2250.0))


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


def attempt(function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``function(...)``'s dict, or ``{"error": one line}`` after printing the traceback: one failed
    measurement (a loader worker killed for want of shared memory, say) must not end the run."""
    import traceback

    try:
        return function(*args, **kwargs)
    except Exception as error:
        traceback.print_exc()
        return {"error": one_line(error)[:160]}
    finally:
        gc.collect()


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def crop_seconds(sizes: Sizes) -> float:
    """The ``--crop-seconds`` that gives ``sizes.crop_px`` at the default featurizer scale."""
    return sizes.crop_px / FeaturizerConfig().pixels_per_second


def device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak in TFLOP/s (for MFU) and where it came from."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak on CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key}"
    return None, f"unknown peak for {name!r}: pass --peak-tflops"


def machine_lines(device: torch.device, peak: float | None, peak_source: str) -> list[str]:
    """The report's header: device, CPUs, versions, MFU peak, /dev/shm."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for module in ("timm", "zarr", "numcodecs"):
        with contextlib.suppress(Exception):
            found[module] = __import__(module).__version__
    try:
        usage = shutil.disk_usage("/dev/shm")  # where loader workers hand their batches over
        shm = f"/dev/shm: {usage.total / 2 ** 30:.1f} GiB, {usage.free / 2 ** 30:.1f} GiB free."
    except OSError:
        shm = "No /dev/shm."
    return [f"Device: **{name}**" + (f", {torch.cuda.get_device_properties(device).total_memory / 2 ** 30:.0f} GiB"
                                     if cuda else "")
            + f"; {os.cpu_count()} CPUs; " + ", ".join(f"{k} {v}" for k, v in found.items())
            + (f"; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else "") + ".",
            f"MFU peak: {fmt(peak, 0)} TFLOP/s ({peak_source}). {shm}"]


# ---------------------------------------------------------------------------------------------- the trainer's pieces


def step_config(sizes: Sizes, device: torch.device, *, batch: int, train_backbone: bool, compile_model: bool = False,
                store: str = "-", out: str = "-", workers: int = 0, steps: int = 1) -> RunConfig:
    """A run config whose only stage is stage 2 (everything trains) or stage 1 (frozen backbone), logging every
    step (its ``step_time`` and ``data_time``), with no evaluation and no periodic checkpoints."""
    stage = StageConfig(steps=steps, batch_size=batch, lr=1e-4, warmup_steps=0, train_backbone=train_backbone)
    empty = StageConfig(steps=0, batch_size=1, lr=1e-4, warmup_steps=0, train_backbone=not train_backbone)
    stages = {"stage1": stage, "stage2": empty} if not train_backbone else {"stage1": empty, "stage2": stage}
    return RunConfig(store=store, out=out, backbone=sizes.backbone, crop_seconds=crop_seconds(sizes),
                     num_workers=workers, device=str(device), compile=compile_model, log_every=1,
                     eval_every=0, checkpoint_every=0, eval_max_files=1, **stages)


def resident_batch(run: loop.Run, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader-shaped batch in (pinned, on CUDA) host memory: uint8 windows, labels, targets."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, N_CLASSES, (batch,), generator=generator)
    out = {"image": torch.randint(0, 256, (batch, 3, FeaturizerConfig().image_height, run.window_width),
                                  dtype=torch.uint8, generator=generator),
           "label": labels, "target": torch.nn.functional.one_hot(labels, N_CLASSES).float()}
    return {k: v.pin_memory() for k, v in out.items()} if device.type == "cuda" else out


@dataclass
class Stepper:
    """What the trainer builds before its steps, with one resident batch repeated instead of a loader."""

    run: loop.Run
    runner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batch: dict[str, torch.Tensor]
    step: int = 0

    def __call__(self, count: int = 1) -> None:
        """``count`` calls of ``train.loop.train_step`` (and the schedule's step), as ``run_stage`` makes them."""
        sampler = SimpleNamespace(global_micro_batch=lambda micro: micro)
        for _ in range(count):
            loop.train_step(self.run, self.runner, self.optimizer, itertools.repeat(self.batch),
                            sampler, self.step)  # type: ignore[arg-type]
            self.scheduler.step()
            self.step += 1


def stepper(config: RunConfig, device: torch.device, batch: int) -> Stepper:
    """The model, optimizer, schedule and runner of ``config``'s one stage, as ``train.loop.run_stage`` makes them."""
    model = loop.initial_model(config, N_CLASSES, None, device)
    crop = crop_width_px(config.crop_seconds, FeaturizerConfig())
    run = loop.Run(config=config, runtime=rt.Runtime(device=device), store=None, split=None,  # type: ignore[arg-type]
                   model=model, crop_width=crop, window_width=read_width(crop, config.augment))
    stage = config.stage2 if config.stage2.steps else config.stage1
    loop.set_stage_mode(model, stage.train_backbone)
    optimizer, scheduler = loop.stage_optimizer(run, stage, None)
    return Stepper(run, loop.wrap_model(run), optimizer, scheduler, resident_batch(run, batch, device))


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
               f"({data['total_seconds'] / 60:.1f} min of audio), {sizes.species} species, written in {made:.1f} s, "
               f"featurized serially (`featurize_store`, one process) in {featurized:.1f} s: {summary.done} done, "
               f"{summary.failed} failed, {size / 2 ** 20:.0f} MiB on local disk (in the page cache when read).")
    return url


def train_run(store_url: str, out: Path, sizes: Sizes, device: torch.device, *, workers: int,
              batch: int) -> dict[str, Any]:
    """``train.loop.train`` for ``warmup + timed`` stage-2 steps, timed by its own ``metrics.jsonl``.

    Returns ``step_s`` and ``data_s`` (the mean ``step_time`` and ``data_time`` of the timed steps), their
    ratio ``wait_share``, ``samples_s`` over all ranks and ``wall_s`` (set-up and the final checkpoint
    included), or ``{"oom": True}``.
    """
    steps = sizes.loop_warmup + sizes.loop_timed
    config = step_config(sizes, device, batch=batch, train_backbone=True, store=store_url, out=str(out),
                         workers=workers, steps=steps + 1)
    started = time.perf_counter()
    try:
        loop.train(config, progress=False, stop_at=steps)  # stops with a checkpoint, before the last step
    except torch.OutOfMemoryError:
        return {"oom": True, "wall_s": time.perf_counter() - started}
    finally:
        free(device)
    wall = time.perf_counter() - started
    if int(os.environ.get("RANK", "0")) != 0:
        return {"wall_s": wall}  # rank 0 writes the metrics
    lines = (out / "metrics.jsonl").read_text().splitlines()
    timed = [r for r in map(json.loads, lines) if r["kind"] == "train" and r["step"] > sizes.loop_warmup]
    step_s = sum(r["step_time"] for r in timed) / len(timed)
    data_s = sum(r["data_time"] for r in timed) / len(timed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {"steps": len(timed), "step_s": step_s, "data_s": data_s, "wait_share": data_s / step_s,
            "samples_s": batch * world / step_s, "wall_s": wall, "workers": workers, "batch": batch}


def run_child(command: list[str], timeout: float) -> str:
    """Run ``command`` from the repo root in its own process group; kill the whole group after ``timeout`` s.

    Returns ``"exit N"`` or ``"killed"`` (torchrun's workers and inductor's compile workers go too).
    """
    process = subprocess.Popen(command, start_new_session=True, cwd=ROOT)
    try:
        return f"exit {process.wait(timeout=timeout)}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "killed"
