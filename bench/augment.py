"""Benchmark: which augmentation lets a small backbone learn from scratch, on held-out files.

Makes a synthetic 5-species set with the project's generator (calls of 0.1-1.5 s in their own
bands and rhythms, a quieter background species in half the files, pink or white noise at a low
signal-to-noise ratio: faint calls, not clean tones), featurizes it with the library's serial path
into a temporary store (128 px high by default, to fit the CPU budget), then trains
``mobilenetv3_small_100`` from random weights on the CPU once per condition and seed: no
augmentation, each transform alone at the paper's strength, the paper's set with and without hue,
and the default. It prints validation MAP (mean softmax over the covering windows of each held-out
file) half-way and at the end, and the training loss over the last 30 steps (chance is
1.4 ln 5 = 2.25 with the auxiliary weight 0.4). A seed fixes the split, the weights, the windows
and the augmentation; a condition equal to another (``default`` is ``time-crop+dilation`` today)
is trained once and reported under both names.

    .venv/bin/python bench/augment.py            # 12 conditions x 2 seeds, about 20 min on 2 idle cores
    .venv/bin/python bench/augment.py --quick    # 4 conditions x 1 seed, 120 steps, 40 files
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np


from soundception.featurize.pipeline import featurize_store
from bench_data import make_audio
from soundception.shared.config import FeaturizerConfig
from soundception.train.augment import AugmentConfig

# name -> augmentation spec (the CLI's --augment syntax); singles take the "paper" preset's strength
CONDITIONS = {
    "none": "none",
    "time-crop+dilation": "none,time_crop=true,use_dilation=true",
    "frequency-crop": "none,frequency_crop=true",
    "brightness": "none,brightness=0.12549",
    "contrast": "none,contrast=0.5:1.5",
    "saturation": "none,saturation=0.5:1.5",
    "hue": "none,hue=0.2",
    "noise": "none,noise_or_local=true,local_brightness=0",
    "local-brightness": "none,noise_or_local=true,noise_std=0",
    "paper": "paper",
    "paper-without-hue": "paper,hue=0",
    "default": "default",
}
QUICK_CONDITIONS = ("none", "hue", "paper", "default")


def train_once(store: str, out: Path, *, spec: str, seed: int, steps: int, crop_seconds: float,
               batch_size: int, stage1_steps: int = 0) -> dict[str, float]:
    """One run from random weights; returns MAP, loss over the last 30 steps, seconds."""
    from soundception.train.config import RunConfig, StageConfig
    from soundception.train.loop import train

    config = RunConfig(
        store=store, out=str(out), backbone="mobilenetv3_small_100", crop_seconds=crop_seconds, seed=seed,
        validation_fraction=0.2, augment=AugmentConfig.from_spec(spec),
        stage1=StageConfig(steps=stage1_steps, batch_size=batch_size, lr=2e-3, warmup_steps=5, train_backbone=False),
        stage2=StageConfig(steps=steps, batch_size=batch_size, lr=2e-3, warmup_steps=10, train_backbone=True),
        num_workers=0, device="cpu", log_every=10, eval_every=(stage1_steps + steps) // 2, checkpoint_every=0)
    started = time.perf_counter()
    result = train(config, progress=False)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r["loss"] for r in records if r.get("kind") == "train"][-3:]
    half = [r["map"] for r in records if r.get("kind") == "eval"][0]
    return {"map": result["validation"]["map"], "half": half, "chance": result["validation"]["chance_map"],
            "loss": float(np.mean(losses)), "seconds": seconds}


def print_table(results: dict[str, list[dict[str, float]]], seeds: tuple[int, ...], steps: int) -> None:
    """One row per condition: its --augment spec, validation MAP half-way and at the end (each seed,
    then the mean), the training loss over the last 30 steps (mean over seeds), seconds per run."""
    half = f"MAP@{steps // 2}"
    print(f"\n{'condition':<27} {'--augment':<42} {half + ' per seed':>16} {'mean':>5}  "
          f"{f'MAP@{steps} per seed':>17} {'mean':>5}  {'loss':>5}  {'s/run':>5}")
    for name, runs in results.items():
        def column(key: str, runs: list = runs) -> str:
            values = [r[key] for r in runs]
            return f"{' '.join(f'{v:.3f}' for v in values):>16} {np.mean(values):5.3f}"

        print(f"{name:<27} {CONDITIONS[name]:<42} {column('half')}  {column('map'):>23}  "
              f"{np.mean([r['loss'] for r in runs]):5.3f}  {np.mean([r['seconds'] for r in runs]):5.0f}")


def build_store(root: Path, *, files_per_species: int, snr_db: tuple[float, float], image_height: int) -> str:
    """Audio (made once) and its store under ``root``, featurized by the library's serial path."""
    started = time.perf_counter()
    labels = root / "labels.csv"
    if not labels.exists():
        make_audio(root, n_species=5, files_per_species=files_per_species, seconds=(6.0, 40.0), snr_db=snr_db,
                   seed=0)
    store = str(root / "store.zarr")
    summary = featurize_store(root / "audio", store, metadata=labels, client=None,
                              config=FeaturizerConfig(image_height=image_height))
    print(f"data: 5 species x {files_per_species} files of 6-40 s, SNR {snr_db[0]:g}..{snr_db[1]:g} dB, "
          f"images {image_height} px high; featurized {summary.done} files (skipped {summary.skipped}) in "
          f"{time.perf_counter() - started:.0f} s")
    return store


