"""The training loop (paper 3.3), readable top to bottom: :func:`train`.

Stage 1 trains the heads and both attention detectors on a frozen backbone; stage 2 fine-tunes
everything. Every random draw of step ``s`` (which windows, augmentation, dropout) is derived
from ``(seed, s)``, so ``resume=True`` continues exactly where the last checkpoint stopped: the
same loss at the same step as an uninterrupted run.

Run folder::

    run_config.json  split.json  metrics.jsonl  curves.png  checkpoints/last.pt
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shared.reader import FeatureStore
from train import runtime as rt
from train.augment import augment_batch, read_width
from train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from train.config import RunConfig
from train.curves import plot_curves, read_metrics
from train.dataset import Split, WindowDataset, WindowSampler, make_loader, split_files
from train.evaluate import build_model, crop_width_px, evaluate_model
from train.loss import soundception_loss
from train.model import Soundception, count_parameters
from train.optim import create_optimizer, create_scheduler
from train.weights import load_backbone_weights

# options that may change on --resume without changing the result
RESUMABLE_CHANGES = {"store", "storage_options", "num_workers", "device", "compile", "log_every", "eval_every",
                     "checkpoint_every", "eval_batch_size", "eval_max_files"}


def derived_seed(seed: int, step: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, step, *keys)``."""
    return int(np.random.SeedSequence([seed, step, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def set_stage_mode(model: Soundception, train_backbone: bool) -> None:
    """Training mode; a frozen backbone also keeps its batch-norm statistics (eval mode)."""
    model.train()
    model.backbone.requires_grad_(train_backbone)
    if not train_backbone:
        model.backbone.eval()


def _check_resume(saved: RunConfig, new: RunConfig) -> None:
    a, b = saved.to_dict(), new.to_dict()
    changed = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b.get(k) and k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError("cannot resume with different training options (start a new --out instead):\n  "
                         + "\n  ".join(changed))


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _drop_records_from(path: Path, step: int) -> None:
    """Forget metrics logged after the checkpoint we resume from (the interrupted tail)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def train(config: RunConfig, *, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train per ``config``; returns ``{"step", "loss", "validation", "run_dir", "checkpoint"}``.

    With ``resume`` the run continues from ``config.out/checkpoints/last.pt``; without it an
    existing checkpoint there is an error (nothing is overwritten by accident). ``stop_at`` ends
    this invocation after that global step with a checkpoint (a time-limited job; resume later).
    """
    runtime = rt.start(config.device)
    device = runtime.device
    run_dir = Path(config.out)
    metrics_path = run_dir / "metrics.jsonl"
    store = FeatureStore(config.store, config.storage_options)
    classes = store.classes
    if not classes:
        raise ValueError(f"{config.store} has no classes: featurize it with labels")
    crop_width = crop_width_px(config.crop_seconds, store.config)
    window_width = read_width(crop_width, config.augment)

    payload = None
    existing = latest_checkpoint(run_dir)
    if resume:
        if existing is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        payload = load_checkpoint(existing)
        _check_resume(RunConfig.from_dict(json.loads(payload["run_config"])), config)
        if payload["config_hash"] != store.config_hash or json.loads(payload["classes"]) != classes:
            raise ValueError(f"{config.store} is not the store this run was trained on (config or classes differ)")
        split = Split.from_dict(json.loads(payload["split"]))
        split.check_against(store)
    elif existing is not None:
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume or choose another --out")
    else:
        split = split_files(store, validation_fraction=config.validation_fraction, seed=config.seed)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.write(run_dir / "run_config.json")
        (run_dir / "split.json").write_text(json.dumps(split.to_dict(), indent=1) + "\n")
        if payload is not None:
            _drop_records_from(metrics_path, int(payload["step"]))
        else:
            metrics_path.write_text("")  # a fresh run: no records of an earlier, checkpoint-less attempt

    torch.manual_seed(derived_seed(config.seed, 0, 0, 0))  # initial weights of the heads
    model = build_model(config, len(classes))
    if config.pretrained and payload is None:
        report = load_backbone_weights(model.backbone, config.backbone, config.pretrained)
        print(report.line())
    if payload is not None:
        model.load_state_dict(payload["model"])
        set_rng_state(payload["rng"])
    model.to(device)
    if runtime.cuda:
        model.to(memory_format=torch.channels_last)
    step = int(payload["step"]) if payload is not None else 0
    validation = split.validation if config.eval_max_files is None else split.validation[: config.eval_max_files]
    last_loss, last_eval = float("nan"), {}

    def checkpoint(stage_number: int, optimizer: torch.optim.Optimizer, scheduler: Any) -> Path | None:
        if not runtime.is_main:
            return None
        return save_checkpoint(run_dir / "checkpoints" / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "stage": stage_number, "rng": rng_state(), "split": json.dumps(split.to_dict()),
            "classes": json.dumps(classes), "class_names": json.dumps(store.class_names),
            "featurizer_config": json.dumps(store.config.to_dict()), "config_hash": store.config_hash,
            "run_config": json.dumps(config.to_dict())})

    def validate() -> dict[str, float]:
        result: dict[str, float] = {}
        if runtime.is_main and validation:
            result = evaluate_model(model, store, validation, crop_width=crop_width, device=device,
                                    batch_size=config.eval_batch_size)
            _append(metrics_path, {"kind": "eval", "step": step, **result})
        rt.barrier(runtime)  # the other ranks wait here, not inside the next all-reduce
        return result

    path = None
    stop_step = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
    while step < stop_step:
        stage_number, stage, stage_start = config.stage_at(step)
        stage_end = stage_start + stage.steps
        set_stage_mode(model, stage.train_backbone)
        optimizer = create_optimizer(model.parameters(), config.optimizer, lr=stage.lr,
                                     weight_decay=config.weight_decay)
        scheduler = create_scheduler(optimizer, warmup_steps=stage.warmup_steps, total_steps=stage.steps,
                                     min_lr_ratio=config.min_lr_ratio)
        if payload is not None and int(payload["stage"]) == stage_number and step > stage_start:
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
        runner: torch.nn.Module = model
        if runtime.distributed:
            runner = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if runtime.cuda else None)
        if config.compile:
            runner = torch.compile(runner)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if runtime.is_main:
            print(f"stage {stage_number}: steps {step}..{stage_end - 1}, batch {stage.batch_size} x "
                  f"{config.accumulation} x {runtime.world_size}, {count_parameters(model, True):,} trainable "
                  f"parameters, crop {crop_width} px ({config.crop_seconds} s) on {device}")
        sampler = WindowSampler(store, np.array(split.train), batch_size=stage.batch_size, read_width=window_width,
                                seed=config.seed, start_step=step, stop_step=stage_end,
                                accumulation=config.accumulation, balanced=config.balanced, rank=runtime.rank,
                                world_size=runtime.world_size)
        loader = make_loader(WindowDataset(store, width=window_width), sampler, num_workers=config.num_workers,
                             pin_memory=runtime.cuda)
        batches = iter(loader)
        bar = tqdm(total=stage_end - step, desc=f"stage {stage_number}", disable=not (progress and runtime.is_main),
                   dynamic_ncols=True)
        window_start, window_samples = time.perf_counter(), 0
        while step < min(stage_end, stop_step):
            optimizer.zero_grad(set_to_none=True)
            parts: dict[str, float] = {"loss_main": 0.0, "loss_aux": 0.0}
            total = 0.0
            for micro in range(config.accumulation):
                batch = next(batches)
                images = batch["image"].to(device, non_blocking=True)
                # dropout and augmentation depend on (seed, step, global micro-batch) only: exact resume,
                # and DDP over W ranks == one process accumulating W times as many micro-batches
                global_micro = sampler.global_micro_batch(micro)
                torch.manual_seed(derived_seed(config.seed, step, 1, global_micro))
                generator = torch.Generator(device=device).manual_seed(derived_seed(config.seed, step, 2, global_micro))
                images, _ = augment_batch(images, crop_width=crop_width, config=config.augment, generator=generator)
                images = model.normalize(images)
                if runtime.cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = batch["label"].to(device, non_blocking=True)
                targets = batch["target"].to(device, non_blocking=True)
                sync = runtime.distributed and micro < config.accumulation - 1
                with (runner.no_sync() if sync and hasattr(runner, "no_sync") else nullcontext()), rt.autocast(device):
                    output = runner(images)
                    loss, part = soundception_loss(output, labels, targets, aux_weight=config.aux_weight,
                                                   multilabel=config.multilabel)
                (loss / config.accumulation).backward()
                total += float(loss.detach()) / config.accumulation
                for key in parts:
                    parts[key] += part[key] / config.accumulation
                window_samples += images.shape[0] * runtime.world_size
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            last_loss = total
            step += 1
            bar.update(1)
            if runtime.is_main and (step % config.log_every == 0 or step == stage_end):
                elapsed = time.perf_counter() - window_start
                rate = window_samples / max(elapsed, 1e-9)
                _append(metrics_path, {"kind": "train", "step": step, "stage": stage_number, "loss": total, **parts,
                                       "lr": scheduler.get_last_lr()[0], "samples_per_s": rate})
                bar.set_postfix(loss=f"{total:.3f}", samples_s=f"{rate:.1f}")
                window_start, window_samples = time.perf_counter(), 0
            if config.eval_every > 0 and step % config.eval_every == 0 and step < config.total_steps:
                last_eval = validate()
                if last_eval:
                    bar.write(f"step {step}: validation MAP {last_eval['map']:.3f}, top-1 {last_eval['top1']:.3f}")
                set_stage_mode(model, stage.train_backbone)
            if config.checkpoint_every > 0 and step % config.checkpoint_every == 0 or step == stop_step:
                path = checkpoint(stage_number, optimizer, scheduler)
        bar.close()
        del batches, loader
        payload = None
    if step < config.total_steps:  # stopped early on request: no final evaluation
        rt.stop(runtime)
        return {"step": step, "loss": last_loss, "validation": {}, "run_dir": str(run_dir), "checkpoint": str(path)}
    last_eval = validate()
    if runtime.is_main:
        if last_eval:
            print(f"final validation: MAP {last_eval['map']:.3f} (with background {last_eval['map_background']:.3f}), "
                  f"top-1 {last_eval['top1']:.3f}, top-5 {last_eval['top5']:.3f}, class mAP {last_eval['class_map']:.3f}; "
                  f"a random ranking scores MAP {last_eval['chance_map']:.3f}")
        plot_curves(metrics_path, run_dir / "curves.png")
    rt.barrier(runtime)
    rt.stop(runtime)
    return {"step": step, "loss": last_loss, "validation": last_eval, "run_dir": str(run_dir),
            "checkpoint": str(path or latest_checkpoint(run_dir) or "")}

