"""End-to-end featurization speed (decode -> store), Soundception versus a plain reference.

Both run in one process on the same generated corpus (44.1 kHz mono wav, so both resample),
timed in CPU seconds of every thread of the process (``time.process_time``). Soundception also
runs on dask LocalClusters of 1 and 2 single-threaded workers (CPU of all the cluster's workers; the
driver's own CPU is not counted, as on a real cluster it runs elsewhere). Every row runs once per
round, rounds are interleaved (``--repeats``), and each row keeps its least CPU time: load from
elsewhere on the machine only ever adds time, and on a shared 2-core VM the same code's runs
spread by up to 2x, in spells that a round's rows share.
Finally a long recording checks that memory stays bounded (peak RSS growth while featurizing).

The reference is what one would write without this project, computing the same image: ``librosa.load``
(resampling), self-concatenation by whole copies, ``librosa.stft`` at each window's hop +
``power_to_db`` (no ``top_db``), the same max-pooling of bins into rows and frames into columns
(``np.maximum.reduceat``) or linear interpolation where a window's hop is longer than a column,
percentile clipping over the rows that hold sound (the project's empty-band rule, over every column)
and one plain zarr array written per file. Its images equal ours to within one grey level except
where the clip bounds differ (ours come from at most 1,024 sampled columns).

Two more serial rows put numbers on choices: the same pipeline with librosa's ``stft`` and
``power_to_db`` in place of the hand-written core (fed block by block), and the image as it was
before per-window hops (one hop of 110 samples, bilinear resizes), to show the cost of the change.

    python bench/featurize.py [--files 12] [--seconds 60] [--long-minutes 30]
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
import warnings
from pathlib import Path


import numpy as np
import soundfile

from soundception.shared.config import FeaturizerConfig

SOURCE_RATE = 44100
# the image before per-window hops: one 110-sample hop for every window, bilinear resizes
BEFORE = FeaturizerConfig(hop_lengths=(110, 110, 110), time_resize="bilinear", frequency_resize="bilinear")


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


def _row_bands(bins: int, height: int) -> np.ndarray:
    """First bin of each row (ascending): bins within half a row spacing of the row's frequency."""
    scale = (bins - 1) / (height - 1)
    return np.clip(np.ceil((np.arange(height) - 0.5) * scale), 0, bins - 1).astype(int)


def recorded_rows(image: np.ndarray, empty_band_db: float) -> np.ndarray:
    """bool (rows,): rows left in the clip percentiles, from every column (the project reads 1,024).

    A row whose median sits more than ``empty_band_db`` under the 90th percentile of the row
    medians is empty.
    """
    medians = np.median(image, axis=1)
    return medians >= np.percentile(medians, 90) - empty_band_db


def reference_featurize(paths: list[Path], store: Path, config: FeaturizerConfig) -> None:
    import librosa
    import zarr

    group = zarr.open_group(str(store), mode="w")
    column = config.sample_rate / config.pixels_per_second  # samples per column
    height = config.image_height
    for k, path in enumerate(paths):
        y, _ = librosa.load(str(path), sr=config.sample_rate, mono=True)
        y = np.tile(y, int(np.ceil(config.min_duration * config.sample_rate / y.size)) or 1)
        width = config.width_for(y.size / config.sample_rate)
        channels = []
        for n_fft, hop in zip(config.fft_windows, config.hop_lengths):
            db = librosa.power_to_db(np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, pad_mode="constant")) ** 2,
                                     top_db=None)  # (bins, frames)
            pooled = hop <= column  # reductions first: the loudest frame centred in each column, bin by bin
            if pooled:
                starts = np.ceil(np.arange(width) * column / hop).astype(int).clip(0, db.shape[1] - 1)
                db = np.maximum.reduceat(db, starts, axis=1)
            if db.shape[0] > height:  # the loudest bin within half a row spacing of each row
                image = np.maximum.reduceat(db, _row_bands(db.shape[0], height), axis=0)
            else:
                positions = np.arange(height) * (db.shape[0] - 1) / (height - 1)
                image = np.stack([np.interp(positions, np.arange(db.shape[0]), frame) for frame in db.T], axis=1)
            image = image[::-1]
            if not pooled:  # expansions last: interpolate at each column's centre
                positions = (np.arange(width) + 0.5) * column / hop
                image = np.stack([np.interp(positions, np.arange(image.shape[1]), row) for row in image])
            background, ceiling = np.percentile(image[recorded_rows(image, config.empty_band_db)],
                                                [config.background_percentile, config.ceiling_percentile])
            low = max(background + config.floor_db, ceiling - config.dynamic_range_db[1])  # the documented rule
            high = max(ceiling, low + config.dynamic_range_db[0])
            channels.append(np.round((np.clip(image, low, high) - low) / (high - low + 1e-9) * 255).astype(np.uint8))
        group.create_array(f"img{k}", data=np.stack(channels))


