"""``evaluate`` on a store with call annotations reports how well the temporal attention marks them
(train/localize.py), computed as bench/localize.py computes it from the generator's call times."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest

from soundception.train.evaluate import evaluate


@pytest.fixture(scope="module")
def annotated(trained_run, tmp_path_factory):
    """The trained run's recordings featurized again with their true calls as a CSV of annotations."""
    from soundception.featurize.pipeline import featurize_store

    root = tmp_path_factory.mktemp("annotated")
    rows = [["path", "start", "end", "label", "low_hz", "high_hz"]]
    with open(trained_run.calls, newline="") as handle:
        for call in csv.DictReader(handle):
            rows.append([call["file"], call["start"], call["end"], call["species"], call["low_hz"], call["high_hz"]])
    with open(root / "calls.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    store = str(root / "annotated.zarr")
    featurize_store(trained_run.audio, store, config=trained_run.config, metadata=trained_run.labels, labels="csv",
                    annotations=root / "calls.csv")
    return store


def bench_localize():
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        return importlib.import_module("localize")
    finally:
        sys.path.remove(str(bench))


def test_the_localisation_from_events_equals_the_benchmarks_from_the_call_times(trained_run, annotated):
    report = evaluate(trained_run.checkpoint, annotated, device="cpu", segment_seconds=5.0)
    found = report["localisation"]
    localize = bench_localize()
    from soundception.shared.reader import FeatureStore

    classes = FeatureStore(annotated).classes
    expected = localize.measure(trained_run.checkpoint, annotated, localize.read_calls(trained_run.calls, classes),
                                "cpu")
    assert found["files"] == expected["files"] == report["n_recordings"]
    assert found["steps"] == expected["steps"]
    assert found["auc_any"] == pytest.approx(expected["auc_any"], abs=1e-9)
    assert found["auc_main"] == pytest.approx(expected["auc_main"], abs=1e-9)
    assert found["segment_map_5"] == pytest.approx(expected["map_5_attention"], abs=1e-9)
    assert 0.0 <= found["auc_any"] <= 1.0 and found["auc_main"] != found["auc_any"]


def test_a_store_without_events_reports_no_localisation(trained_run):
    assert "localisation" not in evaluate(trained_run.checkpoint, trained_run.store, device="cpu")


def test_inspect_counts_the_annotated_calls(trained_run, annotated):
    from click.testing import CliRunner

    from soundception.cli import main

    with open(trained_run.calls, newline="") as handle:
        calls = list(csv.DictReader(handle))
    shown = CliRunner().invoke(main, ["inspect", annotated]).output
    assert f"events      {len(calls)} annotated calls in {len({c['file'] for c in calls})} files" in shown, shown
    assert "events" not in CliRunner().invoke(main, ["inspect", trained_run.store]).output
