"""Prediction speed and memory: audio predicted per second, time outside the forward pass, a 10-hour peak.

    python bench/predict.py [--hours 10] [--backbone mobilenetv3_small_050] [--keep DIR]

1. A store of 12 generated recordings (20-60 s, the default featurizer config) and a checkpoint of
   ``--backbone`` trained two steps on it (the weights do not matter for speed).
2. ``predict_store`` over it in recording and in 5 s segment mode, with 0 and 2 loader workers:
   seconds of audio per wall second, and the share of wall time spent outside the model's forward
   pass (reading windows, softmax, localisation, journal and tables). Target: at most 15 % on CPU.
3. A ``--hours``-long soundscape (a featurized minute tiled to that length in a store of its own,
   6.4 GB of image for 10 h), predicted in a fresh process in 5 s segment mode with windows one
   window apart: its peak resident memory above the process's baseline (the model loaded, the store
   open). Target: at most about 1.5 GB.
4. On CUDA only: bf16 windows per second of the full ``inception_v4`` at 299 x 2,990.

Prints a table; nothing is asserted (see the README's performance table).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from soundception.featurize import store as store_io
from soundception.featurize.pipeline import featurize_store
from soundception.featurize.synthetic import make_dataset
from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig
from soundception.shared.reader import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(work: Path, backbone: str) -> tuple[str, Path]:
    """A store of generated recordings and a two-step checkpoint trained on it."""
    from soundception.train.augment import AugmentConfig
    from soundception.train.config import RunConfig, StageConfig
    from soundception.train.loop import train

    data = make_dataset(work / "data", n_species=5, files_per_species=3, min_seconds=20, max_seconds=60, seed=7)
    store = str(work / "bench.zarr")
    featurize_store(data["paths"]["audio"], store, config=FeaturizerConfig(), metadata=data["paths"]["labels"],
                    labels="csv")
    run = RunConfig(store=store, out=str(work / "run"), backbone=backbone, crop_seconds=15.0, validation_fraction=0.0,
                    augment=AugmentConfig.from_spec("none"), num_workers=0, eval_every=0, checkpoint_every=0,
                    stage1=StageConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=False),
                    stage2=StageConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, train_backbone=True))
    return store, Path(train(run, progress=False)["checkpoint"])


def timed_predict(checkpoint: Path, store: str, out: Path, **options) -> dict[str, float]:
    """Wall time of ``predict_store`` and the part of it inside the model's forward pass."""
    import torch

    from soundception.train.predict import PredictOptions, predict_store
    from soundception.train.trained import load_trained_model

    torch.set_num_threads(2)
    trained = load_trained_model(checkpoint, "cpu")
    forward = trained.model.forward
    inside = [0.0]

    def timed(images):
        started = time.perf_counter()
        try:
            return forward(images)
        finally:
            inside[0] += time.perf_counter() - started

    trained.model.forward = timed
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    predict_store(checkpoint, store, out, PredictOptions(device="cpu", **options), trained=trained, progress=False)
    wall = time.perf_counter() - started
    audio = float(np.sum(FeatureStore(store).table["duration"]))
    return {"wall": wall, "forward": inside[0], "audio_per_s": audio / wall, "outside": 1 - inside[0] / wall}


def tile_long_store(source: str, target: str, hours: float) -> float:
    """A store holding one recording of ``hours`` made by tiling ``source``'s first image; its duration, s."""
    small = FeatureStore(source)
    config = small.config
    piece = small.image(0)
    width = config.width_for(hours * 3600)
    group = store_io.open_for_writing(target, config)
    store_io.register_files(group, [{"id": "soundscape.wav", "path": "soundscape.wav", "label": -1,
                                     "background": ""}])
    store_io.ensure_width(group, width, config)

    def blocks(chunk: int):
        for start in range(0, width, chunk):
            columns = np.arange(start, min(start + chunk, width)) % piece.shape[-1]
            yield start, piece[:, :, columns]

    store_io.write_image(target, 0, width, blocks)
    duration = width / config.pixels_per_second
    store_io.write_fields(group, {0: {"status": schema.DONE, "n_frames": width, "duration": duration}})
    store_io.consolidate(group)
    return duration


LONG_RUN = """
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from soundception.train.predict import PredictOptions, predict_store
from soundception.train.trained import load_trained_model
from soundception.shared.reader import FeatureStore

checkpoint, store, out = sys.argv[1:4]
trained = load_trained_model(checkpoint, "cpu")
FeatureStore(store).table
baseline = int(open("/proc/self/statm").read().split()[1]) * 4096
started = time.perf_counter()
options = PredictOptions(device="cpu", segment_seconds=5.0, hop_seconds=trained.crop_seconds, formats=("csv", "raven"))
predict_store(checkpoint, store, out, options, trained=trained, progress=False)
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"baseline": baseline, "peak": peak, "wall": wall}))
"""


def long_recording(checkpoint: Path, store: str, work: Path, hours: float) -> dict[str, float]:
    long_store = str(work / "long.zarr")
    started = time.perf_counter()
    duration = tile_long_store(store, long_store, hours)
    built = time.perf_counter() - started
    result = subprocess.run([sys.executable, "-c", LONG_RUN, str(checkpoint), long_store, str(work / "long-out")],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    shutil.rmtree(long_store, ignore_errors=True)
    return {"duration": duration, "built": built, **figures}


def cuda_throughput() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device here: not measured"
    from soundception.train.model import Soundception

    model = Soundception("inception_v4", 1500).cuda().eval().to(memory_format=torch.channels_last)
    batch = torch.rand(32, 3, 299, 2990, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(batch)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            model(batch)
        torch.cuda.synchronize()
    rate = 320 / (time.perf_counter() - started)
    return f"{torch.cuda.get_device_name()}: {rate:.0f} windows/s = {rate * 15 / 3600:.1f} audio-h/s at hop 15 s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--backbone", default="mobilenetv3_small_050")
    parser.add_argument("--keep", default=None, help="Work in this folder and keep it.")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    store, checkpoint = make_checkpoint(work, args.backbone)
    audio = float(np.sum(FeatureStore(store).table["duration"]))
    print(f"\n{len(FeatureStore(store).ids)} recordings, {audio / 60:.1f} min of audio, backbone {args.backbone}, "
          f"15 s windows, batch 8, CPU 2 threads\n")
    print("| mode | loader workers | wall s | in forward s | audio s per s | outside forward |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, options in (("recording, hop 7.5 s", {}), ("5 s segments, hop 7.5 s", {"segment_seconds": 5.0})):
        for workers in (0, 2):
            r = timed_predict(checkpoint, store, work / "out", workers=workers, **options)
            print(f"| {label} | {workers} | {r['wall']:.2f} | {r['forward']:.2f} | {r['audio_per_s']:.1f} | "
                  f"{100 * r['outside']:.1f} % |")
    long = long_recording(checkpoint, store, work, args.hours)
    print(f"\n{long['duration'] / 3600:.1f} h soundscape (tiled store built in {long['built']:.0f} s), 5 s segments, "
          f"hop 15 s: predicted in {long['wall']:.0f} s ({long['duration'] / long['wall']:.0f} audio s per s); "
          f"peak RSS {long['peak'] / 2**30:.2f} GiB, baseline {long['baseline'] / 2**30:.2f} GiB, "
          f"peak above baseline {(long['peak'] - long['baseline']) / 2**30:.2f} GiB")
    print(f"CUDA bf16, inception_v4, batch 32: {cuda_throughput()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
