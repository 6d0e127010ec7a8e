"""Benchmark: adapting a trained model to new species with k labelled recordings each.

A base model is trained on one set of species. A new, disjoint set follows: generated species
(another seed and prefix) and real bird calls from recordings that ship in PyPI wheels (``make
bench`` unpacks them into ``bench/data/real``). For k = 2, 5 and 10 training recordings per new
species and 3 seeds (which recordings are drawn), three ways to a classifier of the new species are
compared on the same held-out recordings (recording MAP, as ``evaluate``):

    generic    ``train`` from the default initialisation (no weights file: this machine has no
               ImageNet weights and nothing may download them), stage 1 then stage 2
    fine-tune  ``train --init-from BASE`` with exactly the same steps and options
    head       ``fit-head`` on the base model's embeddings (no gradient steps)

Real classes. Each real recording is a class; its recordings here are real calls, cut at random
from the source and laid at random times and gains over generated noise, written at the source's
own sample rate and channel count (a stereo source makes stereo files). Training recordings cut
from the first 60 % of the source, held-out ones from the last 40 %, so no held-out audio was seen
in training; the 0.17 s stereo clip is too short to split, so its held-out calls are the same
call under other noise and gains. The source files are also featurized as they are (stereo,
32 or 44.1 kHz, MP3, 0.17 s) and must come out ``done``.

    .venv/bin/python bench/transfer.py [--real bench/data/real] [--ks 2,5,10] [--seeds 0,1,2] [--out FILE]

Times are wall seconds on this machine; for the head, embedding and fitting are reported apart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundception.featurize.pipeline import featurize_store  # noqa: E402
from soundception.featurize.synthetic import make_dataset  # noqa: E402
from soundception.shared import FeatureStore, FeaturizerConfig  # noqa: E402
from soundception.train.augment import AugmentConfig  # noqa: E402
from soundception.train.config import RunConfig, StageConfig  # noqa: E402
from soundception.train.evaluate import recording_scores  # noqa: E402
from soundception.train.head import HeadOptions, fit_head  # noqa: E402
from soundception.train.loop import train  # noqa: E402
from soundception.train.metrics import mean_average_precision, one_hot  # noqa: E402
from soundception.train.trained import load_trained_model  # noqa: E402

# a small image and backbone so the whole benchmark runs on 2 CPU cores in about half an hour
CONFIG = FeaturizerConfig(image_height=128, image_seconds=1.5, min_duration=6.0)
BACKBONE = "mobilenetv3_small_100"
CROP_SECONDS = 3.0
REAL_SOURCES = {  # class id -> file in --real
    "real_yellowthroat": "CommonYellowthroat.mp3",  # hawkears: 44.1 kHz MP3, 5.9 s
    "real_bengalese": "bl26lb16.wav",  # vocalpy: 32 kHz, 5.8 s of Bengalese finch song
    "real_whilbl": "WhiLbl0010_110411-DC-01.wav",  # vocalpy: stereo 44.1 kHz, 0.17 s
}
POOL, HELD_OUT = 10, 6  # recordings per new species: to draw k from, and to evaluate on


def run_config(store: str, out: Path, *, steps: tuple[int, int], seed: int, init_from: str | None = None) -> RunConfig:
    stage1, stage2 = steps
    return RunConfig(store=store, out=str(out), backbone=BACKBONE, init_from=init_from, crop_seconds=CROP_SECONDS,
                     attention_hidden=64, seed=seed, validation_fraction=0.0,
                     augment=AugmentConfig.from_spec("none"),
                     stage1=StageConfig(steps=stage1, batch_size=8, lr=2e-3, warmup_steps=5, train_backbone=False),
                     stage2=StageConfig(steps=stage2, batch_size=8, lr=2e-3 if init_from is None else 1e-3,
                                        warmup_steps=10, train_backbone=True),
                     num_workers=0, log_every=1000, eval_every=0, checkpoint_every=0, eval_batch_size=16)


def real_recordings(source: Path, out: Path, *, count: int, first: float, last: float, seed: int) -> list[Path]:
    """``count`` recordings of 4-8 s: 1-3 real calls (0.4-1.2 s cut from ``[first, last)`` of the
    source, as a fraction of its length; the whole source when it is shorter than 0.4 s) at random
    times and gains over generated noise, at the source's sample rate and channel count."""
    audio, rate = soundfile.read(source, dtype="float32", always_2d=True)
    audio = audio / max(float(np.abs(audio).max()), 1e-6)
    rng = np.random.default_rng(seed)
    lo, hi = int(first * len(audio)), int(last * len(audio))
    paths = []
    for i in range(count):
        n = int(rng.uniform(4.0, 8.0) * rate)
        mix = np.zeros((n, audio.shape[1]), dtype=np.float32)
        for _ in range(int(rng.integers(1, 4))):
            if len(audio) < 0.4 * rate:
                call = audio
            else:
                length = int(min(rng.uniform(0.4, 1.2) * rate, hi - lo))
                start = int(rng.integers(lo, hi - length + 1))
                call = audio[start:start + length]
            at = int(rng.integers(0, n - len(call)))
            mix[at:at + len(call)] += rng.uniform(0.3, 1.0) * call
        noise = rng.standard_normal(mix.shape).astype(np.float32)
        mix += noise * rng.uniform(0.02, 0.1)
        mix *= 0.9 / max(float(np.abs(mix).max()), 1e-6)
        path = out / f"{source.stem}_{first:.1f}_{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, mix, rate, subtype="PCM_16")
        paths.append(path)
    return paths


