"""``soundception train`` and ``soundception evaluate``: parse options, build a config, call one function.

Every default is read from :class:`train.config.RunConfig`, so the two cannot drift. torch and timm
are imported inside the commands so ``soundception --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

import click

from soundception.shared.errors import Interrupted, command_errors
from soundception.shared.text import JSON_OBJECT
from soundception.train.config import OPTIMIZERS, RunConfig, explain_error

# every default comes from the config's fields (read without building one: that would import torch)
DEFAULT = {f.name: f.default for f in dataclasses.fields(RunConfig)}
STAGE1, STAGE2 = DEFAULT["stage1"], DEFAULT["stage2"]

T = TypeVar("T")


def train_interrupted_message(out: str, step: int | None) -> str:
    """What Ctrl-C during ``train`` stopped and what to rerun: resume from the last checkpoint, or start over."""
    from soundception.train.checkpoint import latest_checkpoint, saved_step

    when = "before the first step" if step is None else f"at step {step}"
    last = latest_checkpoint(out)
    if last is None:
        return (f"interrupted {when}, before the first checkpoint; rerun the same command without --resume "
                f"to start over")
    saved = saved_step(last)
    holds = "the last checkpoint" if saved is None else f"step {saved}"
    return f"interrupted {when}; {last} holds {holds}: rerun the same command with --resume to continue from there"


# the names registered in train.attention.ATTENTION (listed here so --help needs no torch; a test
# keeps the two in step)
ATTENTION_NAMES = ("mean", "temporal", "time_frequency")
# the presets in train.augment.AUGMENT_PRESETS, likewise
AUGMENT_PRESET_NAMES = ("default", "paper", "none")


def _augment_option(spec: str) -> Any:
    """``--augment``'s text -> an ``AugmentConfig``; a bad preset, key or value is a usage error."""
    from soundception.train.augment import AugmentConfig

    try:
        return AugmentConfig.from_spec(spec)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--augment") from None


@click.command("train")
@click.option("--store", required=True, help="Feature store: local path or fsspec URL.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (runs/NAME).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt exactly where it stopped.")
@click.option("--backbone", default=DEFAULT["backbone"], show_default=True,
              help="timm model with features_only support and stride-16/32 feature maps.")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local timm state dict (.pth/.bin/.safetensors) for the backbone; never downloaded.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fine-tune: start from a Soundception checkpoint (backbone, attentions, and the head rows of "
                   "classes it knows by id); its featurizer config and network must match.")
@click.option("--main-attention", type=click.Choice(ATTENTION_NAMES), default=DEFAULT["main_attention"],
              show_default=True)
@click.option("--aux-attention", type=click.Choice(ATTENTION_NAMES), default=DEFAULT["aux_attention"],
              show_default=True)
@click.option("--attention-hidden", type=int, default=DEFAULT["attention_hidden"], show_default=True,
              help="Channels inside each attention detector.")
@click.option("--dropout", type=float, default=DEFAULT["dropout"], show_default=True,
              help="Dropout before each linear classifier.")
@click.option("--crop-seconds", type=float, default=DEFAULT["crop_seconds"], show_default=True,
              help="Training window (s).")
