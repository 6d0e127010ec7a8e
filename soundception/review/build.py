"""``soundception review``: a folder a person opens from disk to listen to, look at and judge detections.

It reads a ``predict --segments`` output folder (its journal, ``settings.json``, ``classes.csv`` and
``featurizer_config.json``; never the checkpoint) and writes::

    PREDICTIONS/review/
        index.html, review.js, review.css   the page (package data, copied as is); works from file://
        data.js          window.REVIEW = {...}: review id, classes, recordings, cards
        media/<hash>.jpg a card's clip as the featurizer's image (300 x 128 px)
        media/<hash>.ogg the clip itself, cut from the decoded recording (Ogg Vorbis)
        failures.csv     file,path,error: recordings whose audio could not be read (cards kept, no media)

The detections are the rows ``predict``'s tables list (the run's ``--top-k`` species per segment
scoring at least its ``--min-score``). Per species the page shows a census of the ``top`` best and
a sample stratified over ``bins`` equal score bins on ``[min_score, 1]``, ``per_bin`` cards from
each bin's remaining detections; a card's ``weight`` is how many detections it stands for (1 in the
census, the bin's size over its cards in a bin), so the weights of a species sum to its number of
detections and precision at any threshold can be estimated without bias. Decisions live in the
browser (localStorage under the review id, and the exported CSV): a rerun rewrites the folder and
keeps them; media already made for a clip are reused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from soundception.shared.decisions import DECISION_COLUMNS
from soundception.shared.errors import UserError
from soundception.shared.files import write_text

PAGE_FILES = ("index.html", "review.js", "review.css")


@dataclass(frozen=True)
class ReviewOptions:
    """What to put on the page.

    Attributes:
        top: census cards per species (its best detections by score).
        per_bin: cards sampled from each score bin's remaining detections.
        bins: equal-width score bins over ``[min_score, 1]`` (the run's ``--min-score``).
        context_seconds: audio shown and played on each side of a detection, s.
        classes: only these species (class ids or names); empty: every species detected.
        seed: the sample's seed (each species draws from its own stream, so adding one leaves the rest).
    """

    top: int = 10
    per_bin: int = 5
    bins: int = 5
    context_seconds: float = 1.0
    classes: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top < 0 or self.per_bin < 0 or self.bins < 1:
            raise UserError(f"--top and --per-bin must be >= 0 and --bins >= 1, got {self.top}, {self.per_bin}, "
                            f"{self.bins}")
        if not self.context_seconds >= 0:
            raise UserError(f"--context must be >= 0 s, got {self.context_seconds}")


@dataclass(frozen=True)
class Sample:
    """Cards chosen from one species' detections: ``index`` into its scores, ``weight`` (detections each
    stands for) and ``stratum`` (-1: the top census, else the score bin), all ``(k,)``."""

    index: np.ndarray
    weight: np.ndarray
    stratum: np.ndarray


def stratified_sample(scores: np.ndarray, *, top: int, per_bin: int, bins: int, lowest: float,
                      rng: np.random.Generator) -> Sample:
    """The ``top`` best of ``scores`` (ties: earlier first), then up to ``per_bin`` drawn without
    replacement from each of ``bins`` equal bins of ``[lowest, 1]`` among the rest.

    Args:
        scores: float ``(n,)`` in [0, 1], one species' detections in a fixed order.

    Returns:
        A :class:`Sample`; census cards weigh 1, a bin's cards ``bin size / cards drawn`` each, so
        ``weight.sum() == n``. Within a bin the drawn indices are in ascending order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    census = order[:top]
    rest = np.sort(order[top:])
    edges = np.linspace(lowest, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, scores[rest], side="right") - 1, 0, bins - 1)
    index, weight, stratum = [census], [np.ones(census.size)], [np.full(census.size, -1)]
    for b in range(bins):
        members = rest[which == b]
        chosen = np.sort(rng.choice(members, size=min(per_bin, members.size), replace=False)) if members.size else members
        if chosen.size:
            index.append(chosen)
            weight.append(np.full(chosen.size, members.size / chosen.size))
            stratum.append(np.full(chosen.size, b))
    return Sample(np.concatenate(index).astype(np.int64), np.concatenate(weight), np.concatenate(stratum).astype(np.int64))


# ------------------------------------------------------------------------------------------ the run