def new_species(work: Path, real: Path | None) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The new set: class id -> pool recordings, class id -> held-out recordings."""
    info = make_dataset(work / "new", n_species=4, files_per_species=POOL + HELD_OUT, min_seconds=4.0,
                        max_seconds=12.0, seed=11, prefix="new", formats=("wav",))
    pool: dict[str, list[Path]] = {}
    held: dict[str, list[Path]] = {}
    for species in sorted(p.name for p in Path(info["paths"]["audio"]).iterdir()):
        files = sorted((Path(info["paths"]["audio"]) / species).iterdir())
        pool[species], held[species] = files[:POOL], files[POOL:]
    if real is not None:
        for k, (class_id, name) in enumerate(REAL_SOURCES.items()):
            source = real / name
            if not source.is_file():
                print(f"  {source} not found: {class_id} left out")
                continue
            pool[class_id] = real_recordings(source, work / "real" / class_id, count=POOL, first=0.0, last=0.6,
                                             seed=100 + k)
            held[class_id] = real_recordings(source, work / "real" / class_id, count=HELD_OUT, first=0.6, last=1.0,
                                             seed=200 + k)
    return pool, held


def link_store(files: dict[str, list[Path]], folder: Path, store: Path) -> str:
    """Featurize ``files`` (class id -> paths) laid out one folder per class (links, not copies)."""
    for class_id, paths in files.items():
        (folder / class_id).mkdir(parents=True, exist_ok=True)
        for path in paths:
            os.symlink(path.resolve(), folder / class_id / path.name)
    summary = featurize_store(folder, str(store), config=CONFIG, labels="folders")
    if summary.failed:
        raise SystemExit(f"featurizing {folder} failed for {summary.failed} file(s)")
    return str(store)


def held_out_map(checkpoint: str, test: FeatureStore) -> float:
    """Recording MAP of ``checkpoint`` on every recording of ``test`` (classes matched by id)."""
    trained = load_trained_model(checkpoint, "cpu")
    indices = np.flatnonzero(test.table["label"] >= 0)
    scores = recording_scores(trained.model, test, indices, crop_width=trained.crop_width, device=trained.device,
                              batch_size=16)
    columns = [trained.classes.index(c) for c in test.classes]
    labels = test.table["label"][indices].astype(np.int64)
    return mean_average_precision(scores[:, columns], one_hot(labels, len(test.classes)))


def real_only_map(checkpoint: str, test: FeatureStore) -> float | None:
    """The same MAP over the held-out recordings of the real classes only (None without them)."""
    real = [i for i, c in enumerate(test.classes) if c.startswith("real_")]
    if not real:
        return None
    trained = load_trained_model(checkpoint, "cpu")
    indices = np.flatnonzero(np.isin(test.table["label"], real))
    scores = recording_scores(trained.model, test, indices, crop_width=trained.crop_width, device=trained.device,
                              batch_size=16)
    columns = [trained.classes.index(c) for c in test.classes]
    labels = test.table["label"][indices].astype(np.int64)
    return mean_average_precision(scores[:, columns], one_hot(labels, len(test.classes)))


def real_files_as_they_are(real: Path, work: Path) -> list[dict]:
    """Featurize the real source files unchanged; each must come out ``done``."""
    folder = work / "as_is"
    folder.mkdir()
    for name in REAL_SOURCES.values():
        if (real / name).is_file():
            shutil.copy(real / name, folder / name)
    store = work / "as_is.zarr"
    featurize_store(folder, str(store), config=CONFIG, labels="none")
    opened = FeatureStore(str(store))
    rows = []
    for i, file_id in enumerate(opened.ids):
        info = soundfile.info(folder / file_id)
        rows.append({"file": str(file_id), "rate_hz": info.samplerate, "channels": info.channels,
                     "seconds": round(info.duration, 3), "status": str(opened.table["status"][i]),
                     "image_px": int(opened.table["n_frames"][i])})
    return rows


@click.command()
@click.option("--real", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/data/real"),
              show_default=True, help="The real recordings (make bench unpacks them from PyPI wheels).")
@click.option("--ks", default="2,5,10", show_default=True, help="Training recordings per new species.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--base-steps", default="20,300", show_default=True, help="The base model's stage 1, stage 2 steps.")
@click.option("--steps", default="20,100", show_default=True, help="Stage 1, stage 2 steps of generic and fine-tune.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench/results/transfer.json"),
              show_default=True)
def main(real: Path, ks: str, seeds: str, base_steps: str, steps: str, out: Path) -> None:
    k_values = [int(k) for k in ks.split(",")]
    seed_values = [int(s) for s in seeds.split(",")]
    base_plan = tuple(int(s) for s in base_steps.split(","))
    plan = tuple(int(s) for s in steps.split(","))
    if not real.is_dir():
        print(f"no real recordings in {real}: generated species only (make bench unpacks them)")
        real = None
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, no GPU",
                     "config": {"image_height": CONFIG.image_height, "image_seconds": CONFIG.image_seconds,
                                "backbone": BACKBONE, "crop_seconds": CROP_SECONDS, "base_steps": base_plan,
                                "steps": plan}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="transfer-") as folder:
        work = Path(folder)
        if real is not None:
            results["real_as_they_are"] = real_files_as_they_are(real, work)
            print("real files featurized as they are:", results["real_as_they_are"])
        started = time.perf_counter()
        base = make_dataset(work / "base", n_species=8, files_per_species=10, min_seconds=4.0, max_seconds=12.0,
                            seed=0, prefix="base", formats=("wav",))
        base_store = str(work / "base.zarr")
        featurize_store(base["paths"]["audio"], base_store, config=CONFIG, metadata=base["paths"]["labels"],
                        labels="csv")
        base_run = train(run_config(base_store, work / "base-run", steps=base_plan, seed=0), progress=False)
        base_checkpoint = base_run["checkpoint"]
        results["base"] = {"species": 8, "recordings": 80, "seconds": round(time.perf_counter() - started, 1)}
        print(f"base model: {results['base']}")
        pool, held = new_species(work, real)
        test = FeatureStore(link_store(held, work / "test-audio", work / "test.zarr"))
        results["new_species"] = sorted(pool)
        results["held_out_recordings"] = int(np.sum(test.table["label"] >= 0))
        for k in k_values:
            for seed in seed_values:
                rng = np.random.default_rng(1000 * k + seed)
                chosen = {c: [paths[i] for i in sorted(rng.choice(len(paths), size=k, replace=False))]
                          for c, paths in pool.items()}
                name = f"k{k}-s{seed}"
                store = link_store(chosen, work / f"{name}-audio", work / f"{name}.zarr")
                row: dict = {"k": k, "seed": seed}
                for method, init in (("generic", None), ("fine-tune", base_checkpoint)):
                    started = time.perf_counter()
                    result = train(run_config(store, work / f"{name}-{method}", steps=plan, seed=seed,
                                              init_from=init), progress=False)
                    row[f"{method}_seconds"] = round(time.perf_counter() - started, 1)
                    row[f"{method}_map"] = round(held_out_map(result["checkpoint"], test), 4)
                    row[f"{method}_real_map"] = real_only_map(result["checkpoint"], test)
                head = fit_head(base_checkpoint, store, work / f"{name}-head",
                                options=HeadOptions(validation_fraction=0.0, seed=seed), progress=False)
                row["head_embed_seconds"] = round(head["embed_seconds"], 2)
                row["head_fit_seconds"] = round(head["fit_seconds"], 2)
                row["head_map"] = round(held_out_map(head["checkpoint"], test), 4)
                row["head_real_map"] = real_only_map(head["checkpoint"], test)
                results["runs"].append(row)
                print(json.dumps(row))
    summary = {}
    for k in k_values:
        rows = [r for r in results["runs"] if r["k"] == k]
        summary[k] = {m: {"mean": round(float(np.mean([r[f"{m}_map"] for r in rows])), 3),
                          "std": round(float(np.std([r[f"{m}_map"] for r in rows])), 3)}
                      for m in ("generic", "fine-tune", "head")}
    results["summary"] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'k':>3} {'generic':>14} {'fine-tune':>14} {'head':>14}   (held-out recording MAP, mean +- sd over "
          f"{len(seed_values)} seeds; {results['held_out_recordings']} recordings of {len(pool)} species)")
    for k, row in summary.items():
        print(f"{k:>3} " + " ".join(f"{row[m]['mean']:>8.3f} +-{row[m]['std']:.3f}" for m in ("generic", "fine-tune",
                                                                                               "head")))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
