"""The training loop (paper 3.3), readable top to bottom: :func:`train`.

Stage 1 trains the heads and both attention detectors on a frozen backbone; stage 2 fine-tunes
everything. Every random draw of step ``s`` (which windows, augmentation, dropout) is derived
from ``(seed, s)``, so ``resume=True`` continues exactly where the last checkpoint stopped: the
same loss at the same step as an uninterrupted run.

The pieces, in the order :func:`train` calls them: :func:`set_up` (store, split, run folder,
model), :func:`run_stage` (one stage: optimizer, schedule, loader, its steps), :func:`train_step`
(one optimizer step over ``accumulation`` micro-batches, each made ready by :func:`prepare_batch`),
:func:`validate` and :func:`save`. The learning rate of each step is :func:`train.optim.warmup_cosine`.

Each step's phases are ``torch.profiler.record_function`` ranges named ``step.<phase>`` for the
phases in :data:`STEP_PHASES`, so a profile of training (``bench/gpu``) sees them by name; outside
a profiler they cost a few microseconds. Every logged ``train`` record carries ``step_time`` (wall
seconds per step) and ``data_time`` (of those, seconds spent waiting for the next batch, as timm
logs it), averaged over the steps since the previous record.

Run folder::

    run_config.json  split.json  metrics.jsonl  curves.png  checkpoints/last.pt
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundception.shared.config import FeaturizerConfig
from soundception.shared.progress import Progress
from soundception.shared.reader import FeatureStore
from soundception.train import runtime as rt
from soundception.train.augment import augment_batch, read_width
from soundception.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from soundception.train.config import RunConfig, StageConfig, UserError, crop_width_px
from soundception.train.curves import plot_curves, read_metrics
from soundception.train.dataset import Split, WindowDataset, WindowSampler, make_loader, open_store, split_files
from soundception.train.evaluate import evaluate_model
from soundception.train.loss import soundception_loss
from soundception.train.finetune import init_from_checkpoint
from soundception.train.model import Soundception, build_model, count_parameters
from soundception.train.optim import create_optimizer, create_scheduler
from soundception.train.weights import load_backbone_weights

# options that may change on --resume without changing the result
RESUMABLE_CHANGES = {"store", "storage_options", "num_workers", "device", "compile", "log_every", "eval_every",
                     "checkpoint_every", "eval_batch_size", "eval_max_files"}


# one training step's phases, in order; each is a profiler range named ``step.<phase>``
STEP_PHASES = ("data_wait", "augmentation", "forward", "loss", "backward", "optimizer_step")


def step_range(phase: str) -> torch.profiler.record_function:
    """The profiler range of one of :data:`STEP_PHASES` (``with step_range("forward"): ...``)."""
    return torch.profiler.record_function(f"step.{phase}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``step``: the optimizer steps completed when it came."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass(frozen=True)
class Run:
    """What :func:`set_up` prepares once and every stage uses."""

    config: RunConfig
    runtime: rt.Runtime
    store: FeatureStore
    split: Split
    model: Soundception
    crop_width: int  # px fed to the model
    window_width: int  # px read from the store (room for the augmentation's dilation)
    origin: str | None = None  # --init-from: the checkpoint it started from (JSON of :class:`finetune.Origin`)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def validation(self) -> tuple[int, ...]:
        """The validation files evaluated during training (at most ``eval_max_files``)."""
        return self.split.validation[: self.config.eval_max_files]


def derived_seed(seed: int, step: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, step, *keys)``."""
    return int(np.random.SeedSequence([seed, step, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def set_stage_mode(model: Soundception, train_backbone: bool) -> None:
    """Training mode; a frozen backbone also keeps its batch-norm statistics (eval mode)."""
    model.train()
    model.backbone.requires_grad_(train_backbone)
    if not train_backbone:
        model.backbone.eval()


# ---------------------------------------------------------------------------------------------- set-up


def set_up(config: RunConfig, *, resume: bool) -> tuple[Run, dict[str, Any] | None]:
    """Open the store, choose the split, write the run folder and build the model.

    Returns the run and, with ``resume``, the checkpoint it continues from.
    """
    runtime = rt.start(config.device)
    store = open_store(config.store, config.storage_options)
    if not store.classes:
        raise UserError(f"{config.store} has no classes: featurize it with labels")
    if config.call_crops > 0 and not len(store.events["event_file"]):
        raise UserError(f"--call-crops needs call annotations, and {config.store} has none "
                        "(featurize it with --annotations)")
    check_run_folder(config.out)
    payload = resumed_checkpoint(config, store) if resume else None
    if payload is None and latest_checkpoint(config.out) is not None:
        raise UserError(f"{config.out} already holds a checkpoint; pass --resume or choose another --out")
    if payload is not None:
        split = Split.from_dict(json.loads(payload["split"]))
        split.check_against(store)
    else:
        split = split_files(store, validation_fraction=config.validation_fraction, seed=config.seed)
    if config.call_crops > 0 and not np.isin(store.events["event_file"], split.train).any():
        raise UserError(f"--call-crops needs call annotations in training recordings, and the "
                        f"{len(set(store.events['event_file'].tolist()))} annotated recording(s) of {config.store} "
                        "are all in the validation split (annotate more recordings, or change --seed)")
    model = initial_model(config, len(store.classes), payload, runtime.device)  # a bad backbone fails here
    origin = payload.get("init_from") if payload is not None else None
    if payload is None and config.init_from:
        started = init_from_checkpoint(model, config.init_from, config=config, store=store)
        origin = started.to_json()
        if runtime.is_main:
            print(f"started from {config.init_from} (step {started.step}): backbone and attentions, head rows of "
                  f"{len(started.carried)} of {len(store.classes)} classes carried over by class id")
    if runtime.is_main:
        write_run_folder(config, split, store.config, resumed_step=None if payload is None else int(payload["step"]))
    crop_width = crop_width_px(config.crop_seconds, store.config)
    run = Run(config=config, runtime=runtime, store=store, split=split, model=model, crop_width=crop_width,
              window_width=read_width(crop_width, config.augment), origin=origin)
    return run, payload


def check_run_folder(out: str | Path) -> None:
    """Make the run folder and write a probe file in it, so an unwritable ``--out`` fails before any work.

    Raises:
        UserError: one line with the system's reason (read-only, a path under a regular file, ...).
    """
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write the run folder {out}: {error.strerror or error}") from None


def resumed_checkpoint(config: RunConfig, store: FeatureStore) -> dict[str, Any]:
    """The run's last checkpoint, after checking that it was made with these options and this store."""
    path = latest_checkpoint(config.out)
    if path is None:
        raise UserError(f"--resume: no checkpoint in {Path(config.out) / 'checkpoints'}")
    payload = load_checkpoint(path)
    saved, new = RunConfig.from_dict(json.loads(payload["run_config"])).to_dict(), config.to_dict()
    changed = [f"{k}: {saved[k]!r} -> {new[k]!r}" for k in saved if saved[k] != new[k] and k not in RESUMABLE_CHANGES]
    if changed:
        raise UserError("cannot resume with different training options (start a new --out instead):\n  "
                        + "\n  ".join(changed))
    if payload["config_hash"] != store.config_hash or json.loads(payload["classes"]) != store.classes:
        raise UserError(f"{config.store} is not the store this run was trained on (config or classes differ)")
    return payload


def write_run_folder(config: RunConfig, split: Split, store_config: FeaturizerConfig, *,
                     resumed_step: int | None) -> None:
    """``run_config.json``, ``featurizer_config.json``, ``split.json``; metrics after the resumed step dropped."""
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write(run_dir / "run_config.json")
    # the featurizer config the model expects, so `soundception featurize --config` can reproduce its images
    (run_dir / "featurizer_config.json").write_text(json.dumps(store_config.to_dict(), indent=2) + "\n")
    (run_dir / "split.json").write_text(json.dumps(split.to_dict(), indent=1) + "\n")
    metrics_path = run_dir / "metrics.jsonl"
    # a fresh run keeps no records of an earlier, checkpoint-less attempt; a resumed one drops the
    # interrupted tail after its checkpoint
    kept = [] if resumed_step is None else [r for r in read_metrics(metrics_path) if r.get("step", 0) <= resumed_step]
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def initial_model(config: RunConfig, n_classes: int, payload: dict[str, Any] | None,
                  device: torch.device) -> Soundception:
    """The model at the run's first step: seeded random heads and the pretrained backbone, or the checkpoint."""
    torch.manual_seed(derived_seed(config.seed, 0, 0, 0))  # initial weights of the heads
    model = build_model(config, n_classes)
    if payload is not None:
        model.load_state_dict(payload["model"])
        set_rng_state(payload["rng"])
    elif config.pretrained:
        print(load_backbone_weights(model.backbone, config.backbone, config.pretrained).line())
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


# ---------------------------------------------------------------------------------------------- one step


def prepare_batch(run: Run, batch: dict[str, torch.Tensor], step: int, global_micro: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader micro-batch, augmented and normalised on the device.

    Returns images ``(B, 3, H, crop_width)`` float, labels ``(B,)`` int64 and multi-label targets
    ``(B, n_classes)`` float (main and background species). The augmentation depends on
    ``(seed, step, global_micro)`` only.
    """
    device = run.runtime.device
    generator = torch.Generator(device=device).manual_seed(derived_seed(run.config.seed, step, 2, global_micro))
    images, _ = augment_batch(batch["image"].to(device, non_blocking=True), crop_width=run.crop_width,
                              config=run.config.augment, generator=generator)
    images = run.model.normalize(images)
    if run.runtime.cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["label"].to(device, non_blocking=True), batch["target"].to(device, non_blocking=True)


def train_step(run: Run, runner: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: Iterator[dict[str, torch.Tensor]], sampler: WindowSampler, step: int
               ) -> tuple[dict[str, float], float]:
    """One optimizer step over ``accumulation`` micro-batches.

    Returns the losses averaged over the micro-batches (keys ``loss``, that is ``loss_main +
    aux_weight * loss_aux``, ``loss_main``, ``loss_aux``) and the seconds spent waiting for
    ``next(batches)`` (summed over the micro-batches: the step's data wait).
    """
    config = run.config
    optimizer.zero_grad(set_to_none=True)
    losses = {"loss": 0.0, "loss_main": 0.0, "loss_aux": 0.0}
    data_wait = 0.0
    for micro in range(config.accumulation):
        with step_range("data_wait"):
            started = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - started
        # DDP over W ranks draws the micro-batches one process accumulating W times as many would
        global_micro = sampler.global_micro_batch(micro)
        with step_range("augmentation"):
            images, labels, targets = prepare_batch(run, batch, step, global_micro)
        torch.manual_seed(derived_seed(config.seed, step, 1, global_micro))  # dropout
        # under DDP the gradients are all-reduced once, in the last micro-batch's backward
        skip_sync = run.runtime.distributed and micro < config.accumulation - 1 and hasattr(runner, "no_sync")
        with (runner.no_sync() if skip_sync else nullcontext()), rt.autocast(run.runtime.device):
            with step_range("forward"):
                outputs = runner(images)
            with step_range("loss"):
                loss, parts = soundception_loss(outputs, labels, targets, aux_weight=config.aux_weight,
                                                multilabel=config.multilabel)
        with step_range("backward"):
            (loss / config.accumulation).backward()
            loss_value = float(loss.detach())  # waits for the backward on an asynchronous device
        for key, value in {"loss": loss_value, **parts}.items():
            losses[key] += value / config.accumulation
    with step_range("optimizer_step"):
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
    return losses, data_wait


class StepTimes:
    """Wall time of the steps since the last logged record and the part of it spent waiting for data."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started, self.steps, self.step_s, self.data_s = time.perf_counter(), 0, 0.0, 0.0

    def add(self, step_s: float, data_s: float) -> None:
        self.steps, self.step_s, self.data_s = self.steps + 1, self.step_s + step_s, self.data_s + data_s

    def record(self, samples_per_step: int) -> dict[str, float]:
        """``samples_per_s`` (over the wall time since the reset, evaluation included), ``step_time`` and
        ``data_time`` (seconds per step, averaged over the steps since the reset); then resets."""
        steps = max(self.steps, 1)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {"samples_per_s": self.steps * samples_per_step / elapsed, "step_time": self.step_s / steps,
               "data_time": self.data_s / steps}
        self.reset()
        return out


# ---------------------------------------------------------------------------------------------- one stage


def stage_optimizer(run: Run, stage: StageConfig, resumed: dict[str, Any] | None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The stage's optimizer and schedule; ``resumed``: a checkpoint inside this stage to restore them from."""
    config = run.config
    optimizer = create_optimizer(run.model, config.optimizer, lr=stage.lr, weight_decay=config.weight_decay)
    scheduler = create_scheduler(optimizer, warmup_steps=stage.warmup_steps, total_steps=stage.steps,
                                 min_lr_ratio=config.min_lr_ratio)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
    return optimizer, scheduler


def wrap_model(run: Run) -> torch.nn.Module:
    """The model as the steps call it: under DDP and/or ``torch.compile`` when asked."""
    runner: torch.nn.Module = run.model
    if run.runtime.distributed:
        device = run.runtime.device
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if run.runtime.cuda
                                                           else None)
    if run.config.compile:
        runner = torch.compile(runner)
    return runner


def stage_batches(run: Run, stage: StageConfig, step: int, stage_end: int
                  ) -> tuple[WindowSampler, Iterator[dict[str, torch.Tensor]]]:
    """The sampler of the stage's steps ``[step, stage_end)`` and the loader's iterator over its micro-batches."""
    config, runtime = run.config, run.runtime
    sampler = WindowSampler(run.store, np.array(run.split.train), batch_size=stage.batch_size,
                            read_width=run.window_width, seed=config.seed, start_step=step, stop_step=stage_end,
                            accumulation=config.accumulation, balanced=config.balanced, rank=runtime.rank,
                            world_size=runtime.world_size, call_fraction=config.call_crops)
    loader = make_loader(WindowDataset(run.store, width=run.window_width), sampler, num_workers=config.num_workers,
                         pin_memory=runtime.cuda)
    return sampler, iter(loader)


def run_stage(run: Run, step: int, stop_step: int, *, payload: dict[str, Any] | None, progress: bool
              ) -> tuple[int, float, Path | None]:
    """Train from global ``step`` to the end of its stage (or ``stop_step``).

    Returns the next step, the last step's loss and the last checkpoint written (``None`` if none).
    """
    config, runtime = run.config, run.runtime
    stage_number, stage, stage_start = config.stage_at(step)
    stage_end = stage_start + stage.steps
    set_stage_mode(run.model, stage.train_backbone)
    inside = payload is not None and int(payload["stage"]) == stage_number and step > stage_start
    optimizer, scheduler = stage_optimizer(run, stage, payload if inside else None)
    runner = wrap_model(run)
    sampler, batches = stage_batches(run, stage, step, stage_end)
    samples_per_step = stage.batch_size * config.accumulation * runtime.world_size
    if runtime.is_main:
        print(f"stage {stage_number}: steps {step}..{stage_end - 1}, batch {stage.batch_size} x "
              f"{config.accumulation} x {runtime.world_size}, {count_parameters(run.model, True):,} trainable "
              f"parameters, crop {run.crop_width} px ({config.crop_seconds} s) on {runtime.device}")
    bar = Progress(stage_end - step, desc=f"stage {stage_number}", unit="step",
                   disable=not (progress and runtime.is_main))
    first_step, loss, path = step, float("nan"), None
    times = StepTimes()
    try:
        while step < min(stage_end, stop_step):
            started = time.perf_counter()
            losses, data_wait = train_step(run, runner, optimizer, batches, sampler, step)
            scheduler.step()
            times.add(time.perf_counter() - started, data_wait)
            step, loss = step + 1, losses["loss"]
            bar.update(step - first_step)
            if runtime.is_main and (step % config.log_every == 0 or step == stage_end):
                timing = times.record(samples_per_step)
                append_record(run.metrics_path, {"kind": "train", "step": step, "stage": stage_number, **losses,
                                                 "lr": scheduler.get_last_lr()[0], **timing})
                bar.set_postfix(f"loss {loss:.3f}, {timing['samples_per_s']:.1f} samples/s, "
                                f"data {timing['data_time']:.3f} s/step")
            if config.eval_every > 0 and step % config.eval_every == 0 and step < config.total_steps:
                result = validate(run, step)
                if result:
                    print(f"step {step}: validation MAP {result['map']:.3f}, top-1 {result['top1']:.3f}")
                set_stage_mode(run.model, stage.train_backbone)  # evaluation switched the model to eval mode
            if config.checkpoint_every > 0 and step % config.checkpoint_every == 0 or step == stop_step:
                path = save(run, step, stage_number, optimizer, scheduler)
    except KeyboardInterrupt:
        raise Interrupted(step) from None  # the steps done, for the advice on resuming
    finally:
        bar.close()
    return step, loss, path


# ---------------------------------------------------------------------------------------------- evaluation, saving


def validate(run: Run, step: int) -> dict[str, float]:
    """Metrics on the validation files, logged; computed on rank 0 (``{}`` elsewhere or without files)."""
    result: dict[str, float] = {}
    if run.runtime.is_main and run.validation:
        result = evaluate_model(run.model, run.store, run.validation, crop_width=run.crop_width,
                                device=run.runtime.device, batch_size=run.config.eval_batch_size)
        append_record(run.metrics_path, {"kind": "eval", "step": step, **result})
    rt.barrier(run.runtime)  # the other ranks wait here, not inside the next all-reduce
    return result


def save(run: Run, step: int, stage_number: int, optimizer: torch.optim.Optimizer, scheduler: Any) -> Path | None:
    """Write ``checkpoints/last.pt`` (rank 0 only): everything needed to resume at ``step``."""
    if not run.runtime.is_main:
        return None
    store = run.store
    return save_checkpoint(run.run_dir / "checkpoints" / "last.pt", {
        "model": run.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "stage": stage_number, "rng": rng_state(), "split": json.dumps(run.split.to_dict()),
        "classes": json.dumps(store.classes), "class_names": json.dumps(store.class_names),
        "featurizer_config": json.dumps(store.config.to_dict()), "config_hash": store.config_hash,
        "run_config": json.dumps(run.config.to_dict()), **({"init_from": run.origin} if run.origin else {})})


def append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------- the run


def train(config: RunConfig, *, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train per ``config``; returns ``{"step", "loss", "validation", "run_dir", "checkpoint"}``.

    With ``resume`` the run continues from ``config.out/checkpoints/last.pt``; without it an
    existing checkpoint there is an error (nothing is overwritten by accident). ``stop_at`` ends
    this invocation after that global step with a checkpoint (a time-limited job; resume later).
    """
    run, payload = set_up(config, resume=resume)
    step = 0 if payload is None else int(payload["step"])
    stop_step = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
    loss, path = float("nan"), None
    while step < stop_step:
        step, loss, stage_path = run_stage(run, step, stop_step, payload=payload, progress=progress)
        path, payload = stage_path or path, None
    validation: dict[str, float] = {}
    if step == config.total_steps:  # not stopped early on request: the final evaluation
        validation = validate(run, step)
        if run.runtime.is_main:
            print_final(validation)
            plot_curves(run.metrics_path, run.run_dir / "curves.png")
        rt.barrier(run.runtime)
        path = path or latest_checkpoint(run.run_dir)
    rt.stop(run.runtime)
    return {"step": step, "loss": loss, "validation": validation, "run_dir": str(run.run_dir),
            "checkpoint": str(path or "")}


def print_final(validation: dict[str, float]) -> None:
    if validation:
        print(f"final validation: MAP {validation['map']:.3f} (with background {validation['map_background']:.3f}), "
              f"top-1 {validation['top1']:.3f}, top-5 {validation['top5']:.3f}, class mAP "
              f"{validation['class_map']:.3f}; a random ranking scores MAP {validation['chance_map']:.3f}")
