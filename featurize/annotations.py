"""Call annotations: Raven selection tables, Audacity label files and a CSV, read as events.

An :class:`Event` is one annotated call: the recording it belongs to (as the source names it),
its start and end in seconds from the start of that recording, its frequency band in Hz (NaN
where the source gives none) and its label (a species id or name). The readers are pure
functions of a file's text; :func:`match_events` ties events to the recordings under the audio
root and lists those it cannot place; :func:`labels_from_events` derives a recording's labels.

Formats (``--annotations-format``):

* ``raven``: Raven selection tables, tab-separated with one header line; columns ``Begin Time (s)``,
  ``End Time (s)``, optional ``Low Freq (Hz)``/``High Freq (Hz)``, and a label column (named by
  ``label_column``, else the first of :data:`RAVEN_LABEL_COLUMNS` present). A table names its
  recording by ``Begin File`` or ``Begin Path`` when it has them, else by its own file name
  (``XC123.Table.1.selections.txt`` -> ``XC123``). ``File Offset (s)``, when present, is the time
  inside the file (a table over several files counts ``Begin Time`` from the first file). A table
  that ``soundception review`` exported (with a ``Decision`` column) is read as its decisions, with
  or without ``label_column``: the species a person confirmed, the ``Label`` they corrected it to,
  :data:`NOISE_LABEL` for a wrong one, and no event for an unsure one (as the decisions CSV below).
* ``audacity``: ``start<TAB>end<TAB>label`` lines, optionally each followed by a spectral line
  ``\\<TAB>low<TAB>high`` (a leading backslash or tab; a negative frequency is Audacity's "none");
  the recording is the label file's stem.
* ``csv``: ``path,start,end,label[,low_hz,high_hz]`` (optional header starting with ``path``);
  ``path`` relative to the audio root.
* ``decisions``: the CSV a review round exports (``soundception review``), with the header
  ``file,start,end,predicted,score,decision,label,weight,path`` (columns found by name; ``score``,
  ``weight`` and ``path`` optional). A ``correct`` detection is an event of ``predicted``, an
  ``other`` one an event of the species in ``label``, a ``wrong`` one an event of
  :data:`NOISE_LABEL` (an example of "none of the predicted species here", as BirdNET-Analyzer's
  custom classifiers learn a noise class); ``unsure`` rows are ignored and counted.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from soundception.featurize.labels import MetadataError, _csv_body, _utf8
from soundception.shared.decisions import DECISION_COLUMNS as ALL_DECISION_COLUMNS
from soundception.shared.decisions import DECISIONS, NOISE_LABEL

FORMATS = ("auto", "raven", "audacity", "csv", "decisions")
# the decisions columns a table must have (found by name); score, weight and path are optional here
DECISION_COLUMNS = tuple(c for c in ALL_DECISION_COLUMNS if c not in ("score", "weight", "path"))
REVIEW_DECISION, REVIEW_LABEL = "Decision", "Label"  # the columns a review's Raven export adds
RAVEN_LABEL_COLUMNS = ("Species", "Annotation", "Species Code", "Common Name", "Label", "Class")
BEGIN, END, LOW, HIGH = "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"
FILE_OFFSET, BEGIN_FILE, BEGIN_PATH = "File Offset (s)", "Begin File", "Begin Path"
TABLE_SUFFIX = re.compile(r"(\.Table\.\d+)?\.selections\.txt$", re.IGNORECASE)
ANNOTATION_EXTENSIONS = (".txt", ".csv", ".tsv")


class AnnotationError(MetadataError):
    """An annotation file cannot be read; the message is one line naming the file and the line."""


@dataclass(frozen=True)
class Event:
    """One annotated call.

    Attributes:
        file: the recording as the source names it (a path, a file name or a stem).
        start_s, end_s: seconds from the start of that recording, ``0 <= start_s < end_s``.
        low_hz, high_hz: the call's frequency band in Hz; NaN where the source gives none.
        label: species id or name, as written.
        where: ``"annotation file:line"`` the event came from (for messages; not compared).
    """

    file: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float
    label: str
    where: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def key(self) -> tuple:
        """The compared fields (NaN bands equal each other)."""
        band = tuple(-1.0 if math.isnan(value) else value for value in (self.low_hz, self.high_hz))
        return (self.file, self.start_s, self.end_s) + band + (self.label,)


def _number(text: str, what: str, where: str, *, optional: bool = False) -> float:
    """``text`` as a finite float, NaN for an empty optional cell, else :class:`AnnotationError`."""
    text = text.strip()
    if not text and optional:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: {what} {text!r} is not a number")
    return value


def _event(file: str, start: float, end: float, low: float, high: float, label: str, where: str) -> Event:
    """An :class:`Event` after the checks every format shares (one-line errors naming ``where``)."""
    if start < 0 or end < 0:
        raise AnnotationError(f"{where}: negative time (start {start:g} s, end {end:g} s)")
    if end <= start:
        raise AnnotationError(f"{where}: end {end:g} s is not after start {start:g} s")
    if low < 0 or high < 0:
        raise AnnotationError(f"{where}: negative frequency (low {low:g} Hz, high {high:g} Hz)")
    if low > high:
        raise AnnotationError(f"{where}: low frequency {low:g} Hz is above high frequency {high:g} Hz")
    if not label.strip():
        raise AnnotationError(f"{where}: empty label")
    return Event(file, start, end, low, high, label.strip(), where)


def table_recording(table_name: str) -> str:
    """The recording stem a Raven table's file name names: ``XC123.Table.1.selections.txt`` -> ``XC123``."""
    name = PurePosixPath(table_name.replace("\\", "/")).name
    stripped = TABLE_SUFFIX.sub("", name)
    return stripped if stripped != name else PurePosixPath(name).stem


