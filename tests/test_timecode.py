"""BirdCLEF time codes: one rule (nearest second, halves up, at least one second), checked by hand."""

from __future__ import annotations

import pytest

from soundception.train import tables
from soundception.train.score import read_run_file
from soundception.train.tables import Detection
from soundception.train.timecode import canonical_tc, format_tc, parse_tc


@pytest.mark.parametrize(("start_s", "end_s", "expected"), [
    (5.0, 10.0, "00:00:05-00:00:10"),  # the challenge's grid, as given
    (4.9999999, 10.0000001, "00:00:05-00:00:10"),  # float noise either way stays on the grid
    (5.0000001, 9.9999999, "00:00:05-00:00:10"),
    (4.0, 4.193, "00:00:04-00:00:05"),  # a short last segment keeps one second
    (12.6, 12.9, "00:00:13-00:00:14"),  # rounds onto its start: one second on
    (2.5, 7.5, "00:00:03-00:00:08"),  # halves up (Python's round() would give 2 and 8)
    (0.49, 5.49, "00:00:00-00:00:05"),
    (3595.0, 3600.0, "00:59:55-01:00:00"),
    (3599.5, 90061.2, "01:00:00-25:01:01"),  # hours pass 24
    (359990.0, 360000.0, "99:59:50-100:00:00"),  # hours take a third digit
    (7.0, 7.0, "00:00:07-00:00:08"),  # an empty span still gets its second
])
def test_format_by_hand(start_s, end_s, expected):
    assert format_tc(start_s, end_s) == expected


@pytest.mark.parametrize("bad", [(-1, 5), (5, 4.9), (float("nan"), 5), (0, float("inf"))])
def test_format_refuses(bad):
    with pytest.raises(ValueError):
        format_tc(*bad)


def test_parse_and_canonical():
    assert parse_tc("25:01:01-100:00:00") == (90061.0, 360000.0)
    assert parse_tc(format_tc(123.4, 128.6)) == (123.0, 129.0)
    assert canonical_tc(" 00:00:05-00:00:10 ") == "00:00:05-00:00:10"
    for bad in ["0:00:05-00:00:10", "00:00:05", "00:00:05-00:00:05", "00:00:05--00:00:10", "00:60:00-01:00:00"]:
        with pytest.raises(ValueError):
            parse_tc(bad)


def test_writer_and_scorer_agree(tmp_path):
    """The segment run file the tables write is read back by score with the same time codes."""
    rows = [Detection("a.wav", 0.0, 5.0, "c1", "one", 0.9, 1), Detection("a.wav", 4.9999999, 10.0000001, "c1", "one",
                                                                          0.8, 1),
            Detection("a.wav", 10.0, 12.3, "c2", "two", 0.7, 1)]
    path = tables.write_file(tmp_path / "segments.txt", tables.birdclef_segment_text(rows, {"a.wav": "a"}))
    assert path.read_text() == ("a;00:00:00-00:00:05;c1;0.9\na;00:00:05-00:00:10;c1;0.8\n"
                                "a;00:00:10-00:00:12;c2;0.7\n")
    run = read_run_file(path)
    assert [row[1] for row in run.rows] == ["00:00:00-00:00:05", "00:00:05-00:00:10", "00:00:10-00:00:12"]
