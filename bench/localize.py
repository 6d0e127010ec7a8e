"""Benchmark: does the temporal attention, learned from recording labels only, mark the calls?

Makes a synthetic 5-species set with the project's generator (calls of 0.1-1.5 s in their own
bands, a quieter background species in half the files, pink or white noise at -10..0 dB SNR) and
keeps the true call times (``calls.csv``, as ``soundception synth`` writes it). Recordings of
6-40 s are featurized with ``min_duration`` 20 s, so the short ones are self-concatenated.
``mobilenetv3_small_100`` is trained from random weights once per pooling of the temporal
attention and seed (same data, seed and steps for both poolings):

* ``weighted mean``: ``sum_t(x_t a_t) / sum_t(a_t)``, blind to the activity's overall level;
* ``plain mean``: ``mean_t(x_t a_t)``, the element-wise product of paper 3.2 averaged over time.

On the run's validation files (never trained on) every window (hop: half a window, as
``soundception predict``) gives its temporal attention; each step is mapped back to the original
recording (self-concatenation undone) and labelled active when its time lies inside a call. The
table gives, per run and as the mean over seeds:

* ``AUC any`` / ``AUC main``: ROC AUC of the attention against that mask (any call; main species'
  calls only), pooled over all steps of all held-out files (target: 0.85);
* ``seg MAP``: BirdCLEF MAP over the segments (5 s, 1 s) holding a call, truth every species
  calling in the segment, of :func:`train.segments.segment_scores` (``att``) against every segment
  getting its recording's mean softmax (``mean``, no localisation);
* ``detect``: per species, the AP of ranking all segments, silent ones included, by its score;
  mean over species (the same two scorings);
* ``rec MAP``: the recording MAP of the final validation.

    .venv/bin/python bench/localize.py                        # 250 steps, seed 0: 2 runs of 4-8 min on 2 CPU cores
    .venv/bin/python bench/localize.py --device cuda --steps 400 --seeds 0,1,2   # 2 min on one H200
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch


from bench_data import make_audio
from soundception.train.attention import TemporalAttention, register_attention
from soundception.train.inference import FileWindows
from soundception.train.localize import Call, activity_auc, call_mask, segment_truth, step_labels

SEGMENT_SECONDS = (5.0, 1.0)


# ---------------------------------------------------------------------------------------------- the two poolings


class WeightedMeanTemporalAttention(TemporalAttention):
    """Temporal attention pooled by ``sum_t(x_t a_t) / sum_t(a_t)``: ``(B, C, F, T)`` -> ``(B, C)``, ``(B, T)``."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_time = features.mean(dim=2)
        activity = torch.sigmoid(self.detector(per_time)).squeeze(1)
        pooled = (per_time * activity[:, None, :]).sum(dim=2) / (activity.sum(dim=1, keepdim=True) + 1e-6)
        return pooled, activity


