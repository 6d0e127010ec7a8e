"""The run-file scorer: hand-made run files with hand-computed MAPs, sklearn, and every rejected input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import label_ranking_average_precision_score

from soundception.cli import main
from soundception.train.score import ScoreFileError, read_run_file, read_truth, score

TRUTH = "MediaId,ClassId,BackgroundClassIds\n"


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def ranked(media_id: str, classes: list[str], probabilities: list[float] | None = None) -> str:
    """Recording-run lines for ``classes`` in rank order (probabilities descending by default)."""
    probabilities = probabilities or [round(1 - 0.1 * i, 2) for i in range(len(classes))]
    return "".join(f"{media_id};{c};{p};{rank}\n"
                   for rank, (c, p) in enumerate(zip(classes, probabilities), start=1))


def scored(tmp_path, run_text: str, truth_text: str, *, background: bool = False) -> dict:
    run = read_run_file(write(tmp_path, "run.txt", run_text))
    return score(run, read_truth(write(tmp_path, "truth.csv", truth_text)), background=background)


def test_perfect_ranking_scores_one(tmp_path):
    run = ranked("1", ["a", "b", "c", "d"]) + ranked("2", ["c", "b", "a"])
    result = scored(tmp_path, run, TRUTH + "1,a,\n1,b,\n2,c,\n")
    assert result["map"] == 1.0 and result["n_scored"] == 2


def test_reversed_ranking_hand_computed(tmp_path):
    # query 1: relevant a, b at ranks 4 and 3 -> (1/3 + 2/4) / 2; query 2: relevant a at rank 3 -> 1/3
    run = ranked("1", ["d", "c", "b", "a"]) + ranked("2", ["c", "b", "a"])
    result = scored(tmp_path, run, TRUTH + "1,a,\n1,b,\n2,a,\n")
    assert result["map"] == pytest.approx(((1 / 3 + 2 / 4) / 2 + 1 / 3) / 2)


def test_relevant_species_missing_from_the_list_contributes_zero(tmp_path):
    # relevant a (rank 1) and z (not listed): (1 + 0) / 2, not 1
    result = scored(tmp_path, ranked("1", ["a", "b"]), TRUTH + "1,a,\n1,z,\n")
    assert result["map"] == pytest.approx(0.5)


def test_ties_are_pessimistic_and_rank_does_not_break_them(tmp_path):
    # a, b, c tied at 0.5; a has rank 1 but ranks behind both others -> 1/3
    run = ranked("1", ["a", "b", "c", "d"], [0.5, 0.5, 0.5, 0.1])
    assert scored(tmp_path, run, TRUTH + "1,a,\n")["map"] == pytest.approx(1 / 3)
    # two relevant in the tie: ranks 2 and 3 -> (1/2 + 2/3) / 2
    assert scored(tmp_path, run, TRUTH + "1,a,\n1,c,\n")["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_a_list_of_100_is_scored_and_101_rejected(tmp_path):
    classes = [f"s{i:03d}" for i in range(101)]
    probabilities = [1 - i / 1000 for i in range(101)]
    # the relevant s099 at rank 100 counts; s100 was cut off the list and contributes 0
    run = ranked("1", classes[:100], probabilities[:100])
    assert scored(tmp_path, run, TRUTH + "1,s099,\n")["map"] == pytest.approx(1 / 100)
    assert scored(tmp_path, run, TRUTH + "1,s100,\n")["map"] == 0.0
    with pytest.raises(ScoreFileError, match=r"run.txt, line 102: query 1 has more than 100"):
        read_run_file(write(tmp_path, "run.txt", ranked("0", ["a"]) + ranked("1", classes, probabilities)))


def test_duplicate_lines_are_rejected_with_their_line_numbers(tmp_path):
    run = write(tmp_path, "run.txt", "1;a;0.9;1\n1;b;0.5;2\n1;a;0.4;3\n")
    with pytest.raises(ScoreFileError, match=r"run.txt, line 3: query 1 lists class a again \(first on line 1\)"):
        read_run_file(run)
    truth = write(tmp_path, "truth.csv", TRUTH + "1,a,\n2,a,\n1,a,b\n")
    with pytest.raises(ScoreFileError, match=r"truth.csv, line 4: query 1 lists class a again \(first on line 2\)"):
        read_truth(truth)


@pytest.mark.parametrize(("line", "problem"), [
    ("1;b;0.5", "expected 4 fields"),
    ("1;b;0.5;2;x", "expected 4 fields"),
    ("1;b;high;2", "probability 'high' is not a number"),
    ("1;b;1.5;2", r"probability '1.5' is not in \[0, 1\]"),
    ("1;b;-0.1;2", r"probability '-0.1' is not in \[0, 1\]"),
    ("1;b;nan;2", r"probability 'nan' is not in \[0, 1\]"),
    ("1;b;0.5;2.0", "rank '2.0' is not an integer"),
    ("1;b;0.5;0", "rank '0' is not an integer >= 1"),
    ("1;b;0.5;3", "rank 3: the 2 lines of query 1 must have ranks 1..2"),
    ("1;b;0.5;1", "rank 1: the 2 lines of query 1 must have ranks 1..2"),
    ("1;b;0.95;2", r"rank 2 has probability 0.95, above rank 1's 0.9 \(line 1\)"),
    ("1;00:00:05-00:00:10;b;0.5", "a segment line in a recording run file"),
    (";b;0.5;2", "empty MediaId"),
])
def test_malformed_recording_lines_are_rejected_with_the_line_number(tmp_path, line, problem):
    with pytest.raises(ScoreFileError, match=rf"run.txt, line 3: {problem}"):
        read_run_file(write(tmp_path, "run.txt", f"1;a;0.9;1\n\n{line}\n"))  # the blank line still counts


@pytest.mark.parametrize(("line", "problem"), [
    ("1;00:00:05-00:00:1;b;0.5", "time code '00:00:05-00:00:1' is not hh:mm:ss-hh:mm:ss"),
    ("1;00:00:10-00:00:05;b;0.5", "time code '00:00:10-00:00:05' does not end after it starts"),
    ("1;00:61:00-00:62:00;b;0.5", "time code '00:61:00-00:62:00' is not hh:mm:ss"),
    ("1;b;0.5;1", "a recording line in a segment run file"),
])
def test_malformed_segment_lines_are_rejected_with_the_line_number(tmp_path, line, problem):
    with pytest.raises(ScoreFileError, match=rf"run.txt, line 2: {problem}"):
        read_run_file(write(tmp_path, "run.txt", f"1;00:00:00-00:00:05;a;0.9\n{line}\n"))


@pytest.mark.parametrize(("text", "problem"), [
    ("MediaId,Species\n1,a\n", "line 1: the header must name MediaId, ClassId"),
    ("MediaId,ClassId\n1,a\n2,a,b\n", "line 3: expected 2 fields"),
    ("MediaId,ClassId,TC\n1,a,00:00:05\n", "line 2: time code '00:00:05' is not hh:mm:ss-hh:mm:ss"),
    ("MediaId,ClassId,BackgroundClassIds\n,a,\n", "line 2: empty MediaId"),
    ("MediaId,ClassId\n", "the truth file has a header but no lines"),
])
def test_malformed_truth_is_rejected(tmp_path, text, problem):
    with pytest.raises(ScoreFileError, match=rf"truth.csv(,|:) {problem}"):
        read_truth(write(tmp_path, "truth.csv", text))


def test_empty_undecodable_and_bom_files(tmp_path):
    with pytest.raises(ScoreFileError, match=r"empty.txt: the run file is empty"):
        read_run_file(write(tmp_path, "empty.txt", "\n  \n"))
    with pytest.raises(ScoreFileError, match=r"latin.txt: the run file is not UTF-8"):
        read_run_file(write(tmp_path, "latin.txt", "1;m\xe9sange;0.5;1\n".encode("latin-1")))
    run = read_run_file(write(tmp_path, "bom.txt", "\ufeff1;mésange;0.5;1\r\n".encode()))
    assert run.kind == "recording" and run.rows == [("1", None, "mésange", 0.5, 1)]
    truth = read_truth(write(tmp_path, "bom.csv", "\ufeffMediaId,ClassId\n1,mésange\n".encode()))
    assert truth.main == {("1", None): frozenset({"mésange"})}


def test_special_queries_are_counted_and_kept_out_of_the_map(tmp_path):
    run = ranked("1", ["b", "a"]) + ranked("2", ["a"]) + ranked("9", ["a"])
    # 1: a at rank 2 -> 1/2; 2: no relevant species (not scored); 3: missing from the run -> 0; 9: not in truth
    result = scored(tmp_path, run, TRUTH + "1,a,\n2,,\n3,c,\n")
    assert result["map"] == pytest.approx((1 / 2 + 0) / 2)
    assert {k: result[k] for k in ("n_queries", "n_scored", "n_no_relevant", "n_missing_from_run",
                                   "n_not_in_truth")} == {"n_queries": 3, "n_scored": 2, "n_no_relevant": 1,
                                                          "n_missing_from_run": 1, "n_not_in_truth": 1}
    assert (result["no_relevant"], result["missing_from_run"], result["not_in_truth"]) == (["2"], ["3"], ["9"])


def test_background_flag_adds_background_species_as_relevant(tmp_path):
    run = ranked("1", ["c", "b", "a"]) + ranked("2", ["a", "b"])
    # 1: main a at rank 3, background c at rank 1; 2: only background b (rank 2), scored only with --background
    truth = TRUTH + "1,a,c\n2,,b;z\n"
    main_only = scored(tmp_path, run, truth)
    assert main_only["map"] == pytest.approx(1 / 3) and main_only["n_no_relevant"] == 1
    with_background = scored(tmp_path, run, truth, background=True)
    # 1: ranks 1 and 3 -> (1 + 2/3) / 2; 2: b at rank 2, z never listed -> (1/2 + 0) / 2
    assert with_background["map"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2) / 2) / 2)
    assert with_background["n_scored"] == 2 and with_background["n_no_relevant"] == 0


def test_segment_runs_score_each_time_code_as_a_query(tmp_path):
    run = ("s1;00:00:00-00:00:05;a;0.9\ns1;00:00:00-00:00:05;b;0.8\n"
           "s1;00:00:05-00:00:10;a;0.9\ns1;000:00:05-00:00:10;b;0.8\n")  # same segment, hours padded
    truth = "MediaId,TC,ClassId\ns1,00:00:00-00:00:05,a\ns1,00:00:05-00:00:10,b\ns1,00:00:10-00:00:15,\n"
    parsed = read_run_file(write(tmp_path, "run.txt", run))
    assert parsed.kind == "segment" and parsed.rows[3] == ("s1", "00:00:05-00:00:10", "b", 0.8, None)
    result = scored(tmp_path, run, truth)
    assert result["map"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["no_relevant"] == ["s1;00:00:10-00:00:15"] and result["n_not_in_truth"] == 0
    with pytest.raises(ScoreFileError, match="a segment run file cannot be scored against a recording truth"):
        scored(tmp_path, run, "MediaId,ClassId\ns1,a\n")


@pytest.mark.parametrize("seed", range(3))
def test_single_relevant_species_matches_sklearn(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n_queries, n_classes = 40, 12
    probabilities = np.round(rng.random((n_queries, n_classes)), 1)  # one decimal: many ties
    labels = rng.integers(0, n_classes, size=n_queries)
    lines = []
    for query, row in enumerate(probabilities):
        order = np.argsort(-row, kind="stable")
        lines.append(ranked(f"q{query}", [f"c{c}" for c in order], [f"{row[c]:.1f}" for c in order]))
    truth = TRUTH + "".join(f"q{query},c{label},\n" for query, label in enumerate(labels))
    expected = label_ranking_average_precision_score(np.eye(n_classes, dtype=bool)[labels], probabilities)
    assert scored(tmp_path, "".join(lines), truth)["map"] == pytest.approx(expected)


def test_cli_prints_text_and_json(tmp_path):
    run = write(tmp_path, "run.txt", ranked("1", ["b", "a"]) + ranked("9", ["a"]))
    truth = write(tmp_path, "truth.csv", TRUTH + "1,a,b\n2,c,\n")
    runner = CliRunner()
    text = runner.invoke(main, ["score", str(run), str(truth)])
    assert text.exit_code == 0, text.output
    assert text.output.startswith("MAP 0.2500 over 2 scored recording queries (main species relevant)\n")
    assert "missing from the run (scored 0): 1 (e.g. 2)" in text.output
    assert "in the run but not in the truth (ignored): 1 (e.g. 9)" in text.output
    machine = runner.invoke(main, ["score", str(run), str(truth), "--json", "--background"])
    assert machine.exit_code == 0, machine.output
    result = json.loads(machine.output)
    assert result["map"] == pytest.approx((1 + 0) / 2) and result["background"] is True
    assert (result["n_queries"], result["n_scored"], result["n_missing_from_run"]) == (2, 2, 1)


def test_cli_errors_in_one_line(tmp_path):
    run = write(tmp_path, "run.txt", "1;a;0.5;1\n1;a;0.4;2\n")
    truth = write(tmp_path, "truth.csv", TRUTH + "1,a,\n")
    result = CliRunner().invoke(main, ["score", str(run), str(truth)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "run.txt, line 2: query 1 lists class a again" in result.output
