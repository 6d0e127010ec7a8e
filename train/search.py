"""Search by example: rank every window of an embeddings Zarr by its similarity to query clips.

A lab with one good call of a rare species wants more of them to label. ``predict --embeddings``
writes each window's pooled main-branch features (:mod:`train.embeddings`); a query is the same
features for the query's span, and a window's similarity to it is the cosine of the angle between
the two vectors (1: the same direction). With several queries a window scores its best match
(the maximum over queries), so two examples of a call find what either finds.

The search is exact (brute force): the corpus is read a block of files at a time, each block is
one matrix product against the queries, and a running top list is kept, so memory holds one block
whatever the corpus size. Windows overlap (half a window apart by default); the hits returned do
not: a window that overlaps a better hit of the same file is left out (non-maximum suppression),
so the top N are N different places. The query's own span is left out of its own file's hits.

Times are recording time: a window that starts in the self-concatenated repeat of a short clip
(past ``duration_s``) is left out, and one that runs past the end is cut at it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from soundception.shared import schema
from soundception.train.config import UserError

BLOCK_BYTES = 256 * 2**20  # embeddings read per block


@dataclass(frozen=True)
class Span:
    """A query: ``file`` (an id of the embeddings group) from ``start_s`` to ``end_s`` (``None``: the whole file)."""

    file: str
    start_s: float | None = None
    end_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Span:
        """``FILE`` or ``FILE:START-END`` (seconds) -> a :class:`Span`; one-line ``UserError`` otherwise."""
        file, sep, times = text.rpartition(":")
        if not sep or "-" not in times:
            return cls(text)
        start, _, end = times.partition("-")
        try:
            span = cls(file, float(start), float(end))
        except ValueError:
            return cls(text)  # a file id that holds a colon, with no span
        if not (0 <= span.start_s < span.end_s):
            raise UserError(f"query {text!r}: the span must be START-END seconds with 0 <= START < END")
        return span


@dataclass(frozen=True)
class Hit:
    """One ranked window: ``file`` id, ``path`` of its audio, span in s, cosine ``similarity``."""

    rank: int
    file: str
    path: str
    start_s: float
    end_s: float
    similarity: float


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64; an all-zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def span_vector(embedding: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray, start_s: float | None,
                end_s: float | None) -> np.ndarray | None:
    """The query vector of a span, as one unit vector: the mean of the unit windows that hold the whole span,
    or, where none does (a span longer than a window), of those it overlaps, weighted by the overlap.

    Args:
        embedding: ``(n_windows, features)`` one file's window features.
        starts_s, ends_s: ``(n_windows,)`` the windows' spans, s.
        start_s, end_s: the query span, s (``None``: every window, equal weights).
    Returns:
        ``(features,)`` float64 of length 1, or ``None`` where no window overlaps the span.
    """
    if start_s is None:
        weights = np.ones(len(starts_s))
    else:
        holding = (starts_s <= start_s + 1e-9) & (ends_s >= end_s - 1e-9)
        overlap = np.clip(np.minimum(ends_s, end_s) - np.maximum(starts_s, start_s), 0.0, None)
        weights = holding.astype(np.float64) if holding.any() else overlap
    if not np.any(weights > 0):
        return None
    return unit((weights[:, None] * unit(embedding)).sum(axis=0))


def _files(group: zarr.Group) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """ids, audio paths, windows written and durations (s; inf where the group predates them) per file."""
    ids = schema.as_strings(group["file"][...]).tolist()
    paths = schema.as_strings(group["path"][...]).tolist() if "path" in group else list(ids)
    paths = [p or i for p, i in zip(paths, ids)]
    durations = group["duration_s"][...] if "duration_s" in group else np.full(len(ids), np.inf)
    durations = np.where(np.isfinite(durations) & (durations > 0), durations, np.inf)
    return ids, paths, group["n_windows"][...].astype(np.int64), durations


def query_vectors(group: zarr.Group, spans: Sequence[Span]) -> np.ndarray:
    """``(len(spans), features)`` unit query vectors read from ``group``; one-line ``UserError`` for a bad span."""
    ids, _, n_windows, durations = _files(group)
    rows = {file_id: k for k, file_id in enumerate(ids)}
    vectors = []
    for span in spans:
        if span.file not in rows:
            raise UserError(f"query {span.file!r}: no such file in the embeddings (ids look like {ids[0]!r})")
        k = rows[span.file]
        count = int(n_windows[k])
        if count == 0:
            raise UserError(f"query {span.file!r}: its embeddings are not written yet (predict failed or stopped)")
        vector = span_vector(group["embedding"][k, :count], group["start_s"][k, :count],
                             np.minimum(group["end_s"][k, :count], durations[k]), span.start_s, span.end_s)
        if vector is None:
            raise UserError(f"query {span.file}:{span.start_s:g}-{span.end_s:g}: no window overlaps this span "
                            f"(the recording's windows end at {float(group['end_s'][k, count - 1]):.1f} s)")
        vectors.append(vector)
    return np.stack(vectors)


def search(group: zarr.Group, queries: np.ndarray, *, top: int = 100, exclude: Sequence[Span] = (),
           block_bytes: int = BLOCK_BYTES) -> list[Hit]:
    """The ``top`` windows of ``group`` most similar to ``queries``, best first, none overlapping another.

    Args:
        group: an embeddings group (:mod:`train.embeddings`).
        queries: ``(Q, features)`` query vectors (any length; compared by cosine).
        top: hits to return (fewer where the corpus has fewer separate windows).
        exclude: spans left out of the hits (a window overlapping one, in its file, is skipped);
            a span without times leaves out the whole file.
        block_bytes: embeddings read per block.
    Returns:
        :class:`Hit` list, rank 1 first; similarity = max over queries of the cosine.
    """
    queries = unit(np.atleast_2d(queries)).astype(np.float32)
    array = group["embedding"]
    if queries.shape[1] != array.shape[2]:
        raise UserError(f"queries have {queries.shape[1]} features, the embeddings {array.shape[2]}")
    ids, paths, n_windows, durations = _files(group)
    window_s = float(group.attrs.get("window_seconds", 0.0))
    hop_s = float(group.attrs.get("hop_seconds", window_s)) or window_s
    # a kept hit hides at most 2 * ceil(window / hop) - 2 overlapping windows, so this many candidates suffice
    pool = top * (2 * math.ceil(window_s / hop_s) - 1 if window_s > 0 else 1)
    excluded: dict[int, list[Span]] = {}
    rows = {file_id: k for k, file_id in enumerate(ids)}
    for span in exclude:
        if span.file in rows:
            excluded.setdefault(rows[span.file], []).append(span)
    best = {"score": np.empty(0, np.float32), "row": np.empty(0, np.int64), "window": np.empty(0, np.int64),
            "start": np.empty(0), "end": np.empty(0)}
    per_file = max(1, int(n_windows.max(initial=1))) * array.shape[2] * 4
    step = max(1, block_bytes // per_file)
    for first in range(0, len(ids), step):
        last = min(first + step, len(ids))
        width = int(n_windows[first:last].max(initial=0))
        if width == 0:
            continue
        block = array[first:last, :width]  # (files, windows, features), NaN past each file's n_windows
        starts = group["start_s"][first:last, :width]
        ends = group["end_s"][first:last, :width]
        valid = np.arange(width)[None, :] < n_windows[first:last, None]
        valid &= starts < durations[first:last, None]
        for k, spans in excluded.items():
            if first <= k < last:
                for span in spans:
                    if span.start_s is None:
                        valid[k - first] = False
                    else:
                        valid[k - first] &= ~((starts[k - first] < span.end_s) & (ends[k - first] > span.start_s))
        f, w = np.nonzero(valid)
        if len(f) == 0:
            continue
        flat = block.reshape(-1, block.shape[2])  # one pass for the products, one for the norms
        norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
        every = (flat @ queries.T).max(axis=1) / np.where(norms > 0, norms, 1.0)
        scores = every.reshape(valid.shape)[f, w]
        valid_scores = np.isfinite(scores)  # a window left NaN (never written) is no hit
        f, w, scores = f[valid_scores], w[valid_scores], scores[valid_scores]
        found = {"score": scores.astype(np.float32), "row": f + first, "window": w, "start": starts[f, w],
                 "end": np.minimum(ends[f, w], durations[f + first])}
        best = {name: np.concatenate([best[name], found[name]]) for name in best}
        if len(best["score"]) > pool:
            keep = np.argpartition(-best["score"], pool)[:pool]
            best = {name: values[keep] for name, values in best.items()}
    order = np.lexsort((best["window"], best["row"], -best["score"]))  # ties: file order, then time
    hits: list[Hit] = []
    kept: dict[int, list[tuple[float, float]]] = {}
    for i in order:
        row, start, end = int(best["row"][i]), float(best["start"][i]), float(best["end"][i])
        if any(start < e and end > s for s, e in kept.get(row, [])):
            continue
        kept.setdefault(row, []).append((start, end))
        hits.append(Hit(len(hits) + 1, ids[row], paths[row], round(start, 3), round(end, 3), float(best["score"][i])))
        if len(hits) == top:
            break
    return hits


def recording_seconds(group: zarr.Group) -> dict[str, float]:
    """file id -> recording duration, s, in the group's order, where the group holds it (for a combined Raven table)."""
    ids, _, _, seconds = _files(group)
    return {i: float(s) for i, s in zip(ids, seconds) if np.isfinite(s)}