class PlainMeanTemporalAttention(TemporalAttention):
    """Temporal attention pooled by ``mean_t(x_t a_t)``: ``(B, C, F, T)`` -> ``(B, C)``, ``(B, T)``."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_time = features.mean(dim=2)
        activity = torch.sigmoid(self.detector(per_time)).squeeze(1)
        return (per_time * activity[:, None, :]).mean(dim=2), activity


# table name -> (registry name, module); registered by :func:`register_poolings` when the bench runs, not on
# import, so the library's registry (and the command line's choices) stay as they are in the tests
POOLINGS = {"weighted mean": ("bench_temporal_weighted_mean", WeightedMeanTemporalAttention),
            "plain mean": ("bench_temporal_plain_mean", PlainMeanTemporalAttention)}


def register_poolings() -> None:
    """Add both poolings to ``train.attention.ATTENTION`` so a run config (and its checkpoint) can name them."""
    for registered, module in POOLINGS.values():
        register_attention(registered)(module)


def library_pooling() -> str:
    """Which of :data:`POOLINGS` ``train.attention.TemporalAttention`` computes (checked on random input)."""
    torch.manual_seed(0)
    features = torch.randn(2, 8, 3, 12)
    library = TemporalAttention(8, hidden=4)
    with torch.no_grad():
        expected = library(features)[0]
        for name, (_, module) in POOLINGS.items():
            variant = module(8, hidden=4)
            variant.load_state_dict(library.state_dict())
            if torch.allclose(variant(features)[0], expected, atol=1e-6):
                return name
    return "neither"


# ---------------------------------------------------------------------------------------------- the measures


def read_calls(path: Path, classes: list[str]) -> dict[str, list[Call]]:
    """``calls.csv`` (file,species,start,end,low_hz,high_hz,background) -> file id -> its calls."""
    by_file: dict[str, list[Call]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            by_file.setdefault(row["file"], []).append(Call(classes.index(row["species"]), float(row["start"]),
                                                            float(row["end"]), row["background"] == "1"))
    return by_file


# ---------------------------------------------------------------------------------------------- data and training


def train_once(store: str, out: Path, *, aux_attention: str, seed: int, steps: int, crop_seconds: float,
               batch_size: int, device: str) -> tuple[Path, float, float]:
    """One run from random weights; returns its checkpoint, recording MAP (validation files) and seconds."""
    from soundception.train.augment import AugmentConfig
    from soundception.train.config import RunConfig, StageConfig
    from soundception.train.loop import train

    config = RunConfig(
        store=store, out=str(out), backbone="mobilenetv3_small_100", aux_attention=aux_attention,
        crop_seconds=crop_seconds, seed=seed, validation_fraction=0.25, augment=AugmentConfig.from_spec("default"),
        stage1=StageConfig(steps=0, batch_size=batch_size, lr=2e-3, warmup_steps=5, train_backbone=False),
        stage2=StageConfig(steps=steps, batch_size=batch_size, lr=2e-3, warmup_steps=10, train_backbone=True),
        num_workers=0, device=device, log_every=10, eval_every=0, checkpoint_every=0)
    started = time.perf_counter()
    result = train(config, progress=False)
    return Path(result["checkpoint"]), result["validation"]["map"], time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- measuring one run


def add_file(pooled: dict[str, list[np.ndarray]], windows: FileWindows, calls: list[Call], geometry: dict[str, float],
             *, n_classes: int, nyquist: float) -> None:
    """Append one held-out file's steps (attention, any-call and main-call masks) and its segments to ``pooled``."""
    from soundception.train.segments import segment_scores

    attention, seconds, active = step_labels(windows, calls, **geometry)
    pooled["attention"].append(attention)
    pooled["any"].append(active)
    pooled["main"].append(call_mask(seconds, [c for c in calls if not c.background]))
    for length in SEGMENT_SECONDS:
        scored = segment_scores(windows, **geometry, segment_seconds=length, nyquist=nyquist)
        truth = segment_truth(scored.bounds, calls, n_classes)
        called = truth.any(axis=1)
        pooled[f"{length:g} all attention"].append(scored.scores)
        pooled[f"{length:g} all recording"].append(np.tile(windows.recording_scores(), (len(truth), 1)))
        pooled[f"{length:g} all truth"].append(truth)
        pooled[f"{length:g} attention"].append(scored.scores[called])
        pooled[f"{length:g} recording"].append(np.tile(windows.recording_scores(), (int(called.sum()), 1)))
        pooled[f"{length:g} truth"].append(truth[called])