@click.option("--stage1-steps", type=int, default=STAGE1.steps, show_default=True, help="Frozen-backbone steps.")
@click.option("--stage1-batch-size", type=int, default=STAGE1.batch_size, show_default=True)
@click.option("--stage1-lr", type=float, default=STAGE1.lr, show_default=True)
@click.option("--stage1-warmup", type=int, default=STAGE1.warmup_steps, show_default=True)
@click.option("--stage2-steps", type=int, default=STAGE2.steps, show_default=True, help="Fine-tune-all steps.")
@click.option("--stage2-batch-size", type=int, default=STAGE2.batch_size, show_default=True)
@click.option("--stage2-lr", type=float, default=STAGE2.lr, show_default=True)
@click.option("--stage2-warmup", type=int, default=STAGE2.warmup_steps, show_default=True)
@click.option("--min-lr-ratio", type=float, default=DEFAULT["min_lr_ratio"], show_default=True,
              help="Floor of the cosine schedule, as a fraction of each stage's peak rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULT["optimizer"], show_default=True)
@click.option("--weight-decay", type=float, default=DEFAULT["weight_decay"], show_default=True,
              help="On weights only: never on norm layers or biases.")
@click.option("--grad-clip", type=float, default=DEFAULT["grad_clip"], show_default=True,
              help="Clip the gradient norm to this (0: no clipping).")
@click.option("--accumulation", type=int, default=DEFAULT["accumulation"], show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--aux-weight", type=float, default=DEFAULT["aux_weight"], show_default=True,
              help="Loss = main + AUX_WEIGHT x auxiliary head.")
@click.option("--multilabel", is_flag=True, help="BCE with background species as positives.")
@click.option("--balanced", is_flag=True, help="Class-balanced sampling instead of uniform over files.")
@click.option("--call-crops", type=click.FloatRange(0.0, 1.0), default=DEFAULT["call_crops"], show_default=True,
              help="Share of training crops, of recordings with annotated calls, drawn to contain a call "
                   "(needs a store featurized with --annotations; 0: the paper's uniform random crops).")
@click.option("--augment", "augment_spec", default="default", show_default=True,
              help=f"Augmentation preset ({', '.join(AUGMENT_PRESET_NAMES)}), then optional key=value overrides "
                   "of train.augment.AugmentConfig's fields: 'paper,hue=0', 'default,contrast=0.8:1.2' "
                   "(ranges low:high, switches true/false).")
@click.option("--no-augment", is_flag=True, help="Same as --augment none.")
@click.option("--validation-fraction", type=float, default=DEFAULT["validation_fraction"], show_default=True)
@click.option("--seed", type=int, default=DEFAULT["seed"], show_default=True)
@click.option("--workers", type=int, default=DEFAULT["num_workers"], show_default=True,
              help="DataLoader worker processes.")
@click.option("--device", default=DEFAULT["device"], show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the model.")
@click.option("--log-every", type=int, default=DEFAULT["log_every"], show_default=True)
@click.option("--eval-every", type=int, default=DEFAULT["eval_every"], show_default=True,
              help="Validate every N steps (0: only at the end).")
@click.option("--eval-max-files", type=int, default=DEFAULT["eval_max_files"],
              help="Validate on at most N files during and after training (default: every validation file).")
@click.option("--checkpoint-every", type=int, default=DEFAULT["checkpoint_every"], show_default=True)
@click.option("--eval-batch-size", type=int, default=DEFAULT["eval_batch_size"], show_default=True)
@click.option("--storage-options", type=JSON_OBJECT, default=None, help="JSON dict of fsspec options for a URL store.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@command_errors(explain=explain_error)
def train_command(store: str, out: str, resume: bool, backbone: str, pretrained: str | None, main_attention: str,
                  aux_attention: str, crop_seconds: float, stage1_steps: int, stage1_batch_size: int,
                  stage1_lr: float, stage1_warmup: int, stage2_steps: int, stage2_batch_size: int, stage2_lr: float,
                  stage2_warmup: int, optimizer: str, weight_decay: float, accumulation: int, aux_weight: float,
                  multilabel: bool, balanced: bool, call_crops: float, augment_spec: str, no_augment: bool,
                  validation_fraction: float, seed: int,
                  workers: int, device: str, compile_model: bool, log_every: int, eval_every: int,
                  checkpoint_every: int, eval_batch_size: int, storage_options: dict | None, no_progress: bool,
                  attention_hidden: int, dropout: float, min_lr_ratio: float, grad_clip: float,
                  eval_max_files: int | None, init_from: str | None) -> None:
    """Train Soundception on a feature store (stage 1: heads on a frozen backbone; stage 2: all)."""
    from soundception.train.config import StageConfig
    from soundception.train.loop import train

    config = RunConfig(
        store=store, out=out, storage_options=storage_options,
        backbone=backbone, pretrained=pretrained, init_from=init_from, main_attention=main_attention,
        aux_attention=aux_attention,
        attention_hidden=attention_hidden, dropout=dropout,
        crop_seconds=crop_seconds, seed=seed, validation_fraction=validation_fraction, balanced=balanced,
        call_crops=call_crops,
        stage1=StageConfig(steps=stage1_steps, batch_size=stage1_batch_size, lr=stage1_lr,
                           warmup_steps=stage1_warmup, train_backbone=False),
        stage2=StageConfig(steps=stage2_steps, batch_size=stage2_batch_size, lr=stage2_lr,
                           warmup_steps=stage2_warmup, train_backbone=True),
        optimizer=optimizer, weight_decay=weight_decay, min_lr_ratio=min_lr_ratio, grad_clip=grad_clip,
        accumulation=accumulation, aux_weight=aux_weight,
        multilabel=multilabel, augment=_augment_option("none" if no_augment else augment_spec),
        num_workers=workers, device=device, compile=compile_model, log_every=log_every, eval_every=eval_every,
        checkpoint_every=checkpoint_every, eval_batch_size=eval_batch_size, eval_max_files=eval_max_files)
    try:
        result = train(config, resume=resume, progress=not no_progress)
    except KeyboardInterrupt as stop:
        raise Interrupted(train_interrupted_message(out, getattr(stop, "step", None))) from None
    click.echo(f"done: step {result['step']}, checkpoint {result['checkpoint']}")


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--store", required=True, help="Feature store: local path or fsspec URL.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--files", type=click.Choice(["validation", "all"]), default="validation", show_default=True,
              help="The run's validation split, or every labelled done file of STORE (a test store).")
@click.option("--device", default=DEFAULT["device"], show_default=True)
@click.option("--batch-size", type=int, default=DEFAULT["eval_batch_size"], show_default=True,
              help="Windows per forward pass.")
@click.option("--storage-options", type=JSON_OBJECT, default=None, help="JSON dict of fsspec options for a URL store.")
@click.option("--segments", "segment_seconds", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Segment length, s, of the localisation report (stores with call annotations).")
@command_errors(interrupted="interrupted: no report written; rerun the same command (evaluation starts over)",
                explain=explain_error)
def evaluate_command(checkpoint: str, store: str, out: str | None, files: str, device: str, batch_size: int,
                     storage_options: dict | None, segment_seconds: float) -> None:
    """Evaluate a checkpoint: MAP, MAP with background species, top-1/top-5, class-wise mAP."""
    from soundception.train.evaluate import evaluate

    options = storage_options
    report = evaluate(checkpoint, store, out=out, files=files, device=device, batch_size=batch_size,
                      storage_options=options, segment_seconds=segment_seconds)
    click.echo(json.dumps(report, indent=2))


@click.command("thresholds")
@click.option("--decisions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A decisions CSV (the review page's export).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --store: thresholds from its validation split; with --decisions: only the species names.")
@click.option("--store", default=None, help="The checkpoint's store (its validation split is scored against the labels).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The thresholds CSV to write.")
@click.option("--precision", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="The precision each species' threshold must reach.")
@click.option("--segments", "segment_seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --store: segment scores of this length against the annotated calls [default: recording scores].")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --store: thresholds on calibrated scores (use the same file with predict).")
@click.option("--min-decisions", type=int, default=10, show_default=True, help="Fewer decisions: a warning.")
@click.option("--min-positives", type=int, default=3, show_default=True, help="Fewer right ones: a warning.")
@click.option("--device", default="cpu", show_default=True)
@command_errors(explain=explain_error)
def thresholds_command(decisions: str | None, checkpoint: str | None, store: str | None, out: str, precision: float,
                       segment_seconds: float | None, calibration: str | None, min_decisions: int, min_positives: int,
                       device: str) -> None:
    """Per-species score thresholds reaching --precision, from reviewed decisions or a validation split."""
    from soundception.train import thresholds as th

    if bool(decisions) == bool(store) or (store and not checkpoint):
        raise click.UsageError("give --decisions, or --checkpoint with --store")
    if decisions:
        found = th.read_decisions(decisions)
        classes = sorted(set(found.class_id.tolist()) | set(found.unsure))
        names = None
        if checkpoint:
            from soundception.train.trained import load_trained_model

            trained = load_trained_model(checkpoint)
            classes, names = list(trained.classes), list(trained.class_names)
            unknown = sorted(set(found.class_id.tolist()) - set(classes))
            if unknown:
                from soundception.train.config import UserError

                raise UserError(f"{decisions} proposes {len(unknown)} class(es) {checkpoint} does not know, "
                                f"e.g. {unknown[0]!r}")
    else:
        found, classes, names = th.validation_decisions(checkpoint, store, segment_seconds=segment_seconds,
                                                        calibration=calibration, device=device)
    rows = th.species_thresholds(found, classes, names, precision=precision, min_decisions=min_decisions,
                                 min_positives=min_positives)
    th.write_thresholds(out, rows)
    for line in th.too_few_warnings(rows):
        click.echo(line, err=True)
    unsure = sum(found.unsure.values())
    reached = sum(r.threshold is not None for r in rows)
    click.echo(f"wrote {out}: {reached} of {len(rows)} species reach precision {precision:g} "
               f"({len(found.score)} decisions, {unsure} unsure ignored)")


@click.command("calibrate")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--store", required=True, help="The checkpoint's store: its validation split is fitted on.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="calibration.json to write.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None, help="Also draw the reliability curves (PNG).")
@click.option("--segments", "segment_seconds", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Segment length, s, of the segment calibration (stores with call annotations).")
@click.option("--folds", type=int, default=2, show_default=True, help="Cross-fitting folds for the held-out ECE.")
@click.option("--device", default="cpu", show_default=True)
@command_errors(explain=explain_error)
def calibrate_command(checkpoint: str, store: str, out: str, figure: str | None, segment_seconds: float, folds: int,
                      device: str) -> None:
    """Fit score calibration on a checkpoint's validation split (predict --calibration applies it)."""
    from soundception.train.calibrate import calibrate

    result = calibrate(checkpoint, store, out, segment_seconds=segment_seconds, figure=figure, folds=folds,
                       device=device)
    for kind in ("recording", "segment"):
        fit = result[kind]
        if fit is None:
            click.echo(f"{kind}: no annotated calls in the validation split, not calibrated")
            continue
        click.echo(f"{kind}: slope {fit['slope']:.3f}, intercept {fit['intercept']:.3f} on {fit['pairs']} pairs; "
                   f"ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f} (held out)")
    click.echo(f"wrote {out}" + (f" and {figure}" if figure else ""))