SEARCH_COLUMNS = ("rank", "file", "path", "start_s", "end_s", "similarity")


def hits_csv(hits: Sequence[Hit]) -> str:
    """``rank,file,path,start_s,end_s,similarity``, best first (similarity to 1e-6)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SEARCH_COLUMNS)
    for h in hits:
        writer.writerow([h.rank, h.file, h.path, repr(h.start_s), repr(h.end_s), repr(round(h.similarity, 6))])
    return buffer.getvalue()


def hits_raven(hits: Sequence[Hit], *, label: str, nyquist: float, seconds: dict[str, float]) -> str:
    """The hits as one Raven selection table (:func:`train.tables.raven_text`), best first.

    ``label`` fills the Species column and the similarity the Score column. Begin/End Time count
    from the start of the first recording with the group's files laid end to end (Raven's combined
    table), where every duration is known (``seconds``); otherwise they equal the file offsets.
    """
    from soundception.train import tables

    order = list(seconds)
    offsets = None
    if all(h.file in seconds for h in hits):
        starts = np.concatenate([[0.0], np.cumsum([seconds[f] for f in order])])
        offsets = {f: float(s) for f, s in zip(order, starts)}
    rows = [tables.Detection(h.file, h.start_s, h.end_s, label, label, round(h.similarity, 6), h.rank, 0.0,
                             round(nyquist, 1), h.path) for h in hits]
    return tables.raven_text(rows, offsets=offsets)