@click.command()
@click.option("--quick", is_flag=True, help="4 conditions, 1 seed, 120 steps, 8 files per species.")
@click.option("--steps", type=int, default=None, help="Training steps per run [250; quick 120].")
@click.option("--seeds", default=None, help="Comma-separated run seeds [0,1; quick 0].")
@click.option("--conditions", default=None, help=f"Comma-separated, from: {', '.join(CONDITIONS)} [all; quick: "
              f"{', '.join(QUICK_CONDITIONS)}].")
@click.option("--crop-seconds", type=float, default=2.0, show_default=True)
@click.option("--image-height", type=int, default=128, show_default=True,
              help="Featurizer image height (px; 299 in the paper); the column rate scales with it.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--snr-db", default="-15:0", show_default=True, help="Signal-to-noise ratio range (dB), low:high.")
@click.option("--stage1-steps", type=int, default=0, show_default=True, help="Frozen-backbone steps first.")
@click.option("--files-per-species", type=int, default=None, help="[16; quick 8]")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Keep audio, store and runs here (reused on a rerun) instead of a temporary folder.")
def main(quick: bool, steps: int | None, seeds: str | None, conditions: str | None, crop_seconds: float,
         image_height: int, batch_size: int, snr_db: str, stage1_steps: int, files_per_species: int | None,
         work: str | None) -> None:
    steps = steps or (120 if quick else 250)
    seed_list = tuple(int(s) for s in (seeds or ("0" if quick else "0,1")).split(","))
    names = conditions.split(",") if conditions else list(QUICK_CONDITIONS if quick else CONDITIONS)
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {list(CONDITIONS)}", param_hint="--conditions")
    low, high = (float(v) for v in snr_db.split(":"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(work or scratch)
        root.mkdir(parents=True, exist_ok=True)
        store = build_store(root, files_per_species=files_per_species or (8 if quick else 16), snr_db=(low, high),
                            image_height=image_height)
        print(f"runs: mobilenetv3_small_100 from scratch, {stage1_steps} + {steps} steps, batch {batch_size}, crop "
              f"{crop_seconds} s, AdamW lr 2e-3, validation 20% of files, seeds {seed_list}")
        results: dict[str, list[dict[str, float]]] = {}
        done: dict[tuple[str, int], dict[str, float]] = {}  # a condition equal to one already run reuses it
        for name in names:
            for seed in seed_list:
                key = (repr(AugmentConfig.from_spec(CONDITIONS[name])), seed)
                if key not in done:
                    out = root / "runs" / f"{name}-seed{seed}"
                    shutil.rmtree(out, ignore_errors=True)
                    done[key] = train_once(store, out, spec=CONDITIONS[name], seed=seed, steps=steps,
                                           crop_seconds=crop_seconds, batch_size=batch_size,
                                           stage1_steps=stage1_steps)
                run = done[key]
                results.setdefault(name, []).append(run)
                print(f"  {name} seed {seed}: MAP {run['half']:.3f} half-way, {run['map']:.3f} at the end (chance "
                      f"{run['chance']:.3f}), loss {run['loss']:.3f}, {run['seconds']:.0f} s", flush=True)
    print_table(results, seed_list, steps)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
