"""Call annotations into the store: a class for every label, labels from events, the event table.

The driver calls :func:`annotate_store` once the recordings are registered and
:func:`events_past_end` once their durations are known. Both run in the driver only (it holds the
store's lock); the event table is small and rewritten whole (:func:`featurize.store.write_events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from soundception.featurize import store as store_io
from soundception.featurize.annotations import Event, labels_from_events, past_end
from soundception.shared import schema


def label_classes(labels: set[str], classes: list[str], names: list[str]) -> dict[str, str]:
    """``{label: class id}``; ``classes``/``names`` grow (appended) by the labels that match none.

    A label matches a class id exactly, else a class id or a class name ignoring case; a label that
    matches nothing becomes a new class whose id and name are the label.
    """
    lookup: dict[str, str] = {}
    for class_id, name in zip(classes, names):
        lookup.setdefault(name.lower(), class_id)
    lookup.update({class_id.lower(): class_id for class_id in classes})
    found = {}
    for label in sorted(labels):
        class_id = label if label in classes else lookup.get(label.lower())
        if class_id is None:
            classes.append(label)
            names.append(label)
            lookup[label.lower()] = class_id = label
        found[label] = class_id
    return found


def _table(matched: Mapping[str, list[Event]], rows: Mapping[str, int], label_class: Mapping[str, str],
           index: Mapping[str, int]) -> dict[str, np.ndarray]:
    events = [(rows[rid], event) for rid, found in matched.items() for event in found]
    return {
        "event_file": np.array([row for row, _ in events], dtype="int32"),
        "event_start_s": np.array([e.start_s for _, e in events], dtype="float64"),
        "event_end_s": np.array([e.end_s for _, e in events], dtype="float64"),
        "event_low_hz": np.array([e.low_hz for _, e in events], dtype="float64"),
        "event_high_hz": np.array([e.high_hz for _, e in events], dtype="float64"),
        "event_class": np.array([index[label_class[e.label]] for _, e in events], dtype="int32"),
    }


def _sorted(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows by (file, start, end, class, low, high): one order whatever the sources' order."""
    order = np.lexsort(tuple(table[name] for name in ("event_high_hz", "event_low_hz", "event_class",
                                                       "event_end_s", "event_start_s", "event_file")))
    return {name: values[order] for name, values in table.items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(a[name].shape == b[name].shape and np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f")
               for name in schema.PER_EVENT)


def annotate_store(group: zarr.Group, rows: Mapping[str, int], matched: Mapping[str, list[Event]],
                   metadata_labelled: set[str]) -> list[str]:
    """Store ``matched`` (``{recording id: its events}``) and the labels that follow from them.

    * Each label becomes a class (:func:`label_classes`; the class list only grows).
    * The events of every recording in ``matched`` replace that recording's stored events; other
      recordings keep theirs. Nothing is rewritten when the table is unchanged (a rerun).
    * A recording not in ``metadata_labelled`` gets its label and background from its events
      (:func:`featurize.annotations.labels_from_events`) when it is unlabelled, or its stored labels
      are those its previous events gave; a label from metadata, this run's or stored, is kept.

    Returns notes for the run's summary.
    """
    classes, names = store_io.stored_classes(group)
    before = len(classes)
    label_class = label_classes({e.label for found in matched.values() for e in found}, classes, names)
    if len(classes) != before:
        store_io.set_classes(group, classes, names)
    index = {class_id: i for i, class_id in enumerate(classes)}
    notes = []
    old = store_io.stored_events(group)
    if old is None:
        notes.append("the store's events were half-written by an interrupted run; they are replaced by this run's")
        old = store_io.stored_events_empty()
    covered = np.array(sorted(rows[rid] for rid in matched), dtype="int32")
    keep = ~np.isin(old["event_file"], covered)
    new = _table(matched, rows, label_class, index)
    table = _sorted({name: np.concatenate([old[name][keep], new[name]]) for name in schema.PER_EVENT})
    if not _same(table, old) or schema.EVENT_COUNT not in group.attrs:
        store_io.write_events(group, table)
    derived = _derive_labels(group, rows, matched, metadata_labelled, old, classes, label_class, index)
    notes.append(f"stored {sum(map(len, matched.values()))} call annotation(s) of {len(matched)} recording(s)"
                 + (f"; {len(classes) - before} new class(es): {', '.join(classes[before:][:8])}"
                    if len(classes) > before else "")
                 + (f"; labels of {derived} recording(s) from their annotations" if derived else ""))
    return notes


def _derive_labels(group: zarr.Group, rows: Mapping[str, int], matched: Mapping[str, list[Event]],
                   metadata_labelled: set[str], old: dict[str, np.ndarray], classes: list[str],
                   label_class: Mapping[str, str], index: Mapping[str, int]) -> int:
    """Write labels from events where :func:`annotate_store` says so; return how many changed."""
    labels = np.asarray(group["label"][...])
    backgrounds = schema.as_strings(group["background"][...])
    updates: dict[int, dict[str, Any]] = {}
    for rid, found in matched.items():
        row = rows[rid]
        if rid in metadata_labelled:
            continue
        mine = old["event_file"] == row
        previous = labels_from_events(list(zip((classes[c] for c in old["event_class"][mine]),
                                               old["event_start_s"][mine], old["event_end_s"][mine])))
        stored = (classes[labels[row]] if labels[row] >= 0 else "",
                  tuple(sorted(b for b in backgrounds[row].split(schema.BACKGROUND_SEPARATOR) if b)))
        if labels[row] >= 0 and stored != previous:
            continue  # a label from metadata, stored by an earlier run
        main, background = labels_from_events([(label_class[e.label], e.start_s, e.end_s) for e in found])
        if (main, background) != stored:
            updates[row] = {"label": index[main], "background": schema.BACKGROUND_SEPARATOR.join(background)}
    if updates:
        store_io.write_fields(group, updates)
    return len(updates)


def events_past_end(group: zarr.Group, rows: Mapping[str, int], matched: Mapping[str, list[Event]]) -> list[str]:
    """One line per event (stored) that ends after its recording, for recordings featurized by now."""
    durations = np.asarray(group["duration"][...])
    status = schema.as_strings(group["status"][...])
    issues = []
    for rid, found in matched.items():
        row = rows[rid]
        if status[row] != schema.DONE:
            continue
        for event in past_end(found, float(durations[row])):
            issues.append(f"{event.where}: event {event.start_s:g}-{event.end_s:g} s {event.label!r} ends after "
                          f"{rid} ({durations[row]:.3f} s long); stored as given")
    return issues
