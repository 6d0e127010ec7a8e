"""A review round's decisions back in: read as call annotations, stored as events, learned by a head.

The decisions are hand-written in the review page's export layout; what each becomes (a call of
the predicted species, of the corrected one, of ``noise``, or nothing) is spelled out here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import noise, tone, write

from soundception.cli import main
from soundception.featurize.annotations import (NOISE_LABEL, AnnotationError, detect_format, labels_from_events,
                                                read_annotations, read_decisions)
from soundception.shared import FeatureStore, FeaturizerConfig
from soundception.train.head import event_windows

HEADER = "file,start,end,predicted,score,decision,label,weight,path\n"
ROWS = [
    "a/XC1.wav,0.5,1.5,sp00,0.91,correct,sp00,1,/data/a/XC1.wav",
    "a/XC1.wav,2.0,3.0,sp01,0.40,wrong,,2.5,/data/a/XC1.wav",
    "XC2.wav,1.0,2.0,sp00,0.55,other,sp02,1,/data/XC2.wav",
    "XC2.wav,3.0,4.0,sp02,0.20,unsure,,4,/data/XC2.wav",
    "XC3.wav,0.0,1.0,sp01,0.30,wrong,,1,/data/XC3.wav",
]
NAN = math.nan


def test_each_decision_becomes_the_event_it_stands_for():
    events, unsure = read_decisions(HEADER + "\n".join(ROWS) + "\n", "decisions.csv")
    found = [(e.file, e.start_s, e.end_s, e.label) for e in events]
    assert found == [("a/XC1.wav", 0.5, 1.5, "sp00"), ("a/XC1.wav", 2.0, 3.0, NOISE_LABEL),
                     ("XC2.wav", 1.0, 2.0, "sp02"), ("XC3.wav", 0.0, 1.0, NOISE_LABEL)]
    assert unsure == 1
    assert all(math.isnan(e.low_hz) and math.isnan(e.high_hz) for e in events)
    assert detect_format("decisions.csv", HEADER) == "decisions"
    assert detect_format("calls.csv", "path,start,end,label\n") == "csv"


def test_columns_are_found_by_name_and_score_weight_path_are_optional():
    text = "decision,label,predicted,end,start,file\ncorrect,,sp03,2.5,1.25,XC9.wav\n"
    events, unsure = read_decisions(text, "mine.csv")
    assert [(e.file, e.start_s, e.end_s, e.label) for e in events] == [("XC9.wav", 1.25, 2.5, "sp03")]


@pytest.mark.parametrize("row, says", [
    ("XC1.wav,0,1,sp00,0.9,maybe,,1,", "line 2: decision 'maybe' is not one of correct, wrong, other, unsure"),
    ("XC1.wav,0,1,sp00,0.9,correct,sp01,1,", "line 2: a correct detection's label 'sp01' is not its prediction"),
    ("XC1.wav,0,1,sp00,0.9,other,,1,", "line 2: an 'other' decision needs the right species"),
    ("XC1.wav,1,0.5,sp00,0.9,correct,sp00,1,", "line 2: end 0.5 s is not after start 1 s"),
    ("XC1.wav,x,1,sp00,0.9,correct,sp00,1,", "line 2: start 'x' is not a number"),
    ("XC1.wav,0,1,sp00,0.9,correct", "line 2: 6 field(s), the header has 9"),
])
def test_malformed_decisions_stop_in_one_line_naming_the_line(row, says):
    with pytest.raises(AnnotationError) as error:
        read_decisions(HEADER + row + "\n", "d.csv")
    assert says in str(error.value) and "\n" not in str(error.value) and str(error.value).startswith("d.csv: ")


def test_a_table_without_a_decision_column_names_what_is_missing():
    with pytest.raises(AnnotationError, match="needs the column.s. decision"):
        read_decisions("file,start,end,predicted,label\nXC1.wav,0,1,sp00,sp00\n", "d.csv")


def test_noise_labels_a_recording_only_when_nothing_else_is_annotated():
    assert labels_from_events([(NOISE_LABEL, 0.0, 9.0), ("sp01", 1.0, 2.0)]) == ("sp01", ())
    assert labels_from_events([(NOISE_LABEL, 0.0, 9.0)]) == (NOISE_LABEL, ())
    assert labels_from_events([("sp01", 0.0, 9.0), (NOISE_LABEL, 1.0, 2.0)]) == ("sp01", ())  # nor a background
    assert labels_from_events([("sp02", 0.0, 1.0), ("sp01", 2.0, 3.0)]) == ("sp01", ("sp02",))  # a tie: first id
    assert labels_from_events([(NOISE_LABEL, 0.0, 9.0), ("sp01", 1.0, 2.0), ("sp02", 3.0, 3.5)]) == ("sp01", ("sp02",))


def test_event_windows_pair_windows_with_the_calls_they_cover():
    starts = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # 2 s windows
    calls = np.array([[2.2, 2.6, 7], [0.0, 5.0, 3]])  # a 0.4 s call of class 7, a 5 s call of class 3
    windows, classes = event_windows(starts, 2.0, calls)
    pairs = sorted(zip(windows.tolist(), classes.tolist()))
    # the short call: windows [1, 3) and [2, 4) hold all of it, [0, 2) none; the long one: every window lies in it
    assert pairs == [(0, 3), (1, 3), (1, 7), (2, 3), (2, 7), (3, 3), (4, 3)]
    half = event_windows(np.array([0.0, 1.0]), 2.0, np.array([[1.6, 2.4, 1]]))  # [0,2) holds 0.4 of 0.8 s
    assert sorted(zip(*map(np.ndarray.tolist, half))) == [(0, 1), (1, 1)]
    none = event_windows(np.array([0.0]), 2.0, np.array([[1.7, 2.4, 1]]))  # 0.3 of 0.7 s: less than half
    assert none[0].size == 0


def test_decisions_into_a_store_through_the_cli(tmp_path):
    audio = tmp_path / "audio"
    for k, name in enumerate(("a/XC1.wav", "XC2.wav", "XC3.wav")):
        write(audio / name, tone(1500.0 + 700 * k, 5.0, amplitude=0.3) + noise(5.0, seed=k))
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(HEADER + "\n".join(ROWS) + "\n")
    config = tmp_path / "featurizer_config.json"
    config.write_text(json.dumps(FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=2.0).to_dict()))
    result = CliRunner().invoke(main, ["featurize", str(audio), "--store", str(tmp_path / "s.zarr"), "--serial",
                                       "--annotations", str(decisions), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "1 unsure decision(s) ignored" in result.output
    store = FeatureStore(str(tmp_path / "s.zarr"))
    events = store.events
    stored = sorted((str(store.ids[f]), s, e, store.classes[c]) for f, s, e, c in
                    zip(events["event_file"], events["event_start_s"], events["event_end_s"], events["event_class"]))
    assert stored == sorted([("a/XC1.wav", 0.5, 1.5, "sp00"), ("a/XC1.wav", 2.0, 3.0, NOISE_LABEL),
                             ("XC2.wav", 1.0, 2.0, "sp02"), ("XC3.wav", 0.0, 1.0, NOISE_LABEL)])
    labels = {str(store.ids[i]): store.classes[store.table["label"][i]] for i in range(store.n_files)}
    assert labels == {"a/XC1.wav": "sp00", "XC2.wav": "sp02", "XC3.wav": NOISE_LABEL}
    assert [list(b) for b in store.background] == [[], [], []]
    assert read_annotations(decisions, format="decisions")[0].label == "sp00"


def test_a_review_round_trains_a_head_whose_classes_are_the_decisions(trained_run, tmp_path):
    """Decisions over the tiny model's recordings: the head learns sp-classes plus noise from them."""
    from soundception.train.head import HeadOptions, fit_head
    from soundception.train.trained import load_trained_model

    files = sorted(p.relative_to(trained_run.audio).as_posix() for p in trained_run.audio.rglob("*.*"))
    rows = []
    for k, file in enumerate(files[:9]):
        species = file.split("/")[0]
        decision = ("correct", "wrong", "other")[k % 3]
        label = {"correct": species, "wrong": "", "other": species}[decision]
        predicted = species if decision == "correct" else "sp00" if species != "sp00" else "sp01"
        rows.append(f"{file},0.25,1.75,{predicted},0.5,{decision},{label},1,")
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(HEADER + "\n".join(rows) + "\n")
    store = str(tmp_path / "review.zarr")
    from soundception.featurize.pipeline import featurize_store

    featurize_store(trained_run.audio, store, config=trained_run.config, labels="none", annotations=decisions,
                    only=files[:9])
    opened = FeatureStore(store)
    expected = sorted({r.split(",")[6] or NOISE_LABEL for r in rows} | {r.split(",")[3] for r in rows
                                                                          if r.split(",")[5] == "correct"})
    assert sorted(opened.classes) == expected
    head = fit_head(trained_run.checkpoint, store, tmp_path / "head", options=HeadOptions(validation_fraction=0.0),
                    progress=False)
    trained = load_trained_model(head["checkpoint"], "cpu")
    assert trained.classes == opened.classes and NOISE_LABEL in trained.classes


