"""Peak memory of featurizing one long recording, with the decoded signal in memory or on disk.

    python bench/long_recording.py --hours 1 10 [--format wav|flac] [--baseline REV]

For each length a recording is generated in a temporary folder (noise plus a rising chirp every
2 s, 16-bit, 22,050 Hz; 10 h of WAV is 1.6 GB) and featurized serially into a new local store
(``featurize_store``, default config), each run in a fresh Python process whose peak resident set
size (``ru_maxrss``) is reported together with its RSS after the imports and its wall time.
Modes: ``in memory`` (``DISK_SIGNAL_SECONDS`` set to infinity), ``disk`` (the default threshold,
10 min) and, with ``--baseline REV``, the featurizer as it was at git revision ``REV`` (extracted
with ``git archive`` into a temporary folder). Everything generated is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 22050
BLOCK_SECONDS = 60


def write_recording(path: Path, hours: float, *, seed: int = 0) -> None:
    """Noise (0.05 rms) plus a 0.3 s chirp from 2 to 6 kHz every 2 s, written a minute at a time."""
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = (0.3 * np.sin(2 * np.pi * (2000 * t + 4000 / 0.6 * t**2))).astype(np.float32)
    block = BLOCK_SECONDS * SAMPLE_RATE
    with soundfile.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        for _ in range(round(hours * 3600 / BLOCK_SECONDS)):
            samples = (0.05 * rng.standard_normal(block)).astype(np.float32)
            for start in range(0, block - chirp.size, 2 * SAMPLE_RATE):
                samples[start : start + chirp.size] += chirp
            out.write(samples)


def child(folder: str, store: str, disk_seconds: float | None) -> None:
    """Featurize ``folder`` into ``store`` in this process (``disk_seconds``: the threshold, None
    for the default); print one JSON line."""
    import soundception.featurize.audio as audio_module
    from soundception.featurize.pipeline import featurize_store

    if disk_seconds is not None:
        audio_module.DISK_SIGNAL_SECONDS = disk_seconds
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    summary = featurize_store(folder, store, labels="none")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "imports_mib": imported, "seconds": time.perf_counter() - started,
                      "done": summary.done, "failures": summary.failures}))


def measure(code: Path, folder: Path, store: Path, disk_seconds: float | None) -> dict:
    # the tree at ``code`` (this checkout or a baseline's worktree), whatever is installed: its
    # featurize/ is found beside its soundception/ before the installed mapping is asked
    script = (f"import sys; sys.path.insert(0, {str(code)!r}); sys.path.insert(1, {str(REPOSITORY / 'bench')!r})\n"
              f"import soundception; soundception.__path__.append({str(code)!r})\n"
              f"import long_recording; long_recording.child({str(folder)!r}, {str(store)!r}, "
              f"{'None' if disk_seconds is None else f'float({str(disk_seconds)!r})'})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=code, check=False)
    if result.returncode:
        raise SystemExit(f"featurizing failed:\n{result.stderr}")
    shutil.rmtree(store, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--format", choices=("wav", "flac"), default="wav")
    parser.add_argument("--baseline", help="git revision whose featurizer to measure too")
    parser.add_argument("--modes", nargs="+", default=["in memory", "disk"], choices=("in memory", "disk"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="long-recording-"))
    try:
        codes = []
        if args.baseline:
            baseline = work / "baseline"
            baseline.mkdir()
            archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", args.baseline, "featurize", "shared"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
            codes.append((f"at {args.baseline[:10]}", baseline, float("inf")))
        modes = {"in memory": float("inf"), "disk": None}
        for mode in args.modes:
            codes.append((mode, REPOSITORY, modes[mode]))
        print(f"{'hours':>6} {'code / signal':>22} {'peak RSS MiB':>13} {'after imports':>14} {'seconds':>8}")
        for hours in args.hours:
            folder = work / f"audio-{hours:g}h"
            folder.mkdir()
            write_recording(folder / f"long.{args.format}", hours)
            for name, code, disk_seconds in codes:
                row = measure(code, folder, work / "store.zarr", disk_seconds)
                assert row["done"] == 1, row["failures"]
                print(f"{hours:6g} {name:>22} {row['peak_mib']:13.0f} {row['imports_mib']:14.0f} {row['seconds']:8.1f}",
                      flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
