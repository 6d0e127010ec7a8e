"""A trained model ready to apply: weights, classes and the featurizer config it expects, from a checkpoint.

``predict``, ``explain`` and ``evaluate`` all start here, so they agree on how a checkpoint is read
and on what store it fits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soundception.shared.config import FeaturizerConfig, config_differences
from soundception.train.checkpoint import file_digest, load_checkpoint
from soundception.train.config import RunConfig, UserError, crop_width_px
from soundception.train.model import Soundception, build_model


@dataclass
class TrainedModel:
    """A checkpoint's model in eval mode on ``device``, with what it was trained on.

    Attributes:
        model: the :class:`Soundception` network, eval mode.
        run_config: the training run's options.
        featurizer_config: the config of the store it was trained on; inputs must match it.
        config_hash: that config's hash.
        classes, class_names: class ids and species names, in logit order.
        crop_width: the training window, px (2,990 for 15 s).
        step: the optimizer step the checkpoint was saved at.
        path: the checkpoint file; ``digest``: its sha256 (hex).
    """

    model: Soundception
    run_config: RunConfig
    featurizer_config: FeaturizerConfig
    config_hash: str
    classes: list[str]
    class_names: list[str]
    crop_width: int
    step: int
    path: Path
    digest: str
    device: torch.device

    @property
    def crop_seconds(self) -> float:
        return self.crop_width / self.featurizer_config.pixels_per_second

    def check_store(self, store: Any) -> None:
        """Refuse a store whose images or classes differ from the training store's (one line)."""
        if store.config_hash != self.config_hash:
            changed = "; ".join(config_differences(self.featurizer_config, store.config)) or "hash only"
            raise UserError(f"{store.url} was featurized with a different config than {self.path} was trained on "
                            f"({changed}); featurize it with the checkpoint's config "
                            f"(soundception featurize --config featurizer_config.json)")


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Read a checkpoint written by training and build its model on ``device`` in eval mode.

    Raises:
        UserError: not a readable Soundception checkpoint.
    """
    device = torch.device(device)
    payload = load_checkpoint(path)
    run_config = RunConfig.from_dict(json.loads(payload["run_config"]))
    featurizer_config = FeaturizerConfig.from_dict(json.loads(payload["featurizer_config"]))
    classes = json.loads(payload["classes"])
    class_names = json.loads(payload.get("class_names", "null")) or list(classes)
    model = build_model(run_config, len(classes))
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return TrainedModel(model=model, run_config=run_config, featurizer_config=featurizer_config,
                        config_hash=payload["config_hash"], classes=classes, class_names=class_names,
                        crop_width=crop_width_px(run_config.crop_seconds, featurizer_config),
                        step=int(payload["step"]), path=Path(path), digest=file_digest(path), device=device)
