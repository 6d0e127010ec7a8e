"""Raven selection tables of a store's annotated calls (the events ``featurize --annotations`` stored).

Columns (stable, in this order; Raven Pro's own names)::

    Selection  View  Channel  Begin Time (s)  End Time (s)  Low Freq (Hz)  High Freq (Hz)
    Species  Begin File  Begin Path  File Offset (s)

``Species`` is the class id, ``Begin Path`` the audio file under the store's audio root, ``File
Offset (s)`` the time inside that file. An event stored without a band is written from 0 Hz to
the Nyquist frequency (``sample_rate / 2``), as Raven shows a selection over the whole band.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath

import numpy as np

from soundception.shared.reader import FeatureStore

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Begin File", "Begin Path", "File Offset (s)")


def _seconds(value: float) -> str:
    return f"{value:.6f}"


def events_to_raven(store: FeatureStore, file_id: str | None = None) -> str:
    """A Raven selection table (text, tab-separated, one header line) of the store's events.

    ``file_id`` given: that recording's events, ``Begin Time`` from its start (a table Raven opens
    beside that file). None: one table for every file that has events, in store order, ``Begin
    Time`` counting on across files by their ``duration`` and ``File Offset (s)`` the time inside
    each file (Raven's layout for a table over several files).

    Raises:
        KeyError: ``file_id`` is not in the store.
    """
    ids = list(store.ids)
    if file_id is not None and file_id not in ids:
        raise KeyError(f"{file_id!r} is not a file of {store.url}")
    events = store.events
    rows = np.flatnonzero(events["event_file"] == ids.index(file_id)) if file_id is not None else np.arange(
        len(events["event_file"]))
    files = sorted({int(f) for f in events["event_file"][rows]})
    durations = store.table["duration"]
    offsets, total = {}, 0.0
    for index in files:  # where each file starts in a table over several files
        offsets[index] = total if file_id is None else 0.0
        total += float(durations[index]) if math.isfinite(durations[index]) else 0.0
    nyquist = store.config.sample_rate / 2
    root = str(store.attrs.get("audio_root", "")).rstrip("/")
    lines = ["\t".join(RAVEN_COLUMNS)]
    for selection, row in enumerate(sorted(rows, key=lambda r: (files.index(int(events["event_file"][r])),
                                                                 events["event_start_s"][r])), start=1):
        index = int(events["event_file"][row])
        start, end = float(events["event_start_s"][row]), float(events["event_end_s"][row])
        low, high = float(events["event_low_hz"][row]), float(events["event_high_hz"][row])
        name = ids[index]
        lines.append("\t".join([
            str(selection), "Spectrogram 1", "1", _seconds(offsets[index] + start), _seconds(offsets[index] + end),
            f"{0.0 if math.isnan(low) else low:.3f}", f"{nyquist if math.isnan(high) else high:.3f}",
            store.classes[int(events["event_class"][row])], PurePosixPath(name).name,
            f"{root}/{name}" if root else name, _seconds(start),
        ]))
    return "\n".join(lines) + "\n"
