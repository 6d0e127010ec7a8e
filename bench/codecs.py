"""Benchmark: does the image, and a model's answer, change with the codec that carried the sound?

Part A (images): generated calls over noise and the real bird recordings that PyPI wheels ship
(opensoundscape, vocalpy, hawkears; ``--real DIR``, filled by ``make bench``) are written as WAV
and encoded as MP3 (CBR 64/96/128/320 kbps, VBR at three qualities and libsndfile's default), Ogg
Vorbis and Opus (low and default quality) and FLAC; each copy is decoded by the featurizer's own
decoder, aligned to the WAV, and its image compared with the WAV's: mean absolute difference in
grey levels per channel (FFT 128 / 512 / 2048), the mean over the recordings and the worst one.

Part B (models): 5 generated species x 16 recordings at 44.1 kHz; 12 per species train a small
model (the demo's: mobilenetv3_small_100, 3 s crops, 220 steps, default augmentation) on their
WAVs, and then on their 64 kbps MP3s; the other 4 per species (20 recordings) are featurized in
every encoding and scored: top-1 accuracy, MAP, and top-1 agreement with the WAVs' answers.

Both parts run each clip rule side by side: the project's (grey 0 at 6 dB over the median) and
schema 3's (the 1st percentile), the same featurizer with ``background_percentile=1, floor_db=0,
dynamic_range_db=(0, inf)``.

    .venv/bin/python bench/codecs.py [--real bench/data/real] [--part images,models] [--out DIR]
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np


from soundception.featurize.audio import decode, self_concatenate
from soundception.featurize.image import multiscale_image
from soundception.featurize.synthetic import make_dataset
from soundception.shared.config import FeaturizerConfig

SOURCE_RATE = 44100
RULES = {
    "median + 6 dB": FeaturizerConfig(),
    "1st percentile": FeaturizerConfig(background_percentile=1.0, floor_db=0.0, dynamic_range_db=(0.0, float("inf"))),
}


def _cbr(kbps: int) -> float:
    """libsndfile's MP3 compression level for a constant bitrate: 0..1 maps onto 320..32 kbps."""
    return (320 - kbps) / (320 - 32)


# name -> (format, subtype, options, sample rate written)
ENCODINGS = {
    "flac": ("FLAC", None, {}, None),
    "mp3 320 kbps CBR": ("MP3", None, {"compression_level": _cbr(320), "bitrate_mode": "CONSTANT"}, None),
    "mp3 128 kbps CBR": ("MP3", None, {"compression_level": _cbr(128), "bitrate_mode": "CONSTANT"}, None),
    "mp3 96 kbps CBR": ("MP3", None, {"compression_level": _cbr(96), "bitrate_mode": "CONSTANT"}, None),
    "mp3 64 kbps CBR": ("MP3", None, {"compression_level": _cbr(64), "bitrate_mode": "CONSTANT"}, None),
    "mp3 VBR best (level 0)": ("MP3", None, {"compression_level": 0.0, "bitrate_mode": "VARIABLE"}, None),
    "mp3 VBR level 0.3": ("MP3", None, {"compression_level": 0.3, "bitrate_mode": "VARIABLE"}, None),
    "mp3 VBR level 0.6": ("MP3", None, {"compression_level": 0.6, "bitrate_mode": "VARIABLE"}, None),
    "mp3 default (VBR)": ("MP3", None, {}, None),
    "ogg vorbis default": ("OGG", "VORBIS", {}, None),
    "ogg vorbis low": ("OGG", "VORBIS", {"compression_level": 1.0}, None),
    "opus default": ("OGG", "OPUS", {}, 48000),
    "opus low": ("OGG", "OPUS", {"compression_level": 0.9}, 48000),
}
REAL = ["birds_10s.wav", "CommonYellowthroat.mp3", "bl26lb16.wav", "bells.wav", "samba.wav", "simple.wav",
        "flashcam.wav", "WhiLbl0010_110411-DC-01.wav"]