def read_raven(text: str, name: str, *, label_column: str | None = None) -> list[Event]:
    """Events of one Raven selection table (``text``, read from the file ``name``).

    A row's recording is its ``Begin File`` (a file name) or ``Begin Path`` (a path) when the table
    has that column, else the table's own name (:func:`table_recording`). Times are ``File Offset
    (s)`` and ``File Offset + (End - Begin)`` when that column exists, else ``Begin``/``End``. Raven
    writes a selection once per view (``Spectrogram 1``, ``Waveform 1``): only the first row of each
    ``Selection`` number is kept.

    Raises:
        AnnotationError: a missing column (line 1), a cell that is not a number, a negative time,
            ``end <= start``, or an empty label (the line of the row).
    """
    lines = text.split("\n")
    header = [column.strip() for column in lines[0].rstrip("\r").split("\t")] if lines else []
    columns = {column: i for i, column in enumerate(header) if column}
    missing = [column for column in (BEGIN, END) if column not in columns]
    label = label_column or next((c for c in RAVEN_LABEL_COLUMNS if c in columns), None)
    if label is None or label not in columns:
        missing.append(label or f"a label column ({' or '.join(RAVEN_LABEL_COLUMNS[:2])}; "
                                 "name yours with --annotation-label-column)")
    if missing:
        raise AnnotationError(f"{name}: line 1: no column {', '.join(repr(m) for m in missing)} "
                              f"(columns: {', '.join(header) or 'none'})")
    # a path names one file even where two folders hold the same file name
    file_column = BEGIN_PATH if BEGIN_PATH in columns else BEGIN_FILE if BEGIN_FILE in columns else None
    own_recording = table_recording(name)
    events, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        where = f"{name}: line {number}"
        cell = {column: cells[i] if i < len(cells) else "" for column, i in columns.items()}.get
        selection = cell("Selection", "").strip()
        if selection and selection in seen:
            continue  # the same selection in another view
        seen.add(selection)
        begin, end = _number(cell(BEGIN, ""), BEGIN, where), _number(cell(END, ""), END, where)
        if FILE_OFFSET in columns:
            offset = _number(cell(FILE_OFFSET, ""), FILE_OFFSET, where)
            if offset != begin:  # a table over several files (equal: keep the end as written, exactly)
                begin, end = offset, offset + (end - begin)
        recording = cell(file_column, "").strip() if file_column else own_recording
        if not recording:
            raise AnnotationError(f"{where}: empty {file_column!r}")
        species = cell(label, "")
        # a review's Raven export: what was decided, whichever column names the species (a wrong detection
        # read as its Species would be a call of the species a person said is not there)
        if REVIEW_DECISION in columns:
            decision = cell(REVIEW_DECISION, "").strip().lower()
            if decision not in DECISIONS:
                raise AnnotationError(f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
            if decision == "unsure":
                continue
            species = {"correct": species, "other": cell(REVIEW_LABEL, ""), "wrong": NOISE_LABEL}[decision]
        events.append(_event(recording, begin, end, _number(cell(LOW, ""), LOW, where, optional=True),
                             _number(cell(HIGH, ""), HIGH, where, optional=True), species, where))
    return events


def read_audacity(text: str, name: str) -> list[Event]:
    """Events of one Audacity label file (``text``, read from ``name``; recording = its stem).

    Lines are ``start<TAB>end<TAB>label``; a line starting with a backslash or a tab right after
    one holds that label's ``low<TAB>high`` in Hz (negative: none, as Audacity writes -1).

    Raises:
        AnnotationError: a line with fewer than two fields, a number that is not one, a
            spectral line with no label before it, or the checks of every format.
    """
    recording = PurePosixPath(name.replace("\\", "/")).stem
    rows: list[list] = []  # [start, end, label, low, high, where]
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        where = f"{name}: line {number}"
        if not line.strip():
            continue
        if line[0] in "\\\t":
            fields = line[1:].lstrip("\t").split("\t")
            if not rows or rows[-1][3] is not None:
                raise AnnotationError(f"{where}: a frequency line with no label line before it")
            if len(fields) < 2:
                raise AnnotationError(f"{where}: a frequency line needs low<TAB>high")
            low, high = (_number(field, what, where) for field, what in zip(fields, ("low", "high")))
            rows[-1][3:5] = [math.nan if low < 0 else low, math.nan if high < 0 else high]
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise AnnotationError(f"{where}: expected start<TAB>end<TAB>label, got {len(fields)} field(s)")
        start, end = _number(fields[0], "start", where), _number(fields[1], "end", where)
        rows.append([start, end, fields[2] if len(fields) > 2 else "", None, None, where])
    return [_event(recording, start, end, math.nan if low is None else low, math.nan if high is None else high,
                   label, where) for start, end, label, low, high, where in rows]


def read_annotation_csv(text: str, name: str) -> list[Event]:
    """Events of a ``path,start,end,label[,low_hz,high_hz]`` CSV (optional ``path`` header row,
    ``#`` comments, a tab instead of the comma); ``path`` is relative to the audio root.

    Raises:
        AnnotationError: a row of another width, a number that is not one, or the checks of
            every format, naming the line.
    """
    body, delimiter = _csv_body(text, name)
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delimiter)
    events, first = [], True
    for row in reader:
        where = f"{name}: line {reader.line_num}"
        if not any(field.strip() for field in row):
            continue
        if first and row[0].strip().lower() == "path":
            first = False
            continue
        first = False
        while len(row) > 4 and not row[-1].strip() and len(row) not in (4, 6):
            row = row[:-1]
        if len(row) not in (4, 5, 6):
            raise AnnotationError(f"{where}: {len(row)} field(s), expected path,start,end,label[,low_hz,high_hz]")
        low = _number(row[4], "low_hz", where, optional=True) if len(row) > 4 else math.nan
        high = _number(row[5], "high_hz", where, optional=True) if len(row) > 5 else math.nan
        events.append(_event(Path(row[0].strip()).as_posix(), _number(row[1], "start", where),
                             _number(row[2], "end", where), low, high, row[3], where))
    return events


