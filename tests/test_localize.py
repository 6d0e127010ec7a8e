"""The localisation bench's measures (bench/localize.py) on hand-made arrays; no training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from soundception.train.inference import FileWindows

BENCH = Path(__file__).parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # the script's sibling bench_data, as when it runs as a script
_SPEC = importlib.util.spec_from_file_location("bench_localize", BENCH / "localize.py")
localize = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = localize  # dataclasses look their module up there
_SPEC.loader.exec_module(localize)
Call = localize.Call


def test_activity_auc_matches_the_pair_count_with_ties_as_halves():
    attention = np.array([0.9, 0.8, 0.3, 0.3, 0.1])
    active = np.array([True, False, True, False, False])
    # positive 0.9 beats all 3 negatives; positive 0.3 ties one (1/2), beats 0.1, loses to 0.8: 4.5 of 6 pairs
    assert localize.activity_auc(attention, active) == pytest.approx(4.5 / 6)
    with pytest.raises(ValueError, match="both active and silent"):
        localize.activity_auc(attention, np.zeros(5, dtype=bool))


def test_steps_of_a_self_concatenated_clip_map_back_to_its_calls():
    # a 4 s clip shown 3 times: 12 s = 120 px at 10 px/s, one window of 60 steps of 0.2 s (centres 0.1, 0.3, ...)
    windows = FileWindows(position=0, index=0, starts=np.array([0]), probabilities=np.ones((1, 2), np.float32),
                          temporal=np.linspace(0, 1, 60, dtype=np.float32)[None], time_frequency=None)
    call = Call(species=0, start=0.8, end=1.2, background=False)
    attention, seconds, active = localize.step_labels(windows, [call], width=120, n_frames=120, duration=4.0,
                                                      pixels_per_second=10.0)
    image_seconds = (np.arange(60) + 0.5) * 0.2
    np.testing.assert_allclose(seconds, image_seconds % 4.0)
    assert seconds[np.argmin(np.abs(image_seconds - 5.1))] == pytest.approx(1.1)  # 5.1 s in the image is 1.1 s
    # the call at 0.8-1.2 s is active at image steps 0.9, 1.1, then 4.9, 5.1 and 8.9, 9.1 s
    np.testing.assert_allclose(image_seconds[active], [0.9, 1.1, 4.9, 5.1, 8.9, 9.1])
    np.testing.assert_array_equal(attention, windows.temporal[0])


def test_steps_over_a_windows_zero_padding_are_dropped():
    windows = FileWindows(position=0, index=0, starts=np.array([0]), probabilities=np.ones((1, 2), np.float32),
                          temporal=np.arange(10, dtype=np.float32)[None], time_frequency=None)
    # 7 valid px of a 10 px window (1 px per step): steps 7, 8, 9 lie over padding
    attention, seconds, active = localize.step_labels(windows, [Call(1, 2.0, 3.0, True)], width=10, n_frames=7,
                                                      duration=7.0, pixels_per_second=1.0)
    np.testing.assert_array_equal(attention, np.arange(7))
    np.testing.assert_array_equal(active, seconds == 2.5)


def test_segment_truth_marks_each_species_calling_in_a_segment():
    bounds = np.array([[0.0, 5.0], [5.0, 10.0], [10.0, 12.0]])
    calls = [Call(0, 4.5, 5.5, False),  # spans the first boundary: both segments
             Call(2, 10.0, 10.2, True),  # background species, starts exactly at the third segment
             Call(1, 7.0, 10.0, False)]  # ends exactly where the third segment starts: not in it
    expected = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(localize.segment_truth(bounds, calls, 3), expected)
