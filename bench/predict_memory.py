"""Peak memory of predict's journal-to-tables step for many recordings against few (runs on CPU).

    .venv/bin/python bench/predict_memory.py [--sizes 200 20000] [--classes 100] [--segments 12]

Predicting 20,000 recordings with a model takes hours on 2 cores, so the step is built directly
from a synthetic journal: one entry per recording, as ``predict`` writes it (``--segments`` 5 s
segments of ``--classes`` seeded scores each, a 60 s recording by default). Each size runs in a
fresh process that imports the code, then writes the tables as ``predict_store`` does at the end
of a run (5 s segments, top 5, CSV and one Raven table per recording); its peak resident memory
above the process's baseline is the figure. The model is not loaded: the table writers need only
its class list and sample rate, given by a stand-in.

Old code (before the tables streamed) held every recording's answers until the end; run against
a checkout of it (``PYTHONPATH`` pointing at a ``soundception`` package made from it), this script
holds them the same way: it reads every entry into a list, then writes the tables from the list.

Prints a table; nothing is asserted (see docs/predict.md).
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

SEGMENT_SECONDS = 5.0


def journal_api() -> tuple[str, object, object, object]:
    """``(code, Prediction, write_journal, read_journal)``: ``new`` where ``write_tables`` reads the journal."""
    import inspect

    from soundception.train import predict

    if "entries" in inspect.signature(predict.write_tables).parameters:
        from soundception.train.journal import Prediction, read_journal, write_journal

        return "new", Prediction, write_journal, read_journal
    # the code before the tables streamed kept the journal in train.predict
    return "old", predict.Prediction, predict.write_journal, predict.read_journal


def make_journal(out: Path, n: int, n_classes: int, n_segments: int) -> dict[str, str]:
    """``n`` seeded journal entries; returns file id -> key."""
    _, prediction, write_journal, _ = journal_api()
    rng = np.random.default_rng(0)
    starts = np.arange(n_segments, dtype=np.float64) * SEGMENT_SECONDS
    bounds = np.stack([starts, starts + SEGMENT_SECONDS], 1)
    entries = {}
    for i in range(n):
        file_id = f"site{i % 50:02d}/rec{i:06d}.wav"
        scores = rng.dirichlet(np.ones(n_classes), n_segments).astype(np.float32)
        write_journal(out, f"key {i}", prediction(
            file=file_id, duration=n_segments * SEGMENT_SECONDS, path=f"/audio/{file_id}", scores=scores.mean(0),
            segments=bounds, segment_scores=scores, bands=np.tile([150.0, 11025.0], (n_segments, 1))))
        entries[file_id] = f"key {i}"
    return entries


def resident_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(out: Path, n_classes: int) -> None:
    """Write the tables for the journal in ``out`` and print ``{"peak_mib", "seconds"}`` as JSON."""
    from types import SimpleNamespace

    from soundception.shared.config import FeaturizerConfig
    from soundception.train.predict import PredictOptions, write_tables

    code, _, _, read_journal = journal_api()
    entries = json.loads((out / "entries.json").read_text())
    trained = SimpleNamespace(classes=[f"sp{c:04d}" for c in range(n_classes)],
                              class_names=[f"species {c}" for c in range(n_classes)],
                              featurizer_config=FeaturizerConfig())
    options = PredictOptions(segment_seconds=SEGMENT_SECONDS, top_k=5, formats=("csv", "raven"), device="cpu")
    baseline, started = resident_kib("VmRSS"), time.perf_counter()
    if code == "new":
        write_tables(out, entries, trained, options)
    else:  # as the old predict_store: every recording's answers in memory, then the tables
        write_tables(out, [read_journal(out, f, k) for f, k in entries.items()], trained, options)
    print(json.dumps({"code": code, "peak_mib": (resident_kib("VmHWM") - baseline) / 1024,
                      "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 20000])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--segments", type=int, default=12, help="5 s segments per recording")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child), args.classes)
    work = Path(tempfile.mkdtemp(prefix="predict-memory-"))
    try:
        results = []
        for n in args.sizes:
            out = work / str(n)
            (out).mkdir()
            (out / "entries.json").write_text(json.dumps(make_journal(out, n, args.classes, args.segments)))
            line = subprocess.run([sys.executable, __file__, "--child", str(out), "--classes", str(args.classes)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append((n, json.loads(line)))
            shutil.rmtree(out)
        print(f"{'code':>5} {'recordings':>10} {'peak MiB':>9} {'seconds':>8}")
        for n, r in results:
            print(f"{r['code']:>5} {n:>10} {r['peak_mib']:>9.1f} {r['seconds']:>8.1f}")
        (small, a), (large, b) = results[0], results[-1]
        print(f"peak at {large} / peak at {small} recordings: {b['peak_mib'] / max(a['peak_mib'], 0.1):.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
