"""End-to-end featurization speed (decode -> store), Soundception versus a plain reference.

Both run in one process on the same generated corpus (44.1 kHz mono wav, so both resample),
timed in CPU seconds of every thread of the process (``time.process_time``), then Soundception
runs on a dask LocalCluster with 1 and 2 single-threaded workers to show scaling (wall time).
Finally a long recording checks that memory stays bounded (peak RSS growth while featurizing).

The reference is what one would write without this project: ``librosa.load`` (resampling),
self-concatenation, ``librosa.stft`` x 3 + ``amplitude_to_db``, percentile clipping,
``scipy.ndimage.zoom`` (order 1) and one plain zarr array written per file.

    python bench/featurize.py [--files 16] [--seconds 60] [--long-minutes 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and "featurize" would name this file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from shared.config import FeaturizerConfig  # noqa: E402

SOURCE_RATE = 44100


def make_corpus(root: Path, files: int, seconds: float) -> float:
    rng = np.random.default_rng(0)
    total = 0.0
    for k in range(files):
        duration = seconds * (0.5 + k % 3 * 0.5)  # 0.5x, 1x, 1.5x: some self-concatenated
        n = int(duration * SOURCE_RATE)
        t = np.arange(n) / SOURCE_RATE
        calls = np.sin(2 * np.pi * (2000 + 500 * k % 3000) * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.6)
        signal = 0.05 * rng.standard_normal(n) + 0.3 * calls
        soundfile.write(str(root / f"rec{k:03d}.wav"), signal.astype(np.float32), SOURCE_RATE, subtype="PCM_16")
        total += duration
    return total


def reference_featurize(paths: list[Path], store: Path, config: FeaturizerConfig) -> None:
    import librosa
    import scipy.ndimage
    import zarr

    group = zarr.open_group(str(store), mode="w")
    for k, path in enumerate(paths):
        y, _ = librosa.load(str(path), sr=config.sample_rate, mono=True)
        while y.size < config.min_duration * config.sample_rate:
            y = np.concatenate([y, y])
        width = config.width_for(y.size / config.sample_rate)
        channels = []
        for n_fft in config.fft_windows:
            db = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=n_fft, hop_length=config.hop_length)))
            low, high = np.percentile(db, config.clip_percentiles)
            db = np.clip(db, low, high)[::-1]
            zoomed = scipy.ndimage.zoom(db, (config.image_height / db.shape[0], width / db.shape[1]), order=1)
            channels.append(np.round((zoomed - low) / (high - low + 1e-9) * 255).astype(np.uint8))
        group.create_array(f"img{k}", data=np.stack(channels))


def cpu_run(function, *args) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def dask_run(audio: Path, store: Path, workers: int, *, dask_malloc: bool = False) -> tuple[float, float]:
    """CPU seconds (all workers) and wall seconds on a LocalCluster of ``workers`` processes.

    ``dask_malloc`` keeps dask's own MALLOC_TRIM_THRESHOLD_ in the workers (to show its cost).
    """
    from distributed import Client, LocalCluster

    from featurize.pipeline import featurize_store, local_client

    if dask_malloc:
        saved = dict(os.environ)  # dask's nannies leave their variables in this process's environment
        client = Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
        os.environ.clear()
        os.environ.update(saved)
    else:
        client = local_client(workers, dashboard_address=None)
    with client.cluster, client:
        client.run(lambda: __import__("featurize.pipeline") and __import__("scipy.signal"))  # steady state
        before = sum(client.run(time.process_time).values())
        wall = time.perf_counter()
        summary = featurize_store(audio, str(store), labels="none", client=client)
        wall = time.perf_counter() - wall
        cpu = sum(client.run(time.process_time).values()) - before
    assert summary.failed == 0
    return cpu, wall


# VmHWM (peak resident set of this process image) rather than ru_maxrss, which a child
# inherits from the parent that forked it
LONG_FILE_PROBE = """
import re, sys
from featurize.pipeline import featurize_store
import featurize.image, featurize.store, zarr, scipy.fft, soxr
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
before = peak()
summary = featurize_store(sys.argv[1], sys.argv[2], labels="none")
assert summary.done == 1, summary.failures
print(peak() - before)
"""


def long_file_memory(root: Path, minutes: float) -> tuple[float, float, float, float]:
    """Peak RSS growth (MB) featurizing one long file in a fresh process, and sizes for scale.

    Returns ``(peak_mb, signal_mb, spectrogram_mb, image_mb)``: the resampled float32 signal
    (held whole), the float32 spectrograms and the uint8 image (both never held whole).
    """
    audio = root / "long"
    audio.mkdir()
    n = int(minutes * 60 * SOURCE_RATE)
    with soundfile.SoundFile(str(audio / "long.wav"), "w", SOURCE_RATE, 1, subtype="PCM_16") as out:
        rng = np.random.default_rng(1)
        for start in range(0, n, SOURCE_RATE * 60):
            out.write((0.05 * rng.standard_normal(min(SOURCE_RATE * 60, n - start))).astype(np.float32))
    config = FeaturizerConfig()
    frames = minutes * 60 * config.sample_rate / config.hop_length
    spectrogram_mb = frames * sum(w // 2 + 1 for w in config.fft_windows) * 4 / 1e6
    image_mb = 3 * config.image_height * config.width_for(minutes * 60) / 1e6
    signal_mb = minutes * 60 * config.sample_rate * 4 / 1e6
    result = subprocess.run([sys.executable, "-c", LONG_FILE_PROBE, str(audio), str(root / "long.zarr")],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1]), signal_mb, spectrogram_mb, image_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--long-minutes", type=float, default=30.0)
    args = parser.parse_args()
    from featurize.pipeline import featurize_store

    config = FeaturizerConfig()
    root = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    try:
        audio = root / "audio"
        audio.mkdir()
        seconds = make_corpus(audio, args.files, args.seconds)
        paths = sorted(audio.glob("*.wav"))
        reference_featurize(paths[:1], root / "warm.zarr", config)  # imports, caches
        featurize_store(audio, str(root / "warm2.zarr"), labels="none")
        ref_cpu, ref_wall = cpu_run(reference_featurize, paths, root / "reference.zarr", config)
        ours_cpu, ours_wall = cpu_run(lambda: featurize_store(audio, str(root / "serial.zarr"), labels="none"))
        one_cpu, one_wall = dask_run(audio, root / "dask1.zarr", 1)
        two_cpu, two_wall = dask_run(audio, root / "dask2.zarr", 2)
        trim_cpu, trim_wall = dask_run(audio, root / "dask-trim.zarr", 1, dask_malloc=True)
        peak, signal_mb, spectrogram_mb, image_mb = long_file_memory(root, args.long_minutes)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n## featurize: {args.files} recordings, {seconds / 60:.1f} min of 44.1 kHz audio ({machine})\n")
    print("| run | CPU s | wall s | audio s per CPU s | vs reference |")
    print("|---|---|---|---|---|")
    ref_rate = seconds / ref_cpu
    for name, cpu, wall in (("reference (librosa + zoom + zarr), serial", ref_cpu, ref_wall),
                            ("soundception, serial", ours_cpu, ours_wall),
                            ("soundception, dask 1 worker", one_cpu, one_wall),
                            ("soundception, dask 2 workers", two_cpu, two_wall),
                            ("soundception, dask 1 worker, dask's MALLOC_TRIM_THRESHOLD_", trim_cpu, trim_wall)):
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {seconds / cpu:.0f} | {seconds / cpu / ref_rate:.1f}x |")
    print(f"\nscaling 1 -> 2 workers (wall): {one_wall / two_wall:.2f}x (ideal 2.00x)")
    print(f"long recording, {args.long_minutes:g} min, fresh process: peak RSS growth {peak:.0f} MB "
          f"(its resampled signal, held whole: {signal_mb:.0f} MB; its float32 spectrograms, never held "
          f"whole: {spectrogram_mb:.0f} MB; its uint8 image, written chunk by chunk: {image_mb:.0f} MB)")


if __name__ == "__main__":
    main()