def read_decisions(text: str, name: str) -> tuple[list[Event], int]:
    """Events of a review round's decisions CSV (see the module docstring), and how many rows were
    ``unsure`` (ignored).

    Raises:
        AnnotationError: a missing column, an unknown decision, a ``correct`` row whose label is not
            its prediction, an ``other`` row without a label, or the checks of every format, naming
            the line.
    """
    body, delimiter = _csv_body(text, name)
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delimiter)
    header = [field.strip().lower() for field in next(reader, [])]
    missing = [column for column in DECISION_COLUMNS if column not in header]
    if missing:
        raise AnnotationError(f"{name}: line 1: a decisions table needs the column(s) {', '.join(missing)} "
                              f"(header {','.join(DECISION_COLUMNS)},...)")
    at = {column: header.index(column) for column in header}
    events, unsure = [], 0
    for row in reader:
        where = f"{name}: line {reader.line_num}"
        if not any(field.strip() for field in row):
            continue
        if len(row) != len(header):
            raise AnnotationError(f"{where}: {len(row)} field(s), the header has {len(header)}")
        cell = {column: row[at[column]].strip() for column in at}
        decision, predicted, label = cell["decision"].lower(), cell["predicted"], cell["label"]
        if decision not in DECISIONS:
            raise AnnotationError(f"{where}: decision {cell['decision']!r} is not one of {', '.join(DECISIONS)}")
        if decision == "unsure":
            unsure += 1
            continue
        if decision == "correct" and label and label != predicted:
            raise AnnotationError(f"{where}: a correct detection's label {label!r} is not its prediction {predicted!r} "
                                  "(mark it 'other' to correct the species)")
        if decision == "other" and not label:
            raise AnnotationError(f"{where}: an 'other' decision needs the right species in the label column")
        species = {"correct": predicted, "other": label, "wrong": NOISE_LABEL}[decision]
        events.append(_event(Path(cell["file"]).as_posix(), _number(cell["start"], "start", where),
                             _number(cell["end"], "end", where), math.nan, math.nan, species, where))
    return events, unsure


