"""Training curves from ``metrics.jsonl``: a PNG with the loss and the validation metrics."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in order (an absent file reads as none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Plot training loss (left) and validation MAP / top-1 (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="loss (main + aux)")
        left.plot([r["step"] for r in train], [r["loss_main"] for r in train], label="main", alpha=0.6)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    if train:
        left.legend()
    for key, label in (("map", "MAP"), ("map_background", "MAP with background"), ("top1", "top-1")):
        if evals:
            right.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", label=label)
    right.set_xlabel("step")
    right.set_ylabel("validation")
    right.set_ylim(0, 1)
    if evals:
        right.legend()
    else:  # no validation files, or no evaluation yet: say so instead of an empty frame
        right.text(0.5, 0.5, "no validation run", ha="center", va="center", transform=right.transAxes)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)
