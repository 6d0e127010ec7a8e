"""Progress off a terminal: a log file gets a plain line every few per cent, never carriage returns."""

from __future__ import annotations

import io
import re

from click.testing import CliRunner

from soundception.cli import main
from soundception.shared.progress import Progress

LINE = re.compile(r"^featurize: (\d+)/(\d+) file \((\d+)%\) in [\d.]+ s$")
FEATURIZE_LINE = re.compile(r"^featurize: (\d+)/(\d+) file \((\d+)%\) in [\d.]+ s  (\d+) done, (\d+) failed, "
                            r"(\d+) left; [\d.]+ h of audio/s \(\d+x real time\)$")


def test_progress_prints_one_line_per_step_of_every_percent():
    stream = io.StringIO()
    with Progress(200, desc="featurize", unit="file", stream=stream, every_percent=10) as bar:
        for done in range(1, 201):
            bar.update(done)
    lines = stream.getvalue().splitlines()
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == [20, 40, 60, 80, 100, 120, 140, 160, 180, 200]  # 10 %, 20 %, ..., then the close


def test_featurize_into_a_log_writes_plain_progress_lines(small_corpus, tmp_path):
    result = CliRunner().invoke(main, ["featurize", str(small_corpus), "--store", str(tmp_path / "s.zarr"),
                                       "--labels", "folders", "--serial", "--min-duration", "1"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "\x1b" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("featurize:")]
    found = [FEATURIZE_LINE.match(line) for line in lines]
    assert all(found), lines
    counts = [(int(m.group(1)), int(m.group(2))) for m in found]
    assert counts == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 4 files: each is 25 %, the last at the close
    assert [(int(m.group(4)), int(m.group(5)), int(m.group(6))) for m in found] == [(1, 0, 3), (2, 0, 2), (3, 0, 1),
                                                                                    (4, 0, 0)]
    assert "featurized 4 of 4" in result.stdout
