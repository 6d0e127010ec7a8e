"""``train --init-from CKPT``: start a new run from a trained Soundception checkpoint (fine-tuning).

A lab has a model trained on many species and a few recordings of its own site's species. The new
run keeps the checkpoint's backbone and both attentions and sizes the two linear heads for the new
store's classes: a class the checkpoint also knows (the same class id) keeps its trained rows of
both heads, weight and bias; a new class keeps the run's seeded random initialisation. Training
then goes through stage 1 (heads, backbone frozen) and stage 2 (everything) as from scratch.

The checkpoint must have been trained on images made like the store's (the same featurizer config)
and with the same network (backbone, attentions, attention width); otherwise the run is refused
in one line naming the fields that differ. Every checkpoint of the new run records where it
started (path, sha256, step), so a fine-tuned model can be traced to its base.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from soundception.shared.config import FeaturizerConfig, config_differences
from soundception.train.checkpoint import file_digest, load_checkpoint
from soundception.train.config import RunConfig, UserError

ARCHITECTURE = ("backbone", "main_attention", "aux_attention", "attention_hidden")
HEADS = ("aux_head.1", "main_head.1")  # the linear layer of each head (after its dropout)


@dataclass(frozen=True)
class Origin:
    """Where a fine-tuned run started: the checkpoint's ``path``, ``sha256`` and training ``step``,
    and the class ids whose head rows it carried over (``carried``)."""

    path: str
    sha256: str
    step: int
    carried: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def carried_rows(old_classes: list[str], new_classes: list[str]) -> dict[int, int]:
    """new class index -> old class index, for the class ids both lists hold."""
    old = {name: k for k, name in enumerate(old_classes)}
    return {k: old[name] for k, name in enumerate(new_classes) if name in old}


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, *, config: RunConfig, store: Any) -> Origin:
    """Load the checkpoint at ``path`` into ``model`` (built for ``store.classes``); see the module docstring.

    Raises:
        UserError: the checkpoint cannot be read, or was made with another featurizer config or network.
    """
    payload = load_checkpoint(path)
    base_config = FeaturizerConfig.from_dict(json.loads(payload["featurizer_config"]))
    if payload["config_hash"] != store.config_hash:
        changed = "; ".join(config_differences(base_config, store.config)) or "hash only"
        raise UserError(f"--init-from {path} was trained on images made with another featurizer config than "
                        f"{store.url} ({changed}); featurize the store with the checkpoint's config "
                        f"(soundception featurize --config featurizer_config.json)")
    base_run = json.loads(payload["run_config"])
    mismatched = [f"{name} {base_run.get(name)!r} -> {getattr(config, name)!r}" for name in ARCHITECTURE
                  if base_run.get(name) != getattr(config, name)]
    if mismatched:
        raise UserError(f"--init-from {path} is another network ({'; '.join(mismatched)}); "
                        f"train with the checkpoint's {', '.join(ARCHITECTURE)}")
    old_classes = json.loads(payload["classes"])
    rows = carried_rows(old_classes, list(store.classes))
    state = model.state_dict()
    for key, value in payload["model"].items():
        head = next((h for h in HEADS if key.startswith(h + ".")), None)
        if head is None:
            if key not in state or state[key].shape != value.shape:
                raise UserError(f"--init-from {path}: its weight {key} does not fit this network")
            state[key] = value
        elif rows:
            new, old = torch.tensor(list(rows)), torch.tensor(list(rows.values()))
            state[key][new] = value[old].to(state[key].dtype)
    model.load_state_dict(state)
    return Origin(path=str(path), sha256=file_digest(path), step=int(payload["step"]),
                  carried=tuple(store.classes[k] for k in rows))
