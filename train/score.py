"""Score a BirdCLEF 2017 run file against the truth: the challenge's MAP, one query at a time.

Run files are the challenge's: UTF-8 (a BOM is allowed), ``;``-separated, no header, one line per
predicted species of a query, at most 100 lines per query. Two kinds, told apart by the first line
(a ``:`` in the second field makes it a segment run); every line must be of that kind:

* recording run ``MediaId;ClassId;Probability;Rank``: a query is a recording;
* segment (soundscape) run ``MediaId;TC1-TC2;ClassId;Probability``, TC as ``hh:mm:ss``
  (e.g. ``00:00:05-00:00:10``): a query is one (MediaId, time code) segment; time codes are read
  and compared as :mod:`train.timecode` writes them.

The truth is a CSV with a header naming the columns ``MediaId``, ``ClassId``, optionally
``BackgroundClassIds`` (``;``-separated) and, for segment runs, ``TC``. A query may have several
lines (several main species); an empty ``ClassId`` declares a query with no main species.

A query's average precision is :func:`train.metrics.average_precision` on its list ordered by
probability, ties ranked pessimistically; a relevant species the list lacks contributes 0. Queries
with no relevant species are not scored, truth queries the run lacks score 0, and run queries the
truth lacks are ignored; each of the three is counted and reported.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from soundception.shared.errors import UserError, command_errors
from soundception.train.metrics import average_precision
from soundception.train.timecode import canonical_tc

MAX_SPECIES_PER_QUERY = 100  # the challenge's rule
RUN_KINDS = ("recording", "segment")
TRUTH_COLUMNS = ("MediaId", "ClassId", "BackgroundClassIds", "TC")

QueryKey = tuple[str, "str | None"]  # (MediaId, TC or None for recordings)
RunRow = tuple[str, "str | None", str, float, "int | None"]  # (MediaId, TC, ClassId, Probability, Rank)


class ScoreFileError(UserError):
    """A run file or truth file that cannot be scored; the message names the file and the line."""


# ----------------------------------------------------------------------------------- queries

def query_label(key: QueryKey) -> str:
    """A query as the run file writes it: ``MediaId`` or ``MediaId;TC``."""
    media_id, tc = key
    return media_id if tc is None else f"{media_id};{tc}"


# ----------------------------------------------------------------------------------- run files

@dataclass(frozen=True)
class RunFile:
    """A parsed run file: ``kind`` in :data:`RUN_KINDS`; ``rows`` in file order as
    ``(media_id, tc, class_id, probability, rank)``, ``tc`` None for recording runs (canonical
    ``hh:mm:ss-hh:mm:ss`` otherwise), ``rank`` None for segment runs."""

    kind: str
    rows: list[RunRow]


def _data_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``(line_number, text)`` of the non-blank lines of a UTF-8 file; an empty file is an error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScoreFileError(f"{path}: the {what} is not UTF-8 ({error.reason} at byte {error.start})") from None
    # split on newlines only, so line numbers are the ones an editor shows
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise ScoreFileError(f"{path}: the {what} is empty")
    return lines


def _run_kind(fields: list[str]) -> str:
    return "segment" if len(fields) > 1 and ":" in fields[1] else "recording"


def _parse_run_line(fields: list[str], kind: str) -> RunRow:
    """One run line's row; ``ValueError`` says what is wrong with it."""
    if len(fields) != 4:
        layout = "MediaId;TC1-TC2;ClassId;Probability" if kind == "segment" else "MediaId;ClassId;Probability;Rank"
        raise ValueError(f"expected 4 fields ({layout}), got {len(fields)}")
    if _run_kind(fields) != kind:
        raise ValueError(f"a {_run_kind(fields)} line in a {kind} run file")
    if kind == "segment":
        media_id, tc_text, class_id, probability_text = fields
        tc, rank = canonical_tc(tc_text), None
    else:
        media_id, class_id, probability_text, rank_text = fields
        if not (rank_text.isascii() and rank_text.isdigit()) or int(rank_text) < 1:
            raise ValueError(f"rank {rank_text!r} is not an integer >= 1")
        tc, rank = None, int(rank_text)
    if not media_id or not class_id:
        raise ValueError("empty MediaId or ClassId")
    try:
        probability = float(probability_text)
    except ValueError:
        raise ValueError(f"probability {probability_text!r} is not a number") from None
    if not 0.0 <= probability <= 1.0:  # NaN fails this too
        raise ValueError(f"probability {probability_text!r} is not in [0, 1]")
    return media_id, tc, class_id, probability, rank


