"""How well the temporal attention marks annotated calls, and how well segments are scored.

The model learns from recording labels only; its temporal attention (paper 3.2) should still rise
where calls sound. Given true call times (a store's annotated events, ``featurize --annotations``,
or ``bench/localize.py``'s generated calls), every attention step of every window (hop: half a
window, as ``predict``) is mapped back to its time in the original recording (self-concatenation
undone) and labelled active when that time lies inside a call:

* ``auc_any`` / ``auc_main``: ROC AUC of the attention against that mask (any annotated call; the
  recording's main species' calls only), pooled over all steps of all files;
* ``segment_map_<s>``: BirdCLEF MAP of :func:`train.segments.segment_scores` over the segments of
  ``s`` seconds that hold a call, truth: every species calling in the segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundception.train.inference import FileWindows, file_windows
from soundception.train.metrics import mean_average_precision
from soundception.train.segments import segment_scores, step_times


@dataclass(frozen=True)
class Call:
    """One true call: ``species`` (class index), ``start`` and ``end`` (s, original recording), ``background``."""

    species: int
    start: float
    end: float
    background: bool


def store_calls(store: Any, index: int) -> list[Call]:
    """File ``index``'s annotated events as calls; background: a species other than the file's label."""
    events = store.events_of(index)
    label = int(store.table["label"][index])
    return [Call(int(c), float(s), float(e), int(c) != label)
            for c, s, e in zip(events["event_class"], events["event_start_s"], events["event_end_s"])]


def call_mask(seconds: np.ndarray, calls: list[Call]) -> np.ndarray:
    """bool, same shape as ``seconds``: the time lies inside a call (``start <= t < end``); NaN is False."""
    seconds = np.asarray(seconds, dtype=np.float64)
    inside = np.zeros(seconds.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        for call in calls:
            inside |= (seconds >= call.start) & (seconds < call.end)
    return inside


def step_labels(windows: FileWindows, calls: list[Call], *, width: int, n_frames: int, duration: float,
                pixels_per_second: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every attention step of one file with its original time and whether a call sounds then.

    Steps over a window's zero padding are dropped; self-concatenated repeats map to the same time.

    Returns:
        attention float32 ``(n,)``, seconds float64 ``(n,)`` in the original recording, active bool ``(n,)``.
    """
    if windows.temporal is None or windows.temporal.ndim != 2:
        raise ValueError("step labels need the temporal attention per time step, (n_windows, T16)")
    times = step_times(windows, windows.temporal.shape[1], width=width, n_frames=n_frames, duration=duration,
                       pixels_per_second=pixels_per_second)
    keep = ~np.isnan(times)
    return windows.temporal[keep], times[keep], call_mask(times[keep], calls)


def activity_auc(attention: np.ndarray, active: np.ndarray) -> float:
    """ROC AUC of ``attention`` (n,) as a detector of ``active`` (n,) bool; ties count half."""
    from sklearn.metrics import roc_auc_score

    attention, active = np.asarray(attention, dtype=np.float64), np.asarray(active, dtype=bool)
    if attention.shape != active.shape or attention.ndim != 1:
        raise ValueError(f"attention {attention.shape} and active {active.shape} must be equal 1-D shapes")
    if active.all() or not active.any():
        raise ValueError("the AUC needs both active and silent steps")
    return float(roc_auc_score(active, attention))


def segment_truth(bounds: np.ndarray, calls: list[Call], n_classes: int) -> np.ndarray:
    """bool ``(S, n_classes)``: species with a call overlapping segment ``[start, end)`` (touching is not overlap)."""
    bounds = np.asarray(bounds, dtype=np.float64)
    truth = np.zeros((len(bounds), n_classes), dtype=bool)
    for call in calls:
        truth[(bounds[:, 0] < call.end) & (bounds[:, 1] > call.start), call.species] = True
    return truth


def localisation(model: Any, store: Any, indices: Sequence[int], calls: dict[int, list[Call]], *, width: int,
                 device: Any, segment_seconds: float = 5.0, batch_size: int = 8) -> dict[str, float]:
    """The module docstring's measures over the files ``indices`` that have calls (``calls[index]``).

    Returns ``{"files", "steps", "auc_any", "auc_main", "segments", "segment_map_<s>"}``; an AUC
    that cannot be computed (no silent or no active step) is NaN.
    """
    config = store.config
    indices = [int(i) for i in indices if calls.get(int(i))]
    attention, active, main, scores, truths = [], [], [], [], []
    for windows in file_windows(model, store, indices, width=width, hop=max(1, width // 2), device=device,
                                batch_size=batch_size, attention=True):
        if windows.error:
            raise RuntimeError(f"{store.ids[windows.index]}: {windows.error}")
        geometry = {"width": width, "n_frames": int(store.table["n_frames"][windows.index]),
                    "duration": float(store.table["duration"][windows.index]),
                    "pixels_per_second": config.pixels_per_second}
        file_calls = calls[windows.index]
        steps, seconds, inside = step_labels(windows, file_calls, **geometry)
        attention.append(steps)
        active.append(inside)
        main.append(call_mask(seconds, [c for c in file_calls if not c.background]))
        scored = segment_scores(windows, **geometry, segment_seconds=segment_seconds, nyquist=config.sample_rate / 2)
        truth = segment_truth(scored.bounds, file_calls, len(store.classes))
        called = truth.any(axis=1)
        scores.append(scored.scores[called])
        truths.append(truth[called])

    def auc(mask: list[np.ndarray]) -> float:
        try:
            return activity_auc(np.concatenate(attention), np.concatenate(mask))
        except ValueError:
            return float("nan")

    if not indices:
        return {"files": 0}
    truth = np.concatenate(truths)
    return {"files": len(indices), "steps": int(sum(a.size for a in attention)), "auc_any": auc(active),
            "auc_main": auc(main), "segments": int(len(truth)),
            f"segment_map_{segment_seconds:g}": (mean_average_precision(np.concatenate(scores), truth)
                                                 if len(truth) else float("nan"))}
