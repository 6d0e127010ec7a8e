"""``predict`` writes its tables from the journal one recording at a time: memory does not grow with their number."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from soundception.train import tables
from soundception.train.journal import Prediction, write_journal
from soundception.train.predict import PredictOptions, write_tables
from soundception.train.trained import load_trained_model

SEGMENTS = 200  # per recording: each entry holds ~9 KB of arrays, and its rows ~100 KB


def synthetic_journal(out: Path, n: int, n_classes: int) -> dict[str, str]:
    """``n`` seeded journal entries of one-second segments; returns file id -> key, as predict passes them."""
    rng = np.random.default_rng(n)
    entries = {}
    for i in range(n):
        file_id = f"sp{i % 7:02d}/XC{i:06d}.wav"
        bounds = np.stack([np.arange(SEGMENTS, dtype=np.float64), np.arange(1, SEGMENTS + 1, dtype=np.float64)], 1)
        segment_scores = rng.dirichlet(np.ones(n_classes), SEGMENTS).astype(np.float32)
        write_journal(out, f"key {i}", Prediction(
            file=file_id, duration=float(SEGMENTS), path=f"/audio/{file_id}", scores=segment_scores.mean(0),
            segments=bounds, segment_scores=segment_scores, bands=np.tile([500.0, 8000.0], (SEGMENTS, 1))))
        entries[file_id] = f"key {i}"
    return entries


def table_peak(out: Path, entries: dict[str, str], trained, options: PredictOptions) -> int:
    """Peak bytes Python allocated while writing the tables (numpy's arrays included), above where it began."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        write_tables(out, entries, trained, options)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_writing_tables_for_ten_times_the_recordings_takes_no_more_memory_per_recording(trained_run, tmp_path):
    trained = load_trained_model(trained_run.checkpoint)
    options = PredictOptions(segment_seconds=1.0, top_k=3, formats=tables.FORMATS, device="cpu")
    small, large = 10, 100
    journals = {n: synthetic_journal(tmp_path / str(n), n, len(trained.classes)) for n in (small, large)}
    write_tables(tmp_path / str(small), journals[small], trained, options)  # warm: first-call caches, imports
    peaks = {n: table_peak(tmp_path / str(n), journals[n], trained, options) for n in (small, large)}
    per_recording = (peaks[large] - peaks[small]) / (large - small)
    # the index may grow (a BirdCLEF media id and the path written per file: ~1.4 KB); an entry (~11 KB
    # with its arrays) or its rows may not stay
    assert per_recording < 3072, f"{per_recording:.0f} bytes per recording ({peaks})"
    rows = tables.read_csv(tmp_path / str(large) / "predictions.csv")  # and every recording was written
    assert len(rows) == large * SEGMENTS * 3 and len({r.file for r in rows}) == large
    assert len(list((tmp_path / str(large) / "audacity").rglob("*.txt"))) == large
