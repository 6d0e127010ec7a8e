"""Per-species thresholds: the lowest score reaching the asked precision, weights, warnings, and predict --thresholds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from soundception.cli import main
from soundception.train import tables
from soundception.train.thresholds import (Decisions, lowest_threshold, read_decisions, read_thresholds,
                                           species_thresholds)


def brute_force(scores, right, weights, asked):
    """The lowest observed score whose kept detections reach ``asked``, by trying every one."""
    best = None
    for t in sorted(set(scores.tolist())):
        kept = [(r, w) for s, r, w in zip(scores, right, weights) if s >= t]
        precision = sum(w for r, w in kept if r) / sum(w for _, w in kept)
        if precision >= asked and (best is None or t < best[0]):
            best = (t, precision)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("asked", [0.5, 0.8, 0.9, 1.0])
def test_the_threshold_is_the_lowest_that_reaches_the_precision(seed, asked):
    rng = np.random.default_rng(seed)
    n = 60
    right = rng.random(n) < 0.5
    scores = np.round(np.clip(rng.normal(0.35 + 0.35 * right, 0.2), 0, 1), 2)  # rounded: ties happen
    weights = rng.choice([1.0, 2.0, 5.0], size=n) if seed % 2 else np.ones(n)
    threshold, precision = lowest_threshold(scores, right, weights, precision=asked)
    expected = brute_force(scores, right, weights, asked)
    if expected is None:
        assert threshold is None
        return
    assert threshold == pytest.approx(expected[0]) and precision == pytest.approx(expected[1])
    kept = scores >= threshold  # on these labels, the kept detections reach the asked precision
    assert np.sum(weights * (kept & right)) / np.sum(weights * kept) >= asked - 1e-12


def test_weights_count_each_card_for_the_detections_it_stands_for():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    right = np.array([True, False, True, True])
    # weighted precision at 0.9, 0.8, 0.7, 0.6: 1/1, 1/4, 2/5, 4/7; unweighted: 1, 1/2, 2/3, 3/4
    assert lowest_threshold(scores, right, np.array([1.0, 3.0, 1.0, 2.0]), precision=0.5) == \
        pytest.approx((0.6, 4 / 7))
    assert lowest_threshold(scores, right, np.array([1.0, 3.0, 1.0, 2.0]), precision=0.7) == pytest.approx((0.9, 1.0))
    assert lowest_threshold(scores, right, None, precision=0.7) == pytest.approx((0.6, 0.75))
    assert lowest_threshold(scores, ~right, None, precision=0.9) == (None, pytest.approx(0.5))


def test_too_few_decisions_are_noted_and_warned(tmp_path):
    decisions = Decisions(class_id=np.array(["a"] * 12 + ["b"] * 4, dtype=object),
                          score=np.linspace(0.1, 0.9, 16), right=np.array([True] * 16), weight=np.ones(16), unsure={})
    rows = {r.class_id: r for r in species_thresholds(decisions, ["a", "b", "c"], precision=0.9)}
    assert rows["a"].note == "" and rows["a"].n_decisions == 12
    assert "too few" in rows["b"].note and rows["b"].n_decisions == 4 and rows["b"].threshold is not None
    assert rows["c"].threshold is None and rows["c"].note == "no decisions"


def write_decisions(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "start", "end", "predicted", "score", "decision", "label", "weight", "path"])
        for file_id, predicted, score, decision, label, weight in rows:
            writer.writerow([file_id, "0.000", "5.000", predicted, f"{score:.6f}", decision, label, weight, "/a.wav"])
    return path


def test_a_decisions_csv_counts_unsure_and_other_is_wrong_for_the_predicted_species(tmp_path):
    rows = [("r1.wav", "wren", 0.95, "correct", "wren", 1), ("r2.wav", "wren", 0.90, "other", "robin", 1),
            ("r3.wav", "wren", 0.80, "correct", "wren", 1), ("r4.wav", "wren", 0.70, "unsure", "", 1),
            ("r5.wav", "wren", 0.60, "wrong", "", 1), ("r6.wav", "robin", 0.50, "unsure", "", 1),
            ("r7.wav", "robin", 0.40, "correct", "robin", 2.5)]
    path = write_decisions(tmp_path / "decisions.csv", rows)
    found = read_decisions(path)
    assert len(found.score) == 5 and dict(found.unsure) == {"wren": 1, "robin": 1}
    assert found.right.tolist() == [True, False, True, False, True] and found.weight[-1] == 2.5
    out = tmp_path / "thresholds.csv"
    result = CliRunner().invoke(main, ["thresholds", "--decisions", str(path), "--out", str(out), "--precision", "0.6"])
    assert result.exit_code == 0, result.output
    assert "5 decisions, 2 unsure ignored" in result.output
    # wren: precision at 0.95, 0.9, 0.8, 0.6 = 1, 1/2, 2/3, 2/4 -> 0.8; robin: 1 decision, right
    with open(out, newline="") as handle:
        written = {r["class_id"]: r for r in csv.DictReader(handle)}
    assert written["wren"]["threshold"] == "0.8" and written["wren"]["n_decisions"] == "4"
    assert written["wren"]["n_positive"] == "2" and "1 unsure ignored" in written["wren"]["note"]
    assert written["robin"]["threshold"] == "0.4" and "too few" in written["robin"]["note"]
    assert result.output.count("warning:") == 2  # one line per species with too few decisions
    assert read_thresholds(out) == {"wren": 0.8, "robin": 0.4}


def test_bad_decisions_are_one_line(tmp_path):
    path = write_decisions(tmp_path / "d.csv", [("r1.wav", "wren", 0.9, "maybe", "", 1)])
    result = CliRunner().invoke(main, ["thresholds", "--decisions", str(path), "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 1 and "line 2: decision 'maybe'" in result.output


def test_predict_thresholds_filter_each_species_exactly_and_do_not_predict_again(trained_run, tmp_path):
    out = tmp_path / "out"
    common = ["predict", "--checkpoint", str(trained_run.checkpoint), "--store", trained_run.store, "--out", str(out),
              "--format", "csv,raven,audacity", "--top-k", "3", "--device", "cpu", "--no-progress"]
    first = CliRunner().invoke(main, common)
    assert first.exit_code == 0, first.output
    every = tables.read_csv(out / "predictions.csv")
    classes = sorted({r.class_id for r in every})
    assert len(classes) == 3 and len(every) == 3 * len({r.file for r in every})  # the CSV keeps every top-k row
    first_class = sorted(r.score for r in every if r.class_id == classes[0])
    cut = first_class[len(first_class) // 2]  # an observed score: rows at it are kept
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text("class_id,class_name,threshold,precision,n_decisions,n_positive,note\n"
                          f"{classes[0]},,{cut},0.9,20,10,\n{classes[1]},,,0.5,20,10,never reaches precision 0.9\n")
    again = CliRunner().invoke(main, common + ["--thresholds", str(thresholds), "--min-score", "0.02"])
    assert again.exit_code == 0, again.output
    assert "predicted 0 recording(s)" in again.output  # thresholds only filter: the journal is reused
    assert tables.read_csv(out / "predictions.csv") == every
    expected = {(r.file, r.class_name, r.score) for r in every
                if (r.class_id == classes[0] and r.score >= cut) or (r.class_id == classes[2] and r.score >= 0.02)}
    assert any(r.class_id == classes[2] and r.score < 0.02 for r in every), "the fallback should drop something"
    got = set()
    for file_id in {r.file for r in every}:
        got |= {(file_id, r.class_name, r.score) for r in tables.read_audacity(out / "audacity" / f"{file_id}.txt",
                                                                             file_id)}
        raven = tables.read_raven(out / "raven" / f"{file_id}.selections.txt")
        assert {(file_id, r.class_name, r.score) for r in raven} == \
            {(f, n, s) for f, n, s in expected if f == file_id}
    assert got == expected
    settings = json.loads((out / "settings.json").read_text())
    assert settings["options"]["thresholds"] == {classes[0]: cut, classes[1]: None}


def test_predict_refuses_thresholds_for_classes_the_checkpoint_lacks(trained_run, tmp_path):
    thresholds = tmp_path / "t.csv"
    thresholds.write_text("class_id,class_name,threshold,precision,n_decisions,n_positive,note\nowl,,0.5,1,20,10,\n")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run.checkpoint), "--store",
                                       trained_run.store, "--out", str(tmp_path / "o"), "--thresholds", str(thresholds),
                                       "--device", "cpu", "--no-progress"])
    assert result.exit_code == 1 and "'owl'" in result.output


def test_thresholds_from_the_validation_split_count_its_recordings(trained_run, tmp_path):
    from soundception.shared.reader import FeatureStore
    from soundception.train.checkpoint import load_checkpoint

    out = tmp_path / "thresholds.csv"
    result = CliRunner().invoke(main, ["thresholds", "--checkpoint", str(trained_run.checkpoint), "--store",
                                       trained_run.store, "--out", str(out), "--precision", "0.5"])
    assert result.exit_code == 0, result.output
    validation = json.loads(load_checkpoint(trained_run.checkpoint)["split"])["validation"]
    store = FeatureStore(trained_run.store)
    present = {c: 0 for c in store.classes}  # label or background species, counted from the store itself
    for i in validation:
        for k in {int(store.table["label"][i]), *store.background[i]}:
            present[store.classes[k]] += 1
    with open(out, newline="") as handle:
        rows = {r["class_id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(store.classes)
    for class_id, row in rows.items():
        assert int(row["n_decisions"]) == len(validation) and int(row["n_positive"]) == present[class_id]
        assert "too few" in row["note"]  # a handful of validation recordings: every species is warned about
    assert result.output.count("warning:") == len(store.classes)
    segments = CliRunner().invoke(main, ["thresholds", "--checkpoint", str(trained_run.checkpoint), "--store",
                                         trained_run.store, "--out", str(out), "--segments", "1"])
    assert segments.exit_code == 1 and "no annotated calls" in segments.output


def test_the_noise_class_stays_out_of_the_raven_and_audacity_rows():
    from soundception.train.predict import shown

    rows = [tables.Detection("a.wav", 0.0, 5.0, c, c, score, rank) for c, score, rank in
            (("noise", 0.9, 1), ("sp0", 0.5, 2), ("sp1", 0.05, 3), ("sp2", 0.3, 4))]
    kept = shown(rows, min_score=0.1, thresholds={"sp2": 0.4})
    assert [r.class_id for r in kept] == ["sp0"]  # noise left out, sp1 under 0.1, sp2 under its 0.4
    assert [r.class_id for r in shown(rows, min_score=0.0, thresholds=None)] == ["sp0", "sp1", "sp2"]
