"""The frozen run config: every training option, written to ``run_config.json`` and every checkpoint.

Things that describe the data (number of classes, class names, image height, pixels per second)
are not here: they come from the store's own metadata. This module imports no torch, so the
command line can take its defaults from here and ``soundception train --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundception.shared import files
from soundception.shared.errors import UserError
from soundception.shared.text import check_known_keys, redact_options

if TYPE_CHECKING:
    from soundception.shared.config import FeaturizerConfig
    from soundception.train.augment import AugmentConfig

OPTIMIZERS = ("adamw", "sgd")


OUT_OF_MEMORY_ADVICE = ("out of GPU memory: use a smaller --stage1-batch-size / --stage2-batch-size and raise "
                        "--accumulation to keep the effective batch (or a shorter --crop-seconds)")

# what torch puts before an error re-raised from a DataLoader worker, ahead of the worker's traceback
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def explain_error(error: BaseException) -> str | None:
    """The trainer's own one-liners for :func:`shared.errors.command_errors`: running out of GPU
    memory becomes advice, and a user error re-raised from a loader worker loses torch's
    traceback; None for everything else."""
    if type(error).__name__ == "OutOfMemoryError" and type(error).__module__.startswith("torch"):
        return OUT_OF_MEMORY_ADVICE
    text = str(error)
    if isinstance(error, UserError) and WORKER_TRACEBACK in text:  # "Caught X in DataLoader worker ...\n<tb>\nX: msg"
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return None


def crop_width_px(crop_seconds: float, config: FeaturizerConfig) -> int:
    """Window width in px for ``crop_seconds`` at the store's scale (2,990 px for 15 s at 299 px / 1.5 s)."""
    return max(32, int(round(crop_seconds * config.pixels_per_second)))


def _default_augment() -> AugmentConfig:
    from soundception.train.augment import AugmentConfig  # imports torch: kept out of the command line's --help

    return AugmentConfig()


@dataclass(frozen=True)
class StageConfig:
    """One training stage (paper 3.3).

    Attributes:
        steps: optimizer steps in this stage (0 skips it).
        batch_size: windows per micro-batch (per process under DDP).
        lr: peak learning rate after warmup.
        warmup_steps: linear warmup from 0, then cosine decay to ``lr * min_lr_ratio``.
        train_backbone: False freezes the backbone (weights and batch-norm statistics).
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    train_backbone: bool


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; see ``soundception train --help`` for each option."""

    store: str
    out: str
    storage_options: dict[str, Any] | None = None
    backbone: str = "inception_v4"
    pretrained: str | None = None
    init_from: str | None = None
    main_attention: str = "time_frequency"
    aux_attention: str = "temporal"
    attention_hidden: int = 256
    dropout: float = 0.2
    crop_seconds: float = 15.0
    seed: int = 0
    validation_fraction: float = 0.1
    balanced: bool = False
    call_crops: float = 0.0
    stage1: StageConfig = StageConfig(steps=2000, batch_size=8, lr=1e-3, warmup_steps=100, train_backbone=False)
    stage2: StageConfig = StageConfig(steps=20000, batch_size=4, lr=1e-4, warmup_steps=500, train_backbone=True)
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.01
    grad_clip: float = 5.0
    accumulation: int = 1
    aux_weight: float = 0.4
    multilabel: bool = False
    augment: AugmentConfig = field(default_factory=_default_augment)
    num_workers: int = 2
    device: str = "auto"
    compile: bool = False
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    eval_batch_size: int = 8
    eval_max_files: int | None = None

    def __post_init__(self) -> None:
        if self.pretrained and self.init_from:
            raise UserError("give --pretrained or --init-from, not both (a checkpoint holds its backbone)")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.crop_seconds <= 0:
            raise UserError(f"crop_seconds must be > 0 s, got {self.crop_seconds}")
        if self.accumulation < 1:
            raise UserError("accumulation must be >= 1")
        if self.stage1.steps < 0 or self.stage2.steps < 0 or self.total_steps == 0:
            raise UserError("stage steps must be >= 0 and not both 0")
        if self.stage1.batch_size < 1 or self.stage2.batch_size < 1:
            raise UserError("batch sizes must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attention_hidden < 1:
            raise UserError(f"attention_hidden must be >= 1, got {self.attention_hidden}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.call_crops <= 1.0:
            raise UserError(f"call_crops must be a fraction in [0, 1], got {self.call_crops}")
        if self.eval_max_files is not None and self.eval_max_files < 1:
            raise UserError(f"eval_max_files must be >= 1 (or None for all), got {self.eval_max_files}")

    @property
    def total_steps(self) -> int:
        return self.stage1.steps + self.stage2.steps

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """``(stage number 1|2, its config, first step of that stage)`` for a global step."""
        if step < self.stage1.steps:
            return 1, self.stage1, 0
        return 2, self.stage2, self.stage1.steps

    def to_dict(self) -> dict[str, Any]:
        """Plain values for checkpoints and config.json; secrets in ``storage_options`` are masked."""
        data = dataclasses.asdict(self)
        data["augment"] = self.augment.to_dict()
        data["storage_options"] = redact_options(self.storage_options)
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        from soundception.train.augment import AugmentConfig

        check_known_keys(data, (f.name for f in dataclasses.fields(cls)), "run config")
        values = dict(data)
        for stage in ("stage1", "stage2"):
            if isinstance(values.get(stage), dict):
                values[stage] = StageConfig(**values[stage])
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        return cls(**values)

    def write(self, path: str | Path) -> None:
        files.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