def read_run_file(path: str | Path) -> RunFile:
    """Parse and check a BirdCLEF run file (layouts in the module docstring).

    Checked, with the file and line number in the error: 4 fields per line, one kind throughout,
    probabilities in [0, 1], valid time codes, integer ranks, no query listing a class twice, at
    most :data:`MAX_SPECIES_PER_QUERY` lines per query.

    **Rank** (recording runs) is checked, never used: the ranks of a query's n lines must be 1..n,
    each once, and a better rank may never have a lower probability. The order that is scored is
    the probabilities', ties ranked pessimistically, so a rank cannot break a tie.

    Raises:
        ScoreFileError: an unreadable, empty or malformed file.
    """
    path = Path(path)
    lines = _data_lines(path, "run file")
    kind = _run_kind([field.strip() for field in lines[0][1].split(";")])
    rows: list[RunRow] = []
    first_line: dict[tuple[QueryKey, str], int] = {}
    ranked: dict[QueryKey, list[tuple[int, int, float]]] = {}  # query -> (rank, line, probability)
    for number, text in lines:
        try:
            row = _parse_run_line([field.strip() for field in text.split(";")], kind)
        except ValueError as error:
            raise ScoreFileError(f"{path}, line {number}: {error}") from None
        media_id, tc, class_id, probability, rank = row
        key = (media_id, tc)
        if (key, class_id) in first_line:
            raise ScoreFileError(f"{path}, line {number}: query {query_label(key)} lists class {class_id} "
                                 f"again (first on line {first_line[key, class_id]})")
        first_line[key, class_id] = number
        ranked.setdefault(key, []).append((rank or 0, number, probability))
        if len(ranked[key]) > MAX_SPECIES_PER_QUERY:
            raise ScoreFileError(f"{path}, line {number}: query {query_label(key)} has more than "
                                 f"{MAX_SPECIES_PER_QUERY} species (the challenge's limit)")
        rows.append(row)
    if kind == "recording":
        _check_ranks(ranked, path)
    return RunFile(kind=kind, rows=rows)


def _check_ranks(ranked: dict[QueryKey, list[tuple[int, int, float]]], path: Path) -> None:
    """Each query's ranks are 1..n, each once, and never contradict the probabilities."""
    for key, entries in ranked.items():
        entries = sorted(entries)
        for expected, (rank, number, _) in enumerate(entries, start=1):
            if rank != expected:
                raise ScoreFileError(f"{path}, line {number}: rank {rank}: the {len(entries)} lines of query "
                                     f"{query_label(key)} must have ranks 1..{len(entries)}, each once")
        for (rank, better_line, better), (_, number, worse) in zip(entries, entries[1:]):
            if worse > better:
                raise ScoreFileError(f"{path}, line {number}: rank {rank + 1} has probability {worse}, above "
                                     f"rank {rank}'s {better} (line {better_line}); ranks must follow probability")


# ----------------------------------------------------------------------------------- truth

@dataclass(frozen=True)
class Truth:
    """The relevant species per query: ``main`` and ``background`` map each query key
    ``(media_id, tc)`` (``tc`` None for recordings) to a set of ClassIds; both have every query."""

    kind: str
    main: dict[QueryKey, frozenset[str]]
    background: dict[QueryKey, frozenset[str]]

    def relevant(self, *, background: bool) -> dict[QueryKey, frozenset[str]]:
        """Main species per query, plus background species when ``background``."""
        if not background:
            return dict(self.main)
        return {key: self.main[key] | self.background[key] for key in self.main}