def test_a_recording_with_calls_gives_the_windows_over_them_labelled_by_call(tmp_path):
    from soundception.train.embeddings import open_embeddings, write_file_embeddings
    from soundception.train.head import window_examples

    group = open_embeddings(tmp_path / "e.zarr", ["A.wav", "B.wav"], features=2, attrs={"window_seconds": 2.0})
    starts = np.arange(9.0)  # 2 s windows every second, 10 s recordings
    for row in range(2):  # feature 0 = the window's start, feature 1 = the recording
        write_file_embeddings(group, row, np.stack([starts, np.full(9, row)], axis=1), starts, 2.0, duration_s=10.0)
    calls = {"A.wav": np.array([[4.2, 4.8, 1.0]])}  # recording A (label 0) holds one call of class 1
    x, y, recordings = window_examples(group, ["A.wav", "B.wav"], np.array([0, 2]), per_recording=8, seed=0,
                                       events=calls)
    from_a = x[recordings == 0]
    assert sorted(from_a[:, 0].tolist()) == [3.0, 4.0] and set(y[recordings == 0].tolist()) == {1}
    assert len(x[recordings == 1]) == 8 and set(y[recordings == 1].tolist()) == {2}  # no calls: its label


def test_the_contract_is_one_header_for_the_page_thresholds_and_annotations():
    from soundception.review import DECISION_COLUMNS as written
    from soundception.shared.decisions import DECISION_COLUMNS
    from soundception.train import thresholds

    assert ",".join(DECISION_COLUMNS) + "\n" == HEADER
    assert written is DECISION_COLUMNS and thresholds.DECISION_COLUMNS is DECISION_COLUMNS


