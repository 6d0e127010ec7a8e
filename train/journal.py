"""The prediction journal: one ``OUT/journal/<hash>.npz`` per predicted recording.

Each entry is written atomically as its recording finishes (a temporary file renamed into place),
so a crash loses nothing written and never leaves a half entry under an ``.npz`` name. An entry
holds its key (what its scores depend on, see :func:`train.predict.result_key`); a rerun reuses
an entry only where the key matches. The tables are rebuilt from the journal one entry at a time,
so the memory of a run does not grow with the number of recordings.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soundception.shared.files import atomic_write

JOURNAL_VERSION = 1
# what np.load raises for an entry that is missing, or was cut short by a crash mid-write
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass
class Prediction:
    """One recording's answers, as kept in the journal.

    Attributes:
        file: file id; duration: original length, s; path: the audio's path (for Raven).
        scores: float32 ``(n_classes,)`` mean window softmax.
        segments: float64 ``(S, 2)`` segment bounds, s; segment_scores float32 ``(S, n_classes)``;
            bands float64 ``(S, 2)`` low/high Hz (all ``(0, ...)`` without segments).
    """

    file: str
    duration: float
    path: str
    scores: np.ndarray
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    segment_scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    bands: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def journal_path(out: Path, file_id: str) -> Path:
    """Where ``file_id``'s entry lives under the output folder ``out``."""
    return Path(out) / "journal" / (hashlib.sha1(file_id.encode("utf-8")).hexdigest()[:20] + ".npz")


def write_journal(out: Path, key: str, prediction: Prediction) -> None:
    """Atomically write one recording's entry (a temporary file renamed into place)."""
    path = journal_path(out, prediction.file)
    with atomic_write(path) as handle:  # its temporary name is not *.npz: only complete entries carry that name
        np.savez(handle, key=np.array(key), file_id=np.array(prediction.file), path=np.array(prediction.path),
                 duration=np.array(prediction.duration), scores=prediction.scores, segments=prediction.segments,
                 segment_scores=prediction.segment_scores, bands=prediction.bands)


def holds(out: Path, file_id: str, key: str) -> bool:
    """True when the journal has a readable entry for ``file_id`` made with ``key`` (reads only the key)."""
    try:
        with np.load(journal_path(out, file_id)) as entry:
            return str(entry["key"]) == key and str(entry["file_id"]) == file_id
    except _UNREADABLE:
        return False


def read_journal(out: Path, file_id: str, key: str) -> Prediction | None:
    """The journal's entry for ``file_id`` if it was made with ``key``; ``None`` otherwise or if unreadable."""
    try:
        with np.load(journal_path(out, file_id)) as entry:
            if str(entry["key"]) != key or str(entry["file_id"]) != file_id:
                return None
            return _prediction(entry)
    except _UNREADABLE:
        return None


def _prediction(entry: np.lib.npyio.NpzFile) -> Prediction:
    """The :class:`Prediction` an open entry holds."""
    return Prediction(file=str(entry["file_id"]), duration=float(entry["duration"]), path=str(entry["path"]),
                      scores=entry["scores"], segments=entry["segments"], segment_scores=entry["segment_scores"],
                      bands=entry["bands"])


def read_entries(out: Path) -> Iterator[tuple[str, Prediction]]:
    """Every readable entry of the journal under ``out`` as ``(key, prediction)``, in file-name order,
    whatever its key (a reader such as ``soundception review`` filters on the key's fields)."""
    for path in sorted((Path(out) / "journal").glob("*.npz")):
        try:
            with np.load(path) as entry:
                yield str(entry["key"]), _prediction(entry)
        except _UNREADABLE:
            continue