def _librosa_magnitude(frames: np.ndarray, *, window: str = "hann") -> np.ndarray:
    """``featurize.spectrogram.magnitude`` done by ``librosa.stft`` on the same frames."""
    import librosa

    n_fft = frames.shape[1]
    if frames.base is not None and frames.strides[1] == 4 and frames.strides[0] < 4 * n_fft:
        hop = frames.strides[0] // 4  # a strided view of consecutive frames: hand librosa the samples
        segment = np.lib.stride_tricks.as_strided(frames, (hop * (len(frames) - 1) + n_fft,), (4,))
        return np.abs(librosa.stft(segment, n_fft=n_fft, hop_length=hop, window=window, center=False)).T
    # gathered frames: one librosa call on the batch of frames
    spectrum = librosa.stft(np.ascontiguousarray(frames), n_fft=n_fft, hop_length=n_fft, window=window, center=False)
    return np.abs(spectrum[..., 0])


def _librosa_decibels(values: np.ndarray, *, amin: float = 1e-10) -> np.ndarray:
    import librosa

    return librosa.power_to_db(values**2, ref=1.0, amin=amin, top_db=None)


def install_librosa_core() -> tuple:
    """Make the featurizer use librosa's ``stft`` and ``power_to_db``; returns what it replaced."""
    import soundception.featurize.image as image

    saved = image.magnitude, image.to_decibels
    image.magnitude, image.to_decibels = _librosa_magnitude, _librosa_decibels
    return saved


def librosa_core():
    """Context: the project's pipeline with librosa's ``stft`` and ``power_to_db`` as its core."""
    import contextlib

    import soundception.featurize.image as image

    @contextlib.contextmanager
    def patched():
        saved = install_librosa_core()
        try:
            yield
        finally:
            image.magnitude, image.to_decibels = saved

    return patched()


def cold_run(audio: Path, store: Path, *, librosa: bool = False) -> float:
    """Wall seconds from starting a 2-worker local cluster to the last file stored (start-up included)."""
    from soundception.featurize.cluster import local_client
    from soundception.featurize.pipeline import featurize_store

    wall = time.perf_counter()
    client = local_client(2, dashboard_address=None)
    with client.cluster, client:
        if librosa:
            client.run(install_librosa_core)
        summary = featurize_store(audio, str(store), labels="none", client=client)
    assert summary.failed == 0
    return time.perf_counter() - wall


def image_agreement(root: Path, files: int) -> tuple[float, float]:
    """Share of pixels within one grey level: reference vs ours, and librosa core vs ours."""
    import zarr

    from soundception.shared.reader import FeatureStore

    ours, lib = FeatureStore(str(root / "serial.zarr")), FeatureStore(str(root / "librosa.zarr"))
    reference = zarr.open_group(str(root / "reference.zarr"), mode="r")
    close_ref = close_lib = total = 0
    ours_ids, lib_ids = list(ours.ids), list(lib.ids)
    for k in range(files):  # the reference wrote the sorted paths as img0, img1, ...
        file_id = f"rec{k:03d}.wav"
        mine = ours.image(ours_ids.index(file_id)).astype(int)
        close_ref += (np.abs(mine - reference[f"img{k}"][...].astype(int)) <= 1).sum()
        close_lib += (np.abs(mine - lib.image(lib_ids.index(file_id)).astype(int)) <= 1).sum()
        total += mine.size
    return close_ref / total, close_lib / total


def librosa_featurize(audio: Path, store: Path) -> None:
    """The project's pipeline with librosa's ``stft`` and ``power_to_db`` as its core."""
    from soundception.featurize.pipeline import featurize_store

    with librosa_core():
        featurize_store(audio, str(store), labels="none")