REVIEW_RAVEN = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\tScore\t"
                "Begin Path\tFile Offset (s)\tDecision\tLabel\tWeight\n"
                "1\tSpectrogram 1\t1\t0.5\t1.0\t500.0\t6000.0\tOne\t0.9\t/r/A.wav\t0.5\tcorrect\tOne\t1\n"
                "2\tSpectrogram 1\t1\t5.0\t6.0\t500.0\t6000.0\tOne\t0.8\t/r/B.wav\t1.0\twrong\t\t1\n"
                "3\tSpectrogram 1\t1\t7.0\t8.0\t500.0\t6000.0\tOne\t0.7\t/r/B.wav\t3.0\tother\tTwo\t1\n"
                "4\tSpectrogram 1\t1\t9.0\t9.5\t500.0\t6000.0\tOne\t0.6\t/r/B.wav\t5.0\tunsure\t\t1\n")


@pytest.mark.parametrize("label_column", [None, "Species"])
def test_a_reviews_raven_export_reads_as_its_decisions_whichever_label_column(label_column):
    from soundception.featurize.annotations import read_raven

    events = read_raven(REVIEW_RAVEN, "decisions-r1.selections.txt", label_column=label_column)
    assert [(e.file, e.start_s, e.end_s, e.label) for e in events] == [
        ("/r/A.wav", 0.5, 1.0, "One"), ("/r/B.wav", 1.0, 2.0, NOISE_LABEL), ("/r/B.wav", 3.0, 4.0, "Two")]


def test_recording_map_counts_every_class_a_recordings_calls_are_of():
    from soundception.train.head import recording_map

    # one recording whose windows are calls of classes 0 and 2: its mean ranks 2, 0, 1, so both relevant
    # classes come first (MAP 1); with only its first window's class relevant the MAP would be 1/2
    probabilities = np.array([[0.3, 0.1, 0.6], [0.3, 0.1, 0.6]])
    assert recording_map(probabilities, np.array([0, 0]), np.array([0, 2]), 3) == pytest.approx(1.0)
    assert recording_map(probabilities, np.array([0, 0]), np.array([0, 0]), 3) == pytest.approx(0.5)