def detection_map(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean over species of sklearn's AP of ranking every segment ``(S, K)`` by that species' score.

    Unlike the per-segment MAP this ranks segments, silent ones included, so it rewards scores
    that drop where nothing calls; sklearn counts tied scores as one threshold (no order among them).
    """
    from sklearn.metrics import average_precision_score

    present = [c for c in range(truth.shape[1]) if truth[:, c].any()]
    return float(np.mean([average_precision_score(truth[:, c], scores[:, c]) for c in present]))


def summarize(pooled: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """AUCs over every pooled step, segment MAPs over every segment holding a call, detection MAP over all."""
    from soundception.train.metrics import mean_average_precision

    every = {key: np.concatenate(values) for key, values in pooled.items()}
    result = {"steps": every["attention"].size, "active": float(every["any"].mean()),
              "auc_any": activity_auc(every["attention"], every["any"]),
              "auc_main": activity_auc(every["attention"], every["main"])}
    for length in SEGMENT_SECONDS:
        truth = every[f"{length:g} truth"]
        result[f"segments_{length:g}"] = len(truth)
        for key in ("attention", "recording"):
            result[f"map_{length:g}_{key}"] = mean_average_precision(every[f"{length:g} {key}"], truth)
            result[f"detect_{length:g}_{key}"] = detection_map(every[f"{length:g} all {key}"],
                                                               every[f"{length:g} all truth"])
    return result


def measure(checkpoint: Path, store_url: str, calls: dict[str, list[Call]], device: str) -> dict[str, float]:
    """Attention AUC and segment MAP of one trained run on its validation files (see the module docstring)."""
    import json

    from soundception.shared.reader import FeatureStore
    from soundception.train.dataset import Split
    from soundception.train.inference import file_windows
    from soundception.train.runtime import resolve_device
    from soundception.train.trained import load_trained_model

    trained = load_trained_model(checkpoint, resolve_device(device))
    store = FeatureStore(store_url)
    indices = Split.from_dict(json.loads((checkpoint.parents[1] / "split.json").read_text())).validation
    config = trained.featurizer_config
    pooled: dict[str, list[np.ndarray]] = {}
    for key in ("attention", "any", "main", *(f"{s:g}{a} {k}" for s in SEGMENT_SECONDS for a in ("", " all")
                                              for k in ("attention", "recording", "truth"))):
        pooled[key] = []
    for windows in file_windows(trained.model, store, indices, width=trained.crop_width,
                                hop=trained.crop_width // 2, device=trained.device, attention=True):
        if windows.error:
            raise RuntimeError(f"{store.ids[windows.index]}: {windows.error}")
        geometry = {"width": trained.crop_width, "n_frames": int(store.table["n_frames"][windows.index]),
                    "duration": float(store.table["duration"][windows.index]),
                    "pixels_per_second": config.pixels_per_second}
        add_file(pooled, windows, calls[str(store.ids[windows.index])], geometry, n_classes=len(store.classes),
                 nyquist=config.sample_rate / 2)
    return {"files": len(indices), **summarize(pooled)}


# ---------------------------------------------------------------------------------------------- the table


def print_table(results: list[dict[str, float]], *, steps: int, library: str) -> None:
    """One row per run (and the mean per pooling over seeds): AUC any / main, segment MAP with attention and with
    the recording mean, recording MAP."""
    head = "".join(f" {f'{m} {s:g} s: att / mean':>21}" for s in SEGMENT_SECONDS for m in ("seg MAP", "detect"))
    print(f"\n{'pooling':<24} {'seed':>4} {'AUC any':>7} {'AUC main':>8}{head} {'rec MAP':>7} {'files':>5} "
          f"{'steps':>6} {'train s':>7}")
    rows = list(results)
    names = list(dict.fromkeys(r["pooling"] for r in results))
    if len(rows) > len(names):
        rows += [{**{k: np.mean([r[k] for r in results if r["pooling"] == n]) for k in results[0] if k != "pooling"},
                  "pooling": n, "seed": "mean"} for n in names]
    for r in rows:
        label = r["pooling"] + (" (library)" if r["pooling"] == library else "")
        cells = "".join(f" {r[f'{m}_{s:g}_attention']:>13.3f} / {r[f'{m}_{s:g}_recording']:.3f}"
                        for s in SEGMENT_SECONDS for m in ("map", "detect"))
        print(f"{label:<24} {r['seed']:>4} {r['auc_any']:7.3f} {r['auc_main']:8.3f}{cells} {r['recording_map']:7.3f} "
              f"{r['files']:5.0f} {r['steps']:6.0f} {r['seconds']:7.0f}")
    first = results[0]
    print(f"(training: {steps} steps; {first['active']:.0%} of the held-out steps inside a call; segments holding a "
          "call: " + ", ".join(f"{first[f'segments_{s:g}']} of {s:g} s" for s in SEGMENT_SECONDS) + ")")


def build_store(root: Path, *, files_per_species: int, snr_db: tuple[float, float], image_height: int,
                min_duration: float) -> str:
    """Audio with its call times (made once) and its store under ``root``, featurized serially."""
    from soundception.featurize.pipeline import featurize_store
    from soundception.shared.config import FeaturizerConfig

    started = time.perf_counter()
    if not (root / "calls.csv").exists():
        make_audio(root, n_species=5, files_per_species=files_per_species, seconds=(6.0, 40.0), snr_db=snr_db,
                   seed=0)
    store = str(root / "store.zarr")
    summary = featurize_store(root / "audio", store, metadata=root / "labels.csv", labels="csv", client=None,
                              config=FeaturizerConfig(image_height=image_height, min_duration=min_duration))
    print(f"data: 5 species x {files_per_species} files of 6-40 s, SNR {snr_db[0]:g}..{snr_db[1]:g} dB, images "
          f"{image_height} px high, min_duration {min_duration:g} s; featurized {summary.done} files (skipped "
          f"{summary.skipped}) in {time.perf_counter() - started:.0f} s", flush=True)
    return store


@click.command()
@click.option("--steps", type=int, default=250, show_default=True, help="Training steps per run (from scratch).")
@click.option("--poolings", default=",".join(POOLINGS), show_default=True, help="Comma-separated, from the list.")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated run seeds (split, weights, windows, augmentation); each pooling runs every seed.")
@click.option("--crop-seconds", type=float, default=3.0, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--image-height", type=int, default=128, show_default=True,
              help="Featurizer image height (px; 299 in the paper); the column rate scales with it.")
@click.option("--min-duration", type=float, default=20.0, show_default=True,
              help="Shorter recordings are self-concatenated to this length (s).")
@click.option("--snr-db", default="-10:0", show_default=True, help="Signal-to-noise ratio range (dB), low:high.")
@click.option("--files-per-species", type=int, default=24, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Where to train and measure (cpu, cuda, auto).")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Keep audio, store and runs here (data reused on a rerun) instead of a temporary folder.")
def main(steps: int, poolings: str, seeds: str, crop_seconds: float, batch_size: int, image_height: int,
         min_duration: float, snr_db: str, files_per_species: int, device: str, work: str | None) -> None:
    import shutil

    from soundception.shared.reader import FeatureStore

    names = poolings.split(",")
    unknown = [n for n in names if n not in POOLINGS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {list(POOLINGS)}", param_hint="--poolings")
    low, high = (float(v) for v in snr_db.split(":"))
    register_poolings()
    started = time.perf_counter()
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(work or scratch)
        root.mkdir(parents=True, exist_ok=True)
        store = build_store(root, files_per_species=files_per_species, snr_db=(low, high), image_height=image_height,
                            min_duration=min_duration)
        calls = read_calls(root / "calls.csv", FeatureStore(store).classes)
        print(f"runs: mobilenetv3_small_100 from scratch, {steps} steps of batch {batch_size}, crop {crop_seconds} s, "
              f"AdamW 2e-3, augment default, validation 25% of files, on {device}", flush=True)
        for seed in (int(s) for s in seeds.split(",")):
            for name in names:
                registered = POOLINGS[name][0]
                out = root / "runs" / f"{registered.removeprefix('bench_')}-seed{seed}"
                shutil.rmtree(out, ignore_errors=True)
                checkpoint, recording_map, seconds = train_once(store, out, aux_attention=registered, seed=seed,
                                                                steps=steps, crop_seconds=crop_seconds,
                                                                batch_size=batch_size, device=device)
                run = {"pooling": name, "seed": seed, **measure(checkpoint, store, calls, device),
                       "recording_map": recording_map, "seconds": seconds}
                results.append(run)
                print(f"  {name} seed {seed}: AUC {run['auc_any']:.3f} (any call), {run['auc_main']:.3f} (main only), "
                      f"recording MAP {recording_map:.3f}, {seconds:.0f} s", flush=True)
    print_table(results, steps=steps, library=library_pooling())
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