def cpu_run(function, *args, **kwargs) -> tuple[float, float]:
    """CPU seconds (every thread of this process) and wall seconds of ``function(*args, **kwargs)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args, **kwargs)
    return time.process_time() - cpu, time.perf_counter() - wall


def open_cluster(workers: int, *, dask_malloc: bool = False):
    """A LocalCluster client of ``workers`` single-threaded processes, its imports done (steady state).

    ``dask_malloc`` keeps dask's own MALLOC_TRIM_THRESHOLD_ in the workers (to show its cost).
    """
    from distributed import Client, LocalCluster

    from soundception.featurize.cluster import local_client, prepare_worker

    warnings.filterwarnings("ignore", message="Port .* is already in use")  # three clusters at once
    if dask_malloc:
        saved = dict(os.environ)  # dask's nannies leave their variables in this process's environment
        client = Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
        os.environ.clear()
        os.environ.update(saved)
    else:
        client = local_client(workers, dashboard_address=None)
    client.run(prepare_worker)
    return client


def dask_run(client, audio: Path, store: Path) -> tuple[float, float]:
    """CPU seconds (all the cluster's workers) and wall seconds of one run on ``client``'s cluster."""
    from soundception.featurize.pipeline import featurize_store

    before = sum(client.run(time.process_time).values())
    wall = time.perf_counter()
    summary = featurize_store(audio, str(store), labels="none", client=client)
    wall = time.perf_counter() - wall
    assert summary.failed == 0
    return sum(client.run(time.process_time).values()) - before, wall


# VmHWM (peak resident set of this process image) rather than ru_maxrss, which a child
# inherits from the parent that forked it
LONG_FILE_PROBE = """
import re, sys
from soundception.featurize.pipeline import featurize_store
import soundception.featurize.image, soundception.featurize.store, zarr, scipy.fft, soxr
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
    spectrogram_mb = sum(minutes * 60 * config.sample_rate / hop * (w // 2 + 1) * 4 / 1e6
                         for w, hop in zip(config.fft_windows, config.hop_lengths))
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
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timed runs of every row (the least CPU kept)")
    args = parser.parse_args()
    from soundception.featurize.pipeline import featurize_store

    config = FeaturizerConfig()
    root = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    try:
        audio = root / "audio"
        audio.mkdir()
        seconds = make_corpus(audio, args.files, args.seconds)
        paths = sorted(audio.glob("*.wav"))
        reference_featurize(paths[:1], root / "warm.zarr", config)  # imports, caches
        featurize_store(audio, str(root / "warm2.zarr"), labels="none")
        clusters = {"dask1": open_cluster(1), "dask2": open_cluster(2), "trim": open_cluster(1, dask_malloc=True)}
        runs = {  # name -> run writing the store it is given
            "reference": lambda store: cpu_run(reference_featurize, paths, store, config),
            "serial": lambda store: cpu_run(featurize_store, audio, str(store), labels="none"),
            "librosa": lambda store: cpu_run(librosa_featurize, audio, store),
            "old": lambda store: cpu_run(featurize_store, audio, str(store), labels="none", config=BEFORE),
            **{name: (lambda store, client=client: dask_run(client, audio, store)) for name, client in clusters.items()},
        }
        for client in clusters.values():  # each cluster's first run warms its workers
            dask_run(client, audio, root / "warm-dask.zarr")
            shutil.rmtree(root / "warm-dask.zarr")
        timings = {name: [] for name in runs}
        # rounds of every row, interleaved: a busy spell on the machine slows the rows of its round
        # alike, and each row keeps its least CPU time
        for k in range(args.repeats):
            for name, run in runs.items():
                store = root / f"{name}.zarr" if k == 0 else root / f"{name}{k}.zarr"
                timings[name].append(run(store))
                if k:
                    shutil.rmtree(store)
        for client in reversed(clusters.values()):  # last opened first: each restores the log level it found
            client.close()
            client.cluster.close()
        (ref_cpu, ref_wall), (ours_cpu, ours_wall), (lib_cpu, lib_wall), (old_cpu, old_wall), \
            (one_cpu, one_wall), (two_cpu, two_wall), (trim_cpu, trim_wall) = (min(timings[name]) for name in runs)
        agreement = image_agreement(root, len(paths))
        cold = [cold_run(audio, root / f"cold{k}.zarr", librosa=k % 2 == 1) for k in range(4)]  # alternating
        peak, signal_mb, spectrogram_mb, image_mb = long_file_memory(root, args.long_minutes)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n## featurize: {args.files} recordings, {seconds / 60:.1f} min of 44.1 kHz audio ({machine})\n")
    print("| run | CPU s | wall s | audio s per CPU s | vs reference |")
    print("|---|---|---|---|---|")
    ref_rate = seconds / ref_cpu
    rows = (("reference (librosa + numpy + zarr), serial", ref_cpu, ref_wall),
            ("soundception, serial", ours_cpu, ours_wall),
            ("soundception with librosa's stft + power_to_db core, serial", lib_cpu, lib_wall),
            ("soundception, serial, image as before (hop 110, bilinear)", old_cpu, old_wall),
            ("soundception, dask 1 worker", one_cpu, one_wall),
            ("soundception, dask 2 workers", two_cpu, two_wall),
            ("soundception, dask 1 worker, dask's MALLOC_TRIM_THRESHOLD_", trim_cpu, trim_wall))
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {seconds / cpu:.0f} | {seconds / cpu / ref_rate:.1f}x |")
    print(f"\nhand-written core vs librosa core, end to end: {lib_cpu / ours_cpu:.2f}x; "
          f"per-window hops and max pooling vs the image before: {ours_cpu / old_cpu:.2f}x the CPU")
    hand_cold, librosa_cold = min(cold[0::2]), min(cold[1::2])
    print(f"cold start to last file stored, 2-worker local cluster (best of 2): hand-written core {hand_cold:.2f} s, "
          f"librosa core {librosa_cold:.2f} s ({librosa_cold / hand_cold:.2f}x)")
    print(f"pixels within one grey level of ours: reference {agreement[0]:.1%}, librosa core {agreement[1]:.1%}")
    print(f"\nscaling 1 -> 2 workers (wall): {one_wall / two_wall:.2f}x (ideal 2.00x)")
    print(f"long recording, {args.long_minutes:g} min, fresh process: peak RSS growth {peak:.0f} MB "
          f"(its resampled signal, held whole: {signal_mb:.0f} MB; its float32 spectrograms, never held "
          f"whole: {spectrogram_mb:.0f} MB; its uint8 image, written chunk by chunk: {image_mb:.0f} MB)")


if __name__ == "__main__":
    main()
