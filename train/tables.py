"""Prediction tables in the layouts other tools open: CSV, Raven Pro, Audacity, BirdCLEF run files.

Every writer has a reader that parses its file back to the same rows; the tests hold them to it.
The readers (:func:`read_csv`, :func:`read_raven`, :func:`read_audacity`) are public API: they load
a run's tables back into :class:`Detection` rows for a user's own analysis.
Numbers are written once, rounded: times to the millisecond, scores to 6 decimals, frequencies to
0.1 Hz. Rows are :class:`Detection`, one per (file, time span, species).

    csv       predictions.csv   file,start_s,end_s,class_id,class_name,score,rank  (one long table)
    raven     raven/<file id>.selections.txt (one per recording) or raven/combined.selections.txt
              Selection View Channel "Begin Time (s)" "End Time (s)" "Low Freq (Hz)" "High Freq (Hz)"
              Species Score "Begin Path" "File Offset (s)"   (tab-separated, Raven Pro selection table)
    audacity  audacity/<file id>.txt   start<TAB>end<TAB>class_name score   (no header; label track)
    birdclef  birdclef/recordings.txt  MediaId;ClassId;Probability;Rank
              birdclef/segments.txt    MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability (whole-second segments)
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from soundception.shared.errors import UserError

from soundception.shared import files
from soundception.train.timecode import format_tc

FORMATS = ("csv", "raven", "audacity", "birdclef")
CSV_COLUMNS = ("file", "start_s", "end_s", "class_id", "class_name", "score", "rank")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Score", "Begin Path", "File Offset (s)")
BIRDCLEF_MAX_SPECIES = 100  # the challenge's limit per query


@dataclass(frozen=True)
class Detection:
    """One species' score over one time span of one recording.

    Attributes:
        file: the recording's file id (path relative to the audio root).
        start_s, end_s: the span, seconds from the start of the original recording.
        class_id, class_name: the species (id as in the store, name as labelled).
        score: in [0, 1]; rank: 1 = the span's best species.
        low_hz, high_hz: frequency band (Raven); path: the audio file's path (Raven's Begin Path).
    """

    file: str
    start_s: float
    end_s: float
    class_id: str
    class_name: str
    score: float
    rank: int
    low_hz: float = 0.0
    high_hz: float = 0.0
    path: str = ""

    def rounded(self) -> Detection:
        """The row as the tables store it (times to 1 ms, score to 1e-6, frequencies to 0.1 Hz)."""
        return Detection(self.file, round(self.start_s, 3), round(self.end_s, 3), self.class_id, self.class_name,
                         round(self.score, 6), int(self.rank), round(self.low_hz, 1), round(self.high_hz, 1),
                         self.path)


def _number(value: float, digits: int) -> str:
    return repr(round(float(value), digits))


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[TextIO]:
    """A table opened for writing in pieces (:func:`soundception.shared.files.atomic_write`, UTF-8): renamed
    to ``path`` when the block ends, removed if it raises, so ``path`` is never half written."""
    with files.atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        yield handle


def _plain(value: str, what: str, table: str) -> str:
    """``value`` unchanged, or a one-line refusal if it holds a tab or a line break: tab-separated tables
    have no escape for either (Raven Pro's selection tables define none), so the row would split."""
    if "\t" in value or (value and value.splitlines() != [value]):  # any break a reader's splitlines() sees
        raise UserError(f"{what} {value!r} contains a tab or a line break, which {table} cannot hold")
    return value


def table_name(file_id: str, suffix: str) -> str:
    """A per-recording table's path under its format's folder: the file id's folders are kept."""
    return f"{file_id}{suffix}"


# ------------------------------------------------------------------------------------------------ csv


def csv_text(rows: Iterable[Detection], *, header: bool = True) -> str:
    """``predictions.csv``'s text; ``header=False`` gives only the rows, to append to a table being written."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.file, _number(r.start_s, 3), _number(r.end_s, 3), r.class_id, r.class_name,
                         _number(r.score, 6), r.rank])
    return out.getvalue()


def read_csv(path: str | Path) -> list[Detection]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}")
        return [Detection(r["file"], float(r["start_s"]), float(r["end_s"]), r["class_id"], r["class_name"],
                          float(r["score"]), int(r["rank"])) for r in reader]


# ---------------------------------------------------------------------------------------------- raven


def raven_text(rows: Sequence[Detection], *, offsets: dict[str, float] | None = None, header: bool = True,
               first_selection: int = 1) -> str:
    """A Raven Pro selection table. ``offsets``: file -> where that file begins in a combined table, s.

    In a per-recording table Begin Time equals File Offset; in a combined table Begin Time is
    counted from the start of the first recording (files laid end to end), as Raven expects.
    ``header=False`` and ``first_selection`` give rows to append to a table being written.
    """
    lines = ["\t".join(RAVEN_COLUMNS)] if header else []
    for selection, r in enumerate(rows, start=first_selection):
        shift = (offsets or {}).get(r.file, 0.0)
        lines.append("\t".join([str(selection), "Spectrogram 1", "1", _number(r.start_s + shift, 3),
                                _number(r.end_s + shift, 3), _number(r.low_hz, 1), _number(r.high_hz, 1),
                                _plain(r.class_name, "class name", "a Raven selection table"), _number(r.score, 6),
                                _plain(r.path, "file path", "a Raven selection table"), _number(r.start_s, 3)]))
    return "".join(line + "\n" for line in lines)


def read_raven(path: str | Path, *, files: dict[str, str] | None = None) -> list[Detection]:
    """Parse a selection table back. ``files``: Begin Path -> file id (default: the path itself).

    The end time is recovered from the file offset (Begin/End Time may be shifted in a combined
    table); the class id is not in a Raven table and comes back as the species name, rank as 0.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    if header != RAVEN_COLUMNS:
        raise ValueError(f"{path}: not a Soundception Raven selection table (header {header})")
    rows = []
    for line in lines[1:]:
        f = dict(zip(RAVEN_COLUMNS, line.split("\t")))
        offset = float(f["File Offset (s)"])
        length = float(f["End Time (s)"]) - float(f["Begin Time (s)"])
        rows.append(Detection((files or {}).get(f["Begin Path"], f["Begin Path"]), offset, round(offset + length, 3),
                              f["Species"], f["Species"], float(f["Score"]), 0, float(f["Low Freq (Hz)"]),
                              float(f["High Freq (Hz)"]), f["Begin Path"]))
    return rows


# ------------------------------------------------------------------------------------------- audacity


def audacity_text(rows: Iterable[Detection]) -> str:
    """An Audacity label track: ``start<TAB>end<TAB>species score`` per line, no header."""
    return "".join(f"{_number(r.start_s, 3)}\t{_number(r.end_s, 3)}\t"
                   f"{_plain(r.class_name, 'class name', 'an Audacity label track')} {_number(r.score, 6)}\n"
                   for r in rows)


def read_audacity(path: str | Path, file_id: str) -> list[Detection]:
    """Parse a label track back (species name as class id, rank 0: neither is in the track)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle.read().splitlines():
            start, end, label = line.split("\t")
            name, score = label.rsplit(" ", 1)
            rows.append(Detection(file_id, float(start), float(end), name, name, float(score), 0))
    return rows


# ------------------------------------------------------------------------------------------- birdclef


def birdclef_recording_text(rows: Iterable[Detection], media_ids: dict[str, str]) -> str:
    """``MediaId;ClassId;Probability;Rank``, at most 100 species per recording."""
    return "".join(f"{media_ids[r.file]};{r.class_id};{_number(r.score, 6)};{r.rank}\n"
                   for r in rows if r.rank <= BIRDCLEF_MAX_SPECIES)


def birdclef_segment_text(rows: Iterable[Detection], media_ids: dict[str, str]) -> str:
    """``MediaId;hh:mm:ss-hh:mm:ss;ClassId;Probability``, at most 100 species per segment."""
    return "".join(f"{media_ids[r.file]};{format_tc(r.start_s, r.end_s)};{r.class_id};{_number(r.score, 6)}\n"
                   for r in rows if r.rank <= BIRDCLEF_MAX_SPECIES)


def media_ids(files: Sequence[str]) -> dict[str, str]:
    """BirdCLEF MediaId per file id: the file name without its extension, or the whole id where two collide.

    BirdCLEF names its recordings by media id; a semicolon would break the run file, so it is refused.
    """
    stems = {f: Path(f).stem for f in files}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    chosen = {f: (stem if counts[stem] == 1 else f) for f, stem in stems.items()}
    bad = [f for f, m in chosen.items() if ";" in m]
    if bad:
        raise UserError(f"file id {bad[0]!r} contains ';', which a BirdCLEF run file cannot hold")
    return chosen


def write_file(path: Path, text: str) -> Path:
    """Atomically write one table (:func:`soundception.shared.files.write_text`): never a half-written
    table; returns ``path``."""
    return files.write_text(path, text)