def encode(samples: np.ndarray, rate: int, encoding: str, path: Path) -> float:
    """Write ``samples`` in ``encoding`` to ``path``; returns the file's average bitrate, kbps."""
    import soundfile
    import soxr

    kind, subtype, options, written_rate = ENCODINGS[encoding]
    if written_rate and written_rate != rate:
        samples, rate = soxr.resample(samples, rate, written_rate).astype(np.float32), written_rate
    soundfile.write(path, samples, rate, format=kind, subtype=subtype, **options)
    return path.stat().st_size * 8 / (samples.size / rate) / 1000


def aligned(reference: np.ndarray, copy: np.ndarray, max_lag: int = 3000) -> np.ndarray:
    """``copy`` shifted by its cross-correlation lag to ``reference`` (a decoder's delay), same length."""
    n = min(reference.size, copy.size, 22050 * 5)
    spectrum = np.fft.rfft(reference[:n], 2 * n).conj() * np.fft.rfft(copy[:n], 2 * n)
    correlation = np.fft.irfft(spectrum)
    lag = int(np.argmax(np.concatenate([correlation[-max_lag:], correlation[: max_lag + 1]]))) - max_lag
    copy = copy[lag:] if lag > 0 else np.concatenate([np.zeros(-lag, np.float32), copy])
    return np.concatenate([copy, np.zeros(max(0, reference.size - copy.size), np.float32)])[: reference.size]