def detect_format(name: str, text: str) -> str:
    """``raven``, ``audacity``, ``decisions`` or ``csv`` for a file, from its header or its extension."""
    head = text.lstrip("\ufeff").split("\n", 1)[0]
    if BEGIN in head and "\t" in head:
        return "raven"
    columns = {column.strip().lower() for column in head.replace("\t", ",").split(",")}
    if {"decision", "predicted"} <= columns:
        return "decisions"
    if name.lower().endswith(".csv"):
        return "csv"
    return "audacity"


def annotation_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the annotation files (.txt, .csv, .tsv, hidden ones skipped) under it, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"annotations not found: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in ANNOTATION_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def read_annotations(path: str | Path, *, format: str = "auto", label_column: str | None = None,
                     notes: list[str] | None = None) -> list[Event]:
    """Every event in the file or folder ``path`` (format per file by header/extension, or ``format``).

    ``notes``: where a line per decisions table with ``unsure`` rows is added (how many were ignored).

    Raises:
        AnnotationError: the first malformed file, in one line naming it and the line.
        FileNotFoundError: ``path`` is neither a file nor a folder.
    """
    if format not in FORMATS:
        raise ValueError(f"annotation format must be one of {FORMATS}, got {format!r}")
    events: list[Event] = []
    exports: dict[str, Path] = {}  # a review's two exports: the CSV (class ids) and the Raven table (names)
    for file in annotation_files(path):
        text = _utf8(file.read_bytes(), str(file))
        kind = detect_format(file.name, text) if format == "auto" else format
        head = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r").split("\t")
        export = "decisions" if kind == "decisions" else "raven" if kind == "raven" and REVIEW_DECISION in head else ""
        if export:
            exports.setdefault(export, file)
            if len(exports) == 2:
                raise AnnotationError(f"{path} holds both exports of a review ({exports['decisions'].name} and "
                                      f"{exports['raven'].name}): give one of them, or each call is read twice")
        if kind == "raven":
            events += read_raven(text, str(file), label_column=label_column)
        elif kind == "audacity":
            events += read_audacity(text, str(file))
        elif kind == "decisions":
            found, unsure = read_decisions(text, str(file))
            events += found
            if unsure and notes is not None:
                notes.append(f"{file}: {unsure} unsure decision(s) ignored")
        else:
            events += read_annotation_csv(text, str(file))
    return events


