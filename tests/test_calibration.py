"""Calibration: Platt/temperature fits recover known maps, ECE against hand and sklearn, calibrate + predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from soundception.cli import main
from soundception.train import tables
from soundception.train.calibration import (Platt, cross_fitted, expected_calibration_error, fit_platt, reliability,
                                            sigmoid)
from soundception.train.config import UserError


def synthetic(n: int, *, slope: float, intercept: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``sigmoid(z)`` whose true probability of presence is ``sigmoid(slope * z + intercept)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    return sigmoid(z), rng.random(n) < sigmoid(slope * z + intercept)


def test_a_temperature_fit_recovers_the_temperature():
    scores, truth = synthetic(40_000, slope=1 / 2.5, intercept=0.0)
    fitted = fit_platt(scores, truth, temperature_only=True)
    assert fitted.intercept == 0.0 and 1 / fitted.slope == pytest.approx(2.5, rel=0.05)


def test_a_platt_fit_recovers_slope_and_intercept():
    scores, truth = synthetic(40_000, slope=0.5, intercept=-1.0, seed=1)
    fitted = fit_platt(scores, truth)
    assert fitted.slope == pytest.approx(0.5, abs=0.03) and fitted.intercept == pytest.approx(-1.0, abs=0.06)


def test_the_fit_matches_sklearns_unregularised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    scores, truth = synthetic(3_000, slope=0.7, intercept=0.4, seed=2)
    ours = fit_platt(scores, truth)
    x = np.log(scores / (1 - scores))[:, None]
    theirs = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x, truth)
    assert ours.slope == pytest.approx(theirs.coef_[0, 0], rel=1e-4)
    assert ours.intercept == pytest.approx(theirs.intercept_[0], abs=1e-4)


def test_ece_of_a_hand_computed_case():
    # bin 0: 0.05 (absent): |0 - 0.05|; bin 1: 0.15, 0.15 (one present): |0.5 - 0.15|; bin 9: 1.0 (present): 0
    probabilities = np.array([0.05, 0.15, 0.15, 1.0])
    truth = np.array([False, True, False, True])
    assert expected_calibration_error(probabilities, truth) == pytest.approx((0.05 + 2 * 0.35 + 0.0) / 4)
    count, confidence, frequency = reliability(probabilities, truth)
    assert count.tolist() == [1, 1 + 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert frequency[1] == 0.5 and np.isnan(confidence[5])


def test_the_reliability_curve_matches_sklearns_calibration_curve():
    from sklearn.calibration import calibration_curve

    scores, truth = synthetic(3_000, slope=0.6, intercept=0.2, seed=3)
    count, confidence, frequency = reliability(scores, truth)
    theirs_true, theirs_predicted = calibration_curve(truth, scores, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(frequency[count > 0], theirs_true)
    np.testing.assert_allclose(confidence[count > 0], theirs_predicted)


def test_calibration_lowers_the_held_out_ece_of_overconfident_scores():
    scores, truth = synthetic(6_000, slope=0.4, intercept=-0.8, seed=4)  # overconfident and too high
    groups = np.arange(scores.size) // 5  # "recordings" of 5 pairs each
    held_out = cross_fitted(scores, truth, groups, folds=2)
    before, after = expected_calibration_error(scores, truth), expected_calibration_error(held_out, truth)
    assert before > 0.1 and after < 0.03 and after < before / 4


def test_the_map_keeps_every_ranking():
    scores = np.random.default_rng(5).random(200)
    mapped = Platt(slope=0.3, intercept=-2.0).apply(scores)
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(mapped, kind="stable"))
    with pytest.raises(ValueError, match="positive slope"):
        Platt(slope=-1.0)


def test_calibrate_then_predict_maps_every_score(trained_run, tmp_path):
    from soundception.train.calibrate import calibrate, read_calibration

    out = tmp_path / "calibration.json"
    result = calibrate(trained_run.checkpoint, trained_run.store, out, figure=tmp_path / "reliability.png")
    assert result["segment"] is None  # the fixture's store has no annotated calls
    written = json.loads(out.read_text())
    assert written["recording"]["pairs"] == 3 * written["recording"]["recordings"]
    assert (tmp_path / "reliability.png").stat().st_size > 10_000
    platt = Platt.from_dict(written["recording"])
    with pytest.raises(UserError, match="another checkpoint"):
        read_calibration(out, "0" * 64)
    common = ["predict", "--checkpoint", str(trained_run.checkpoint), "--store", trained_run.store, "--top-k", "3",
              "--device", "cpu", "--no-progress", "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(main, common).exit_code == 0
    raw = tables.read_csv(tmp_path / "out" / "predictions.csv")
    mapped = CliRunner().invoke(main, common + ["--calibration", str(out)])
    assert mapped.exit_code == 0 and "predicted 0 recording(s)" in mapped.output  # the journal is reused
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["options"]["calibration"]["recording"] == \
        platt.to_dict()
    calibrated = tables.read_csv(tmp_path / "out" / "predictions.csv")
    assert [(r.file, r.class_id, r.rank) for r in calibrated] == [(r.file, r.class_id, r.rank) for r in raw]
    journal = {}
    for entry in (tmp_path / "out" / "journal").glob("*.npz"):
        with np.load(entry) as data:
            journal[str(data["file_id"])] = data["scores"].astype(np.float64)
    index = {c: k for k, c in enumerate(sorted({r.class_id for r in raw}))}
    for r in calibrated:  # the journal's unrounded score through the map, rounded as tables round
        score = np.clip(journal[r.file][index[r.class_id]], 1e-6, 1 - 1e-6)  # the documented clip
        z = np.log(score) - np.log1p(-score)
        assert r.score == pytest.approx(1 / (1 + np.exp(-(platt.slope * z + platt.intercept))), abs=1e-6)
    segments = CliRunner().invoke(main, common + ["--calibration", str(out), "--segments", "1"])
    assert segments.exit_code == 1 and "no segment map" in segments.output
