"""The frozen run config: every training option, written to ``run_config.json`` and every checkpoint.

Things that describe the data (number of classes, class names, image height, pixels per second)
are not here: they come from the store's own metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.augment import AugmentConfig

OPTIMIZERS = ("adamw", "sgd")


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
    main_attention: str = "time_frequency"
    aux_attention: str = "temporal"
    attention_hidden: int = 256
    dropout: float = 0.2
    crop_seconds: float = 15.0
    seed: int = 0
    validation_fraction: float = 0.1
    balanced: bool = False
    stage1: StageConfig = StageConfig(steps=2000, batch_size=8, lr=1e-3, warmup_steps=100, train_backbone=False)
    stage2: StageConfig = StageConfig(steps=20000, batch_size=4, lr=1e-4, warmup_steps=500, train_backbone=True)
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.01
    grad_clip: float = 5.0
    accumulation: int = 1
    aux_weight: float = 0.4
    multilabel: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 2
    device: str = "auto"
    compile: bool = False
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    eval_batch_size: int = 8
    eval_max_files: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be > 0 s, got {self.crop_seconds}")
        if self.accumulation < 1:
            raise ValueError("accumulation must be >= 1")
        if self.stage1.steps < 0 or self.stage2.steps < 0 or self.total_steps == 0:
            raise ValueError("stage steps must be >= 0 and not both 0")

    @property
    def total_steps(self) -> int:
        return self.stage1.steps + self.stage2.steps

    def stage_at(self, step: int) -> tuple[int, StageConfig, int]:
        """``(stage number 1|2, its config, first step of that stage)`` for a global step."""
        if step < self.stage1.steps:
            return 1, self.stage1, 0
        return 2, self.stage2, self.stage1.steps

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augment"] = self.augment.to_dict()
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        values = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown run config keys: {sorted(unknown)}")
        for stage in ("stage1", "stage2"):
            if isinstance(values.get(stage), dict):
                values[stage] = StageConfig(**values[stage])
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        return cls(**values)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