def sources(real: Path | None, work: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Name -> (mono float32 samples, rate): 6 generated recordings and the real ones found."""
    import soundfile

    info = make_dataset(work / "generated", n_species=6, files_per_species=1, min_seconds=8, max_seconds=30,
                        sample_rate=SOURCE_RATE, seed=11, formats=("wav",))
    found = {f"generated {Path(f).stem}": soundfile.read(work / "generated" / "audio" / f, dtype="float32")
             for f in info["files"]}
    for name in REAL:
        if real is not None and (real / name).is_file():
            samples, rate = soundfile.read(real / name, dtype="float32")
            found[Path(name).stem[:18]] = (samples.mean(axis=1) if samples.ndim > 1 else samples, rate)
    return found


def image_differences(real: Path | None, work: Path) -> list[dict]:
    """Part A: one row per (encoding, rule): mean and worst per-channel difference from the WAV's image."""
    import soundfile

    rows: dict[tuple[str, str], list] = {}
    kbps: dict[str, list[float]] = {}
    for name, (samples, rate) in sources(real, work).items():
        wav = work / "wav.wav"
        soundfile.write(wav, samples, rate, subtype="PCM_16")
        reference = decode(wav, sample_rate=22050).samples
        images = {rule: _own_image(reference, config) for rule, config in RULES.items()}
        for encoding in ENCODINGS:
            path = work / f"copy.{'mp3' if ENCODINGS[encoding][0] == 'MP3' else ENCODINGS[encoding][0].lower()}"
            kbps.setdefault(encoding, []).append(encode(samples, rate, encoding, path))
            copy = aligned(reference, decode(path, sample_rate=22050).samples)
            for rule, config in RULES.items():
                difference = np.abs(images[rule] - _own_image(copy, config)).mean(axis=(1, 2))
                rows.setdefault((encoding, rule), []).append((name, difference))
        print(f"  {name}: {samples.size / rate:.1f} s at {rate} Hz", flush=True)
    table = []
    for (encoding, rule), results in rows.items():
        differences = np.array([d for _, d in results])
        worst = int(differences.mean(axis=1).argmax())
        table.append({"encoding": encoding, "kbps": float(np.mean(kbps[encoding])), "rule": rule,
                      "mean": differences.mean(axis=0).round(1).tolist(),
                      "worst": differences[worst].round(1).tolist(), "worst_recording": results[worst][0],
                      "recordings": len(results)})
    return table


def _own_image(samples: np.ndarray, config: FeaturizerConfig) -> np.ndarray:
    """The image as the featurizer makes it (self-concatenated to 60 s), cut to the recording's own columns."""
    signal, _ = self_concatenate(samples, min_samples=int(config.min_duration * config.sample_rate))
    own = config.width_for(samples.size / config.sample_rate)
    return multiscale_image(signal, config)[..., :own].astype(np.int16)


TRAIN_ARGS = dict(backbone="mobilenetv3_small_100", crop_seconds=3.0, validation_fraction=0.0, num_workers=2,
                  eval_every=10**6, checkpoint_every=10**6, log_every=50)


def _write_corpus(files: list[str], data: Path, encoding: str | None, out: Path, labels: dict[str, str]) -> None:
    """``files`` (relative to ``data/audio``) re-encoded into ``out/audio`` (``None``: WAV) with a labels.csv."""
    import soundfile

    rows = [["path", "label", "background"]]
    for rel in files:
        samples, rate = soundfile.read(data / "audio" / rel, dtype="float32")
        target = out / "audio" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if encoding is None:
            name = target.with_suffix(".wav")
            soundfile.write(name, samples, rate, subtype="PCM_16")
        else:
            kind = ENCODINGS[encoding][0]
            name = target.with_suffix(".mp3" if kind == "MP3" else "." + kind.lower())
            encode(samples, rate, encoding, name)
        rows.append([name.relative_to(out / "audio").as_posix(), labels[rel], ""])
    with open(out / "labels.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def _featurize(corpus: Path, store: Path, config: FeaturizerConfig) -> str:
    from soundception.featurize.pipeline import featurize_store

    summary = featurize_store(corpus / "audio", str(store), config=config, metadata=corpus / "labels.csv")
    assert summary.failed == 0, summary.failures
    return str(store)


def _train(store: str, out: Path) -> Path:
    from soundception.train.config import RunConfig, StageConfig
    from soundception.train.loop import train

    config = RunConfig(store=store, out=str(out), seed=0, **TRAIN_ARGS,
                       stage1=StageConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=5, train_backbone=False),
                       stage2=StageConfig(steps=200, batch_size=8, lr=2e-3, warmup_steps=10, train_backbone=True))
    return Path(train(config, progress=False)["checkpoint"])


def _scores(checkpoint: Path, store_url: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (files, classes), labels (files,)) of every done file, in store order."""
    import torch

    from soundception.train.checkpoint import load_checkpoint
    from soundception.train.config import RunConfig, crop_width_px
    from soundception.train.dataset import open_store, trainable_indices
    from soundception.train.inference import file_windows
    from soundception.train.model import build_model

    payload = load_checkpoint(checkpoint)
    store = open_store(store_url, None)
    assert store.classes == json.loads(payload["classes"]) and store.config_hash == payload["config_hash"]
    model = build_model(RunConfig.from_dict(json.loads(payload["run_config"])), len(store.classes))
    model.load_state_dict(payload["model"])
    indices = trainable_indices(store).tolist()
    width = crop_width_px(TRAIN_ARGS["crop_seconds"], store.config)
    scored = [s.recording_scores() for s in file_windows(model, store, indices, width=width,
                                                         device=torch.device("cpu"), attention=False)]
    return np.stack(scored), store.table["label"][indices].astype(np.int64)


def model_agreement(work: Path, encodings: list[str]) -> list[dict]:
    """Part B: rows of (rule, trained on, scored on): top-1, MAP, top-1 agreement with the WAVs."""
    from soundception.train.metrics import report

    info = make_dataset(work / "species", n_species=5, files_per_species=16, min_seconds=4, max_seconds=40,
                        sample_rate=SOURCE_RATE, seed=5, formats=("wav",))
    data = work / "species"
    labels = {rel: rel.split("/")[0] for rel in info["files"]}
    validation = [rel for k, rel in enumerate(info["files"]) if k % 4 == 3]
    training = [rel for rel in info["files"] if rel not in validation]
    trained_on = {"wav": None, "mp3 64 kbps CBR": "mp3 64 kbps CBR"}
    for name, encoding in {**trained_on, **{e: e for e in encodings}}.items():
        for role, files in (("train", training), ("validation", validation)):
            if role == "train" and name not in trained_on:
                continue
            _write_corpus(files, data, encoding, work / "corpora" / role / name.replace(" ", "-"), labels)
    rows = []
    for rule, config in RULES.items():
        tag = rule.replace(" ", "").replace("+", "")
        stores = {name: _featurize(work / "corpora" / "validation" / name.replace(" ", "-"),
                                   work / "stores" / f"{tag}-validation-{name.replace(' ', '-')}.zarr", config)
                  for name in ["wav", *encodings]}
        for name in trained_on:
            started = time.perf_counter()
            train_store = _featurize(work / "corpora" / "train" / name.replace(" ", "-"),
                                     work / "stores" / f"{tag}-train-{name.replace(' ', '-')}.zarr", config)
            checkpoint = _train(train_store, work / "runs" / f"{tag}-{name.replace(' ', '-')}")
            answers = {}
            for scored_on, store in stores.items():
                probabilities, truth = _scores(checkpoint, store)
                answers[scored_on] = probabilities.argmax(axis=1)
                metrics = report(probabilities, truth)
                rows.append({"rule": rule, "trained_on": name, "scored_on": scored_on, "top1": metrics["top1"],
                             "map": metrics["map"], "right": int((answers[scored_on] == truth).sum()),
                             "recordings": int(truth.size),
                             "agree_with_wav": int((answers[scored_on] == answers["wav"]).sum())})
            print(f"  {rule}, trained on {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def print_images(table: list[dict]) -> None:
    print("\nImage: mean |difference| from the WAV's image, grey levels, channel FFT 128 / 512 / 2048")
    print(f"{'encoding':24s} {'kbps':>5s}  {'rule':15s} {'mean over recordings':>22s}   worst recording")
    for row in table:
        mean, worst = "/".join(f"{v:.1f}" for v in row["mean"]), "/".join(f"{v:.1f}" for v in row["worst"])
        print(f"{row['encoding']:24s} {row['kbps']:5.0f}  {row['rule']:15s} {mean:>22s}   {worst} ({row['worst_recording']})")


def print_models(rows: list[dict]) -> None:
    print("\nModel: 20 validation recordings of 5 generated species; right = top-1 right, agree = same top-1 as on WAV")
    print(f"{'rule':15s} {'trained on':16s} {'scored on':24s} {'right':>6s} {'agree':>6s} {'MAP':>6s}")
    for row in rows:
        print(f"{row['rule']:15s} {row['trained_on']:16s} {row['scored_on']:24s} "
              f"{row['right']:>3d}/{row['recordings']:<2d} {row['agree_with_wav']:>3d}/{row['recordings']:<2d} "
              f"{row['map']:6.3f}")


@click.command()
@click.option("--real", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/data/real"),
              show_default=True, help="Folder with the real recordings (make bench fills it from the PyPI wheels).")
@click.option("--part", default="images,models", show_default=True, help="images, models or both.")
@click.option("--model-encodings", default="mp3 64 kbps CBR,mp3 default (VBR),ogg vorbis default,opus default,flac",
              show_default=True, help="Encodings the models are scored on (besides WAV), comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the results as JSON here.")
def main(real: Path, part: str, model_encodings: str, out: Path | None) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("soundception").setLevel(logging.ERROR)
    parts = set(part.split(","))
    if not real.is_dir():
        print(f"no real recordings in {real}: generated audio only (make bench downloads them)")
        real = None
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as folder:
        if "images" in parts:
            results["images"] = image_differences(real, Path(folder))
            print_images(results["images"])
        if "models" in parts:
            results["models"] = model_agreement(Path(folder), [e.strip() for e in model_encodings.split(",")])
            print_models(results["models"])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