@dataclass
class Run:
    """What review reads of a predict folder: settings, classes, config, and every detection.

    Attributes:
        recordings: per recording ``{"file", "path", "duration", "segments" (S, 2) s, "bands" (S, 2) Hz}``,
            sorted by file id.
        detection: int ``(D, 3)`` rows ``(recording, segment, class)``; score: float ``(D,)``.
    """

    settings: dict[str, Any]
    class_ids: list[str]
    class_names: list[str]
    featurizer_config: dict[str, Any]
    recordings: list[dict[str, Any]]
    detection: np.ndarray
    score: np.ndarray


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no {path.name}; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None


def read_run(predictions: Path) -> Run:
    """Read a ``predict --segments`` folder; one-line :class:`UserError` for anything review cannot use."""
    from soundception.train.journal import read_entries

    if not predictions.is_dir():
        raise UserError(f"{predictions}: no such folder (give the --out folder of soundception predict)")
    settings = _read_json(predictions / "settings.json", "is it the --out folder of soundception predict?")
    options = settings.get("options", {})
    segment_seconds = options.get("segment_seconds")
    if segment_seconds is None:
        raise UserError(f"{predictions} was predicted without segments: rerun the same predict command with "
                        "--segments N (e.g. 5); its journal is reused, so only the segments are computed")
    config = _read_json(predictions / "featurizer_config.json", "rerun the same predict command to write it")
    classes = predictions / "classes.csv"
    if not classes.is_file():
        raise UserError(f"{predictions}: no classes.csv (written by predict since review exists); rerun the same "
                        "predict command to write it (its journal is reused)")
    with open(classes, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(r.get("class_id") is None or r.get("class_name") is None for r in rows):
        raise UserError(f"{classes}: expected the columns class_id,class_name (written by predict); rerun the "
                        "same predict command to write it again (its journal is reused)")
    class_ids, class_names = [r["class_id"] for r in rows], [r["class_name"] for r in rows]
    top_k, min_score = int(options.get("top_k", 5)), float(options.get("min_score", 0.0))
    recordings, found = [], []  # only each entry's rows are kept, not its (segments, classes) scores
    for key, prediction in read_entries(predictions):
        fields = json.loads(key)  # an entry of an earlier run (another checkpoint or segment length) is left out
        if fields.get("checkpoint") != settings.get("checkpoint_sha256") or fields.get("segment_seconds") != segment_seconds:
            continue
        if prediction.segment_scores.ndim != 2 or prediction.segment_scores.shape[1] != len(class_ids):
            raise UserError(f"{predictions}: the journal entry of {prediction.file!r} has "
                            f"{prediction.segment_scores.shape[-1]} classes, classes.csv {len(class_ids)}")
        recordings.append({"file": prediction.file, "path": prediction.path, "duration": prediction.duration,
                           "segments": np.asarray(prediction.segments), "bands": np.asarray(prediction.bands)})
        found.append(table_rows(prediction.segment_scores, top_k=top_k, min_score=min_score))
    if not recordings:
        raise UserError(f"{predictions / 'journal'}: no entries of this run's checkpoint and segments")
    order = sorted(range(len(recordings)), key=lambda i: recordings[i]["file"])
    detection = np.concatenate([np.column_stack([np.full(len(found[i][0]), r), found[i][0]])
                                for r, i in enumerate(order)]).astype(np.int64)
    score = np.concatenate([found[i][1] for i in order])
    return Run(settings, class_ids, class_names, config, [recordings[i] for i in order], detection, score)


def table_rows(segment_scores: np.ndarray, *, top_k: int, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows predict's tables list for one recording: ``(segment, class)`` int ``(D, 2)`` in segment, then
    rank order, and their scores ``(D,)`` rounded as the tables round them (6 decimals)."""
    values = np.asarray(segment_scores, dtype=np.float64)
    chosen = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    segment = np.repeat(np.arange(values.shape[0]), chosen.shape[1])
    chosen = chosen.reshape(-1)
    kept = values[segment, chosen] >= min_score
    return np.column_stack([segment[kept], chosen[kept]]), np.round(values[segment, chosen][kept], 6)


# ------------------------------------------------------------------------------------------ the cards


def species_stream(seed: int, class_id: str) -> np.random.Generator:
    """The random stream of one species' sample: seeded by the seed and the class id (not its position)."""
    return np.random.default_rng([seed, zlib.crc32(class_id.encode("utf-8"))])


def choose_cards(run: Run, options: ReviewOptions) -> list[dict[str, Any]]:
    """Every card, species by species in class order: census by score, then bins in order."""
    wanted = set(range(len(run.class_ids)))
    if options.classes:
        lookup = {name: i for i, name in enumerate(run.class_names)} | {c: i for i, c in enumerate(run.class_ids)}
        unknown = [c for c in options.classes if c not in lookup]
        if unknown:
            raise UserError(f"--classes: no class {unknown[0]!r} in this run (ids or names from classes.csv)")
        wanted = {lookup[c] for c in options.classes}
    lowest = float(run.settings.get("options", {}).get("min_score", 0.0))
    edges = np.linspace(lowest, 1.0, options.bins + 1)
    cards = []
    for c in sorted(wanted):
        rows = np.flatnonzero(run.detection[:, 2] == c)  # recording, then segment order
        if not rows.size:
            continue
        sample = stratified_sample(run.score[rows], top=options.top, per_bin=options.per_bin, bins=options.bins,
                                   lowest=lowest, rng=species_stream(options.seed, run.class_ids[c]))
        for i, weight, stratum in zip(sample.index, sample.weight, sample.stratum):
            recording, segment, _ = run.detection[rows[i]]
            cards.append(_card(run, int(recording), int(segment), c, float(run.score[rows[i]]), float(weight),
                               "top" if stratum < 0 else f"{edges[stratum]:.2f}-{edges[stratum + 1]:.2f}",
                               options.context_seconds))
    return cards


def _card(run: Run, recording: int, segment: int, c: int, score: float, weight: float, stratum: str,
          context: float) -> dict[str, Any]:
    r = run.recordings[recording]
    start, end = (round(float(x), 3) for x in r["segments"][segment])
    low, high = (round(float(x), 1) for x in r["bands"][segment])
    clip = (round(max(0.0, start - context), 3), round(min(r["duration"], end + context), 3))
    return {"key": f"{r['path']}|{start:.3f}|{end:.3f}|{run.class_ids[c]}", "recording": recording, "start": start,
            "end": end, "class": c, "score": score, "weight": round(weight, 6), "stratum": stratum, "low": low,
            "high": high, "clip": clip}


def review_id(settings: dict[str, Any]) -> str:
    """The key of the page's decisions in localStorage: the checkpoint's sha256 and the segment length.

    The same model's detection of one species in one span of one audio file (a card's ``key``: source
    path, start, end, class id) is the same detection in any run folder, so a rerun of predict or
    review, another sample or another predictions folder over the same audio keeps its decisions.
    """
    what = [settings.get("checkpoint_sha256"), settings.get("options", {}).get("segment_seconds")]
    return hashlib.sha1(json.dumps(what).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the folder


def build_review(predictions: str | Path, out: str | Path | None = None, options: ReviewOptions = ReviewOptions(),
                 *, progress: bool = False) -> dict[str, Any]:
    """Write the review folder (see the module docstring); returns ``{"out", "cards", "species", "failed", "index"}``."""
    from soundception.review.media import clip_media

    predictions = Path(predictions)
    out = Path(out) if out is not None else predictions / "review"
    run = read_run(predictions)
    cards = choose_cards(run, options)
    if not cards:
        raise UserError(f"{predictions}: no detections of the chosen species")
    media, failures = clip_media(run, cards, out / "media", progress=progress)
    for card in cards:
        card["media"] = media.get((card["recording"], card["clip"]))
    for name in PAGE_FILES:
        write_text(out / name, resources.files("soundception.review").joinpath("page", name).read_text("utf-8"))
    write_text(out / "data.js", "window.REVIEW = " + json.dumps(page_data(run, cards, options), separators=(",", ":"))
               + ";\n")
    write_failures(out / "failures.csv", failures)
    kept = {m + suffix for m in media.values() for suffix in (".jpg", ".ogg")}
    for stale in (out / "media").glob("*"):  # clips of an earlier sample; decisions are not in this folder
        if stale.is_file() and stale.name not in kept:
            stale.unlink()
    return {"out": str(out), "index": str((out / "index.html").resolve()), "cards": len(cards),
            "species": len({c["class"] for c in cards}), "failed": len(failures)}


def page_data(run: Run, cards: list[dict[str, Any]], options: ReviewOptions) -> dict[str, Any]:
    """What ``data.js`` holds: the cards, and the tables they point into."""
    return {"id": review_id(run.settings), "columns": list(DECISION_COLUMNS),
            "classes": [[i, n] for i, n in zip(run.class_ids, run.class_names)],
            "nyquist": float(run.featurizer_config.get("sample_rate", 22050)) / 2,
            "recordings": [[r["file"], r["path"], round(r["duration"], 3)] for r in run.recordings],
            "options": {"top": options.top, "per_bin": options.per_bin, "bins": options.bins, "seed": options.seed,
                        "context_seconds": options.context_seconds},
            "cards": cards}


def write_failures(path: Path, failures: Sequence[tuple[str, str, str]]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "path", "error"))
    writer.writerows(failures)
    return write_text(path, text.getvalue())

