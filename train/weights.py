"""Loading a local timm checkpoint into the feature-extraction backbone; nothing is downloaded.

A checkpoint made from a plain ``timm.create_model(name)`` does not have the same keys as the
``features_only`` wrapper: the classifier and head layers are absent from the wrapper, and timm's
``FeatureListNet`` flattens nested module names (``features.0.conv`` becomes ``features_0.conv``).
:func:`key_mapping` pairs the wrapper's keys with the plain model's by comparing both models built
on the meta device (no weights, no download). The only keys ever skipped are the plain model's
keys that the wrapper does not have (its classifier / head); anything else missing, unexpected or
of the wrong shape raises :class:`WeightsMismatch` and nothing is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from soundception.train.checkpoint import UNREADABLE
from soundception.train.config import UserError


class WeightsMismatch(UserError):
    """A checkpoint does not fit the backbone (missing, unexpected or wrongly shaped tensors)."""


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did."""

    path: str
    matched: int
    skipped_head: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"loaded {self.matched} backbone tensors from {self.path}; skipped "
                f"{len(self.skipped_head)} classifier/head tensors")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` / ``.bin`` file (``weights_only``), unwrapped.

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a DDP ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no weights file at {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (*UNREADABLE, SafetensorError) as error:
        raise UserError(f"{path} is not a readable weights file ({type(error).__name__})") from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatch(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _normal(key: str) -> str:
    return key.replace(".", "_")


def key_mapping(backbone_name: str, feature_keys: list[str]) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Pair each feature-wrapper key with the plain model's key; also return the plain keys' shapes."""
    import timm

    with torch.device("meta"):
        plain = timm.create_model(backbone_name, pretrained=False)
    shapes = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    by_normal: dict[str, str] = {}
    for key in shapes:
        if _normal(key) in by_normal:
            raise WeightsMismatch(f"ambiguous key names in {backbone_name}: {key} / {by_normal[_normal(key)]}")
        by_normal[_normal(key)] = key
    mapping = {}
    for key in feature_keys:
        source = key if key in shapes else by_normal.get(_normal(key))
        if source is None:
            raise WeightsMismatch(f"backbone key {key} has no counterpart in timm's plain {backbone_name}")
        mapping[key] = source
    return mapping, shapes


def load_backbone_weights(backbone: nn.Module, backbone_name: str, path: str | Path) -> WeightsReport:
    """Load every backbone tensor from a local timm checkpoint, or raise :class:`WeightsMismatch`.

    Accepts a state dict of the plain model (``timm.create_model(name).state_dict()``) or of the
    ``features_only`` wrapper itself. Returns how many tensors were matched.
    """
    state = read_state_dict(path)
    target = backbone.state_dict()
    if set(target) <= set(state) and not set(state) - set(target):
        mapping, head = {k: k for k in target}, []
        expected_shapes = {k: tuple(v.shape) for k, v in target.items()}
    else:
        mapping, expected_shapes = key_mapping(backbone_name, list(target))
        head = sorted(set(expected_shapes) - set(mapping.values()))
    missing = sorted(source for source in mapping.values() if source not in state)
    unexpected = sorted(set(state) - set(mapping.values()) - set(head))
    wrong_shape = [f"{key}: file {tuple(state[src].shape)} vs model {tuple(target[key].shape)}"
                   for key, src in mapping.items() if src in state and tuple(state[src].shape) != tuple(target[key].shape)]
    if missing or unexpected or wrong_shape:
        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")

        problems = [f"{len(missing)} missing ({show(missing)})" if missing else "",
                    f"{len(unexpected)} unexpected ({show(unexpected)})" if unexpected else "",
                    f"{len(wrong_shape)} with the wrong shape ({show(wrong_shape)})" if wrong_shape else ""]
        raise WeightsMismatch(f"{path} does not fit backbone {backbone_name!r}: "
                              + "; ".join(p for p in problems if p) + ". Is it a checkpoint of another architecture?")
    with torch.no_grad():
        loaded = {key: state[src].to(target[key].dtype) for key, src in mapping.items()}
        result = backbone.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return WeightsReport(path=str(path), matched=len(loaded), skipped_head=head)