def test_fit_head_audio_with_annotations_takes_labels_from_the_calls_not_the_site_folders(tmp_path):
    from soundception.compose import featurize_labelled

    audio = tmp_path / "audio"
    for k, name in enumerate(("siteA/XC1.WAV", "siteB/deep/XC2.wav")):
        write(audio / name, tone(1500.0 + 700 * k, 3.0, amplitude=0.3) + noise(3.0, seed=k))
    (tmp_path / "decisions.csv").write_text(
        HEADER + "siteA/XC1.WAV,0.5,1.0,sp01,0.9,correct,sp01,1,\nsiteB/deep/XC2.wav,1.0,2.0,sp01,0.8,wrong,,1,\n")
    store = featurize_labelled(str(audio), tmp_path / "out", FeaturizerConfig(image_height=64, image_seconds=0.75,
                                                                              min_duration=2.0),
                               metadata=None, annotations=str(tmp_path / "decisions.csv"), workers=0, progress=False)
    opened = FeatureStore(store)
    assert sorted(opened.classes) == [NOISE_LABEL, "sp01"]
    labels = {str(f): opened.classes[label] for f, label in zip(opened.ids, opened.table["label"])}
    assert labels == {"siteA/XC1.WAV": "sp01", "siteB/deep/XC2.wav": NOISE_LABEL}


def test_fit_head_audio_whose_annotations_name_no_recording_says_so_in_one_line(tmp_path):
    from soundception.compose import featurize_labelled
    from soundception.shared.errors import UserError

    write(tmp_path / "audio" / "site" / "XC1.wav", tone(1500.0, 3.0, amplitude=0.3))
    (tmp_path / "d.csv").write_text(HEADER + "other/YY1.wav,0.5,1.0,sp01,0.9,correct,sp01,1,\n")
    with pytest.raises(UserError, match=r"no call annotation of .*d.csv names a recording under .*'other/YY1.wav'") as error:
        featurize_labelled(str(tmp_path / "audio"), tmp_path / "out", FeaturizerConfig(image_height=64, image_seconds=0.75,
                                                                                       min_duration=2.0),
                           metadata=None, annotations=str(tmp_path / "d.csv"), workers=0, progress=False)
    assert "\n" not in str(error.value)


def test_a_class_whose_calls_overlap_no_window_is_named_not_fitted(trained_run, tmp_path):
    """A call past its recording's end is stored (and listed) but gives the head nothing to learn from."""
    from soundception.featurize.pipeline import featurize_store
    from soundception.train.config import UserError
    from soundception.train.head import HeadOptions, fit_head

    files = sorted(p.relative_to(trained_run.audio).as_posix() for p in trained_run.audio.rglob("*.*"))[::6][:3]
    rows = [f"{f},0.25,1.75,{f.split('/')[0]}" for f in files] + [f"{files[0]},500,501,ghost"]
    table = tmp_path / "calls.csv"
    table.write_text("path,start,end,label\n" + "\n".join(rows) + "\n")
    store = str(tmp_path / "s.zarr")
    summary = featurize_store(trained_run.audio, store, config=trained_run.config, labels="none", annotations=table,
                              only=files)
    assert any("ghost" in line for line in summary.annotation_issues)  # listed as past the end
    with pytest.raises(UserError, match="class 'ghost' has no window to fit on"):
        fit_head(trained_run.checkpoint, store, tmp_path / "head", options=HeadOptions(validation_fraction=0.0),
                 progress=False)


def test_a_folder_with_both_exports_of_a_review_is_refused_in_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "decisions-r1.csv").write_text(HEADER + ROWS[0] + "\n")
    raven = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\t"
             "Score\tBegin Path\tFile Offset (s)\tDecision\tLabel\tWeight\n"
             "1\tSpectrogram 1\t1\t0.5\t1.5\t0\t11025\tAlpha\t0.91\t/data/a/XC1.wav\t0.5\tcorrect\tAlpha\t1\n")
    (tmp_path / "d" / "decisions-r1.selections.txt").write_text(raven)
    with pytest.raises(AnnotationError, match="holds both exports of a review") as error:
        read_annotations(tmp_path / "d")
    assert "\n" not in str(error.value)
    (tmp_path / "d" / "decisions-r1.csv").unlink()
    assert [e.label for e in read_annotations(tmp_path / "d")] == ["Alpha"]


def test_decisions_are_read_whatever_their_case():
    events, unsure = read_decisions(HEADER + "XC1.wav,0,1,sp00,0.9,Correct,,1,\nXC1.wav,2,3,sp00,0.4,UNSURE,,1,\n"
                                    "XC1.wav,4,5,sp00,0.3,Wrong,,1,\n", "d.csv")
    assert [e.label for e in events] == ["sp00", NOISE_LABEL] and unsure == 1
