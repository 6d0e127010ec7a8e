"""``soundception train`` and ``soundception evaluate``: parse options, build a config, call one function.

torch and timm are imported inside the commands so ``soundception --help`` stays fast.
"""

from __future__ import annotations

import json
import pickle

import click

from shared.reader import StoreError


def _json_option(text: str | None, name: str) -> dict | None:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint=name) from None


# what a bad store, checkpoint, weights file or backbone name raises: reported in one line
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, StoreError, KeyError, RuntimeError,
               pickle.UnpicklingError, EOFError)

# the names registered in train.attention.ATTENTION (listed here so --help needs no torch; a test
# keeps the two in step)
ATTENTION_NAMES = ("mean", "temporal", "time_frequency")


@click.command("train")
@click.option("--store", required=True, help="Feature store: local path or fsspec URL.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (runs/NAME).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt exactly where it stopped.")
@click.option("--backbone", default="inception_v4", show_default=True,
              help="timm model with features_only support and stride-16/32 feature maps.")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local timm state dict (.pth/.bin/.safetensors) for the backbone; never downloaded.")
@click.option("--main-attention", type=click.Choice(ATTENTION_NAMES), default="time_frequency", show_default=True)
@click.option("--aux-attention", type=click.Choice(ATTENTION_NAMES), default="temporal", show_default=True)
@click.option("--crop-seconds", type=float, default=15.0, show_default=True, help="Training window (s).")
@click.option("--stage1-steps", type=int, default=2000, show_default=True, help="Frozen-backbone steps.")
@click.option("--stage1-batch-size", type=int, default=8, show_default=True)
@click.option("--stage1-lr", type=float, default=1e-3, show_default=True)
@click.option("--stage1-warmup", type=int, default=100, show_default=True)
@click.option("--stage2-steps", type=int, default=20000, show_default=True, help="Fine-tune-all steps.")
@click.option("--stage2-batch-size", type=int, default=4, show_default=True)
@click.option("--stage2-lr", type=float, default=1e-4, show_default=True)
@click.option("--stage2-warmup", type=int, default=500, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--accumulation", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--aux-weight", type=float, default=0.4, show_default=True)
@click.option("--multilabel", is_flag=True, help="BCE with background species as positives.")
@click.option("--balanced", is_flag=True, help="Class-balanced sampling instead of uniform over files.")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@click.option("--validation-fraction", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--eval-every", type=int, default=500, show_default=True)
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--eval-batch-size", type=int, default=8, show_default=True)
@click.option("--storage-options", default=None, help="JSON dict of fsspec options for a URL store.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(store: str, out: str, resume: bool, backbone: str, pretrained: str | None, main_attention: str,
                  aux_attention: str, crop_seconds: float, stage1_steps: int, stage1_batch_size: int,
                  stage1_lr: float, stage1_warmup: int, stage2_steps: int, stage2_batch_size: int, stage2_lr: float,
                  stage2_warmup: int, optimizer: str, weight_decay: float, accumulation: int, aux_weight: float,
                  multilabel: bool, balanced: bool, no_augment: bool, validation_fraction: float, seed: int,
                  workers: int, device: str, compile_model: bool, log_every: int, eval_every: int,
                  checkpoint_every: int, eval_batch_size: int, storage_options: str | None, no_progress: bool) -> None:
    """Train Soundception on a feature store (stage 1: heads on a frozen backbone; stage 2: all)."""
    from train.augment import AugmentConfig
    from train.config import RunConfig, StageConfig
    from train.loop import train

    config = RunConfig(
        store=store, out=out, storage_options=_json_option(storage_options, "--storage-options"),
        backbone=backbone, pretrained=pretrained, main_attention=main_attention, aux_attention=aux_attention,
        crop_seconds=crop_seconds, seed=seed, validation_fraction=validation_fraction, balanced=balanced,
        stage1=StageConfig(steps=stage1_steps, batch_size=stage1_batch_size, lr=stage1_lr,
                           warmup_steps=stage1_warmup, train_backbone=False),
        stage2=StageConfig(steps=stage2_steps, batch_size=stage2_batch_size, lr=stage2_lr,
                           warmup_steps=stage2_warmup, train_backbone=True),
        optimizer=optimizer, weight_decay=weight_decay, accumulation=accumulation, aux_weight=aux_weight,
        multilabel=multilabel, augment=AugmentConfig.off() if no_augment else AugmentConfig(),
        num_workers=workers, device=device, compile=compile_model, log_every=log_every, eval_every=eval_every,
        checkpoint_every=checkpoint_every, eval_batch_size=eval_batch_size)
    try:
        result = train(config, resume=resume, progress=not no_progress)
    except USER_ERRORS as error:
        raise click.ClickException(" ".join(str(error).split()) or type(error).__name__) from None
    click.echo(f"done: step {result['step']}, checkpoint {result['checkpoint']}")


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--store", required=True, help="Feature store: local path or fsspec URL.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--files", type=click.Choice(["validation", "all"]), default="validation", show_default=True,
              help="The run's validation split, or every labelled done file of STORE (a test store).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--storage-options", default=None, help="JSON dict of fsspec options for a URL store.")
def evaluate_command(checkpoint: str, store: str, out: str | None, files: str, device: str, batch_size: int,
                     storage_options: str | None) -> None:
    """Evaluate a checkpoint: MAP, MAP with background species, top-1/top-5, class-wise mAP."""
    from train.evaluate import evaluate

    try:
        report = evaluate(checkpoint, store, out=out, files=files, device=device, batch_size=batch_size,
                          storage_options=_json_option(storage_options, "--storage-options"))
    except USER_ERRORS as error:
        raise click.ClickException(" ".join(str(error).split()) or type(error).__name__) from None
    click.echo(json.dumps(report, indent=2))
