"""Benchmark: samples/s of one full training step at 299 x 2,990 (15 s) per backbone.

A step is: augmentation of a uint8 batch on the device, normalisation, forward (main + auxiliary
branches with both attentions), loss, backward, AdamW step. On CUDA it runs in bf16 autocast with
channels_last and reports MFU from a FLOP count (``torch.utils.flop_counter``) over the device's
peak (``--peak-tflops``, default: H100 SXM dense bf16, 989).

    .venv/bin/python bench/train_step.py [--backbones mobilenetv3_small_100,inception_v4] [--batch 2]
"""

from __future__ import annotations

import time

import click
import torch


from soundception.train.augment import AugmentConfig, augment_batch, read_width
from soundception.train.loss import soundception_loss
from soundception.train.model import Soundception
from soundception.train.runtime import autocast, resolve_device


def step_flops(model: Soundception, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of forward + backward (no optimizer) on an already augmented batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        output = model(images)
        loss, _ = soundception_loss(output, labels, torch.nn.functional.one_hot(labels, 10).float())
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_backbone(name: str, *, batch: int, steps: int, height: int, width: int, device: torch.device,
                  peak_tflops: float) -> dict:
    torch.manual_seed(0)
    model = Soundception(name, 10).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    raw = torch.randint(0, 256, (batch, 3, height, read_width(width, AugmentConfig())), dtype=torch.uint8,
                        device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        images, _ = augment_batch(raw, crop_width=width, config=AugmentConfig(), generator=generator)
        images = model.normalize(images)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            output = model(images)
            loss, _ = soundception_loss(output, labels, torch.nn.functional.one_hot(labels, 10).float())
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocations, cuDNN autotuning)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    with autocast(device):
        flops = step_flops(model, model.normalize(raw[..., :width].float() / 255), labels)
    achieved = flops / seconds / 1e12
    return {"backbone": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch,
            "step_s": seconds, "samples_s": batch / seconds, "tflop_step": flops / 1e12, "tflops": achieved,
            "mfu": achieved / peak_tflops if device.type == "cuda" else float("nan")}


@click.command()
@click.option("--backbones", default="mobilenetv3_small_100,inception_v4", show_default=True)
@click.option("--batch", default=2, show_default=True)
@click.option("--steps", default=3, show_default=True)
@click.option("--height", default=299, show_default=True, help="px (the default featurizer scale).")
@click.option("--width", default=2990, show_default=True, help="px (15 s at 299 px / 1.5 s).")
@click.option("--device", default="auto", show_default=True)
@click.option("--peak-tflops", default=989.0, show_default=True, help="Device peak for MFU (bf16 dense).")
def main(backbones: str, batch: int, steps: int, height: int, width: int, device: str, peak_tflops: float) -> None:
    chosen = resolve_device(device)
    rows = [time_backbone(name, batch=batch, steps=steps, height=height, width=width, device=chosen,
                          peak_tflops=peak_tflops) for name in backbones.split(",")]
    precision = "bf16 autocast, channels_last" if chosen.type == "cuda" else f"fp32, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else "CPU"
    print(f"\ntraining step at {height} x {width} px on {name} ({precision}), {steps} timed steps\n")
    print("| backbone | params (M) | batch | s/step | samples/s | TFLOP/step | TFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] == r["mfu"] else "n/a"
        print(f"| {r['backbone']} | {r['params_m']:.1f} | {r['batch']} | {r['step_s']:.2f} | {r['samples_s']:.2f} | "
              f"{r['tflop_step']:.2f} | {r['tflops']:.3f} | {mfu} |")


if __name__ == "__main__":
    main()