def _stem(name: str) -> str:
    return PurePosixPath(name).stem


def match_events(events: Iterable[Event], recording_ids: Sequence[str]) -> tuple[dict[str, list[Event]], list[str]]:
    """Tie each event to one recording id (a path relative to the audio root).

    A name matches, in this order: the id itself; the id as the end of a longer path (a ``Begin
    Path`` from another machine, ``\\`` read as ``/``); a file name (``Begin File``) that one
    recording has; a stem (a table's or label file's name) that one recording has.

    Returns ``({recording id: its events, sorted by time}, issues)``: one line per event that names
    no recording, or several, with its source line. Duplicate events of a recording are kept once.
    """
    ids = list(recording_ids)
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for rid in ids:
        by_name.setdefault(PurePosixPath(rid).name, []).append(rid)
        by_stem.setdefault(_stem(rid), []).append(rid)
    known, cache = set(ids), {}
    matched: dict[str, list[Event]] = {}
    issues = []
    for event in events:
        if event.file not in cache:
            cache[event.file] = _match(event.file, known, ids, by_name, by_stem)
        found, reason = cache[event.file]
        if found is None:
            issues.append(f"{event.where}: {event.file!r} {reason}; event {event.start_s:g}-{event.end_s:g} s "
                          f"{event.label!r} not stored")
            continue
        matched.setdefault(found, []).append(event)
    return {rid: sorted(set(found), key=Event.key) for rid, found in matched.items()}, issues


def _match(name: str, known: set[str], ids: list[str], by_name: dict[str, list[str]],
           by_stem: dict[str, list[str]]) -> tuple[str | None, str]:
    """``(recording id, "")`` for one name, or ``(None, why not)``."""
    path = name.replace("\\", "/").strip()
    relative = Path(path).as_posix() if path else path
    if relative in known:
        return relative, ""
    suffixes = [rid for rid in ids if path.endswith("/" + rid)]
    if suffixes:
        return max(suffixes, key=len), ""
    base = PurePosixPath(path).name
    # a file name (Begin File), then a bare stem (a table's or a label file's own name)
    for table, what in ((by_name, "file name"), (by_stem, "stem")):
        candidates = table.get(base, [])
        if len(candidates) == 1:
            return candidates[0], ""
        if len(candidates) > 1:
            return None, f"matches {len(candidates)} recordings by {what} ({', '.join(candidates[:3])})"
    return None, "names no recording under the audio directory"


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length in seconds of the union of ``(start, end)`` intervals (overlaps counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def labels_from_events(events: Sequence[tuple[str, float, float]]) -> tuple[str, tuple[str, ...]]:
    """A recording's ``(main label, background labels)`` from its ``(class, start_s, end_s)`` events.

    The main label is the class with the most annotated time (union of its calls; ties go to the
    first class id in sorted order); the background is every other annotated class, sorted.
    :data:`NOISE_LABEL` (reviewed detections marked wrong) is the label only of a recording with no
    other annotated class, and never a background of one that has.
    """
    if not events:
        return "", ()
    time = {label: union_seconds((s, e) for c, s, e in events if c == label) for label in {c for c, _, _ in events}}
    if len(time) > 1:
        time.pop(NOISE_LABEL, None)
    main = min(time, key=lambda label: (-time[label], label))
    return main, tuple(sorted(label for label in time if label != main))


def past_end(events: Sequence[Event], duration: float, *, tolerance: float = 1e-3) -> list[Event]:
    """The events of a recording of ``duration`` seconds that end after it (by more than ``tolerance``)."""
    return [event for event in events if event.end_s > duration + tolerance]