def _truth_header(line: tuple[int, str], path: Path) -> list[str]:
    number, text = line
    header = [name.strip() for name in next(csv.reader([text]))]
    unknown = [name for name in header if name not in TRUTH_COLUMNS]
    missing = [name for name in ("MediaId", "ClassId") if name not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise ScoreFileError(f"{path}, line {number}: the header must name MediaId, ClassId and optionally "
                             f"BackgroundClassIds and TC, once each; got {','.join(header)}")
    return header


def _parse_truth_line(fields: list[str], header: list[str]) -> tuple[QueryKey, str, set[str]]:
    """``(query key, ClassId or "", background ClassIds)`` of one truth line; ``ValueError`` says what is wrong."""
    if len(fields) != len(header):
        raise ValueError(f"expected {len(header)} fields ({','.join(header)}), got {len(fields)}")
    record = {name: value.strip() for name, value in zip(header, fields)}
    if not record["MediaId"]:
        raise ValueError("empty MediaId")
    key = (record["MediaId"], canonical_tc(record["TC"]) if "TC" in record else None)
    background = {c.strip() for c in record.get("BackgroundClassIds", "").split(";") if c.strip()}
    return key, record["ClassId"], background


def read_truth(path: str | Path) -> Truth:
    """Parse a truth CSV (layout in the module docstring); ``kind`` is "segment" when it has a TC column.

    Raises:
        ScoreFileError: an unreadable or empty file, a bad header, a line with the wrong number of
            fields, an empty MediaId, a bad TC, or a query listing the same ClassId on two lines
            (the message names the file and the line).
    """
    path = Path(path)
    lines = _data_lines(path, "truth file")
    header = _truth_header(lines[0], path)
    main: dict[QueryKey, set[str]] = {}
    background: dict[QueryKey, set[str]] = {}
    first_line: dict[tuple[QueryKey, str], int] = {}
    for number, text in lines[1:]:
        try:
            key, class_id, extra = _parse_truth_line(next(csv.reader([text])), header)
        except ValueError as error:
            raise ScoreFileError(f"{path}, line {number}: {error}") from None
        if (key, class_id) in first_line:
            raise ScoreFileError(f"{path}, line {number}: query {query_label(key)} lists class "
                                 f"{class_id or '(none)'} again (first on line {first_line[key, class_id]})")
        first_line[key, class_id] = number
        main.setdefault(key, set()).update([class_id] if class_id else [])
        background.setdefault(key, set()).update(extra)
    if not main:
        raise ScoreFileError(f"{path}: the truth file has a header but no lines")
    return Truth(kind="segment" if "TC" in header else "recording",
                 main={key: frozenset(value) for key, value in main.items()},
                 background={key: frozenset(value) for key, value in background.items()})


# ----------------------------------------------------------------------------------- scoring

def _ranked_lists(run: RunFile) -> dict[QueryKey, dict[str, float]]:
    """ClassId -> probability per query of the run."""
    lists: dict[QueryKey, dict[str, float]] = {}
    for media_id, tc, class_id, probability, _ in run.rows:
        predicted = lists.setdefault((media_id, tc), {})
        if class_id in predicted:
            raise ScoreFileError(f"query {query_label((media_id, tc))} lists class {class_id} twice")
        if len(predicted) == MAX_SPECIES_PER_QUERY:
            raise ScoreFileError(f"query {query_label((media_id, tc))} has more than {MAX_SPECIES_PER_QUERY} species")
        predicted[class_id] = probability
    return lists


def query_average_precision(predicted: dict[str, float], relevant: frozenset[str]) -> float:
    """AP of one query: its predicted ClassId -> probability against its relevant ClassIds.

    The score vector covers the predicted classes plus the relevant ones the list lacks (score
    ``-inf``: never retrieved, precision 0). Other unlisted classes would also score ``-inf`` and
    rank after every listed one, so leaving them out changes nothing.
    """
    classes = list(predicted) + sorted(relevant - predicted.keys())
    scores = np.array([predicted.get(class_id, -np.inf) for class_id in classes], dtype=np.float64)
    return average_precision(scores, np.array([class_id in relevant for class_id in classes], dtype=bool))


def score(run: RunFile, truth: Truth, *, background: bool) -> dict[str, Any]:
    """BirdCLEF MAP of ``run`` against ``truth``: the mean AP over the truth's queries that have a
    relevant species (main ones, plus background ones when ``background``).

    Returns:
        ``map`` (``nan`` when no query has a relevant species), ``kind``, ``background``;
        ``n_queries`` (queries in the truth), ``n_scored`` (those with a relevant species: the MAP's
        denominator), ``n_no_relevant`` (the others, not scored), ``n_missing_from_run`` (scored
        queries the run lacks, AP 0), ``n_not_in_truth`` (run queries the truth lacks, ignored), and
        the queries behind the last three as sorted labels in ``no_relevant``,
        ``missing_from_run``, ``not_in_truth``.

    Raises:
        ScoreFileError: a run and a truth of different kinds (recordings against segments).
    """
    if run.kind != truth.kind:
        raise ScoreFileError(f"a {run.kind} run file cannot be scored against a {truth.kind} truth file "
                             f"(segment truth files have a TC column)")
    lists = _ranked_lists(run)
    relevant = truth.relevant(background=background)
    scored = {key: species for key, species in relevant.items() if species}
    values = [query_average_precision(lists[key], species) if key in lists else 0.0
              for key, species in scored.items()]
    no_relevant = sorted(query_label(key) for key in relevant.keys() - scored.keys())
    missing = sorted(query_label(key) for key in scored.keys() - lists.keys())
    not_in_truth = sorted(query_label(key) for key in lists.keys() - relevant.keys())
    return {
        "map": float(np.mean(values)) if values else float("nan"),
        "kind": run.kind,
        "background": background,
        "n_queries": len(relevant),
        "n_scored": len(scored),
        "n_no_relevant": len(no_relevant),
        "n_missing_from_run": len(missing),
        "n_not_in_truth": len(not_in_truth),
        "no_relevant": no_relevant,
        "missing_from_run": missing,
        "not_in_truth": not_in_truth,
    }


def _examples(labels: list[str], shown: int = 5) -> str:
    if not labels:
        return ""
    more = f", ... {len(labels) - shown} more" if len(labels) > shown else ""
    return f" (e.g. {', '.join(labels[:shown])}{more})"


def format_report(result: dict[str, Any]) -> str:
    """The lines ``soundception score`` prints for a :func:`score` result."""
    species = "main and background species" if result["background"] else "main species"
    value = "n/a" if math.isnan(result["map"]) else f"{result['map']:.4f}"
    return "\n".join([
        f"MAP {value} over {result['n_scored']} scored {result['kind']} queries ({species} relevant)",
        f"queries in the truth: {result['n_queries']}; scored: {result['n_scored']}; "
        f"no relevant species (not scored): {result['n_no_relevant']}{_examples(result['no_relevant'])}",
        f"missing from the run (scored 0): {result['n_missing_from_run']}{_examples(result['missing_from_run'])}",
        f"in the run but not in the truth (ignored): {result['n_not_in_truth']}"
        f"{_examples(result['not_in_truth'])}",
    ])


@click.command("score")
@click.argument("run_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("truth_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--background", is_flag=True, help="Count background species as relevant too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@command_errors()
def score_command(run_file: str, truth_csv: str, background: bool, as_json: bool) -> None:
    """BirdCLEF 2017 MAP of RUN_FILE (a challenge run file) against TRUTH_CSV."""
    result = score(read_run_file(run_file), read_truth(truth_csv), background=background)
    if as_json:
        click.echo(json.dumps({**result, "map": None if math.isnan(result["map"]) else result["map"]}))
    else:
        click.echo(format_report(result))
