"""Call annotations: Raven, Audacity and CSV into a real store, back out as Raven tables.

The truth is a hand-written list of calls; each format is written from it here, featurized with
generated audio (serial path) and read back from the store and from the Raven table the store
writes, which must give the same times, bands and labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from conftest import noise, tone, write

from soundception.cli import main
from soundception.featurize.annotations import AnnotationError, read_annotations, read_raven
from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig
from soundception.shared.events import events_to_raven

CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=2.0)
NYQUIST = CONFIG.sample_rate / 2
SECONDS = {"a/XC1.wav": 3.0, "b/XC2.wav": 4.0, "XC3.wav": 2.5}
NAN = math.nan
# (recording, start s, end s, low Hz, high Hz, label): XC1 holds two species
TRUTH = [
    ("a/XC1.wav", 0.25, 0.75, 1200.0, 2400.0, "Turdus merula"),
    ("a/XC1.wav", 1.125, 1.5, 3000.0, 5500.5, "Erithacus rubecula"),
    ("a/XC1.wav", 2.0, 2.875, 1100.0, 2600.0, "Turdus merula"),
    ("b/XC2.wav", 0.5, 1.25, 4000.0, 8000.0, "Erithacus rubecula"),
    ("b/XC2.wav", 3.0, 3.9, 2000.0, 3000.0, "Erithacus rubecula"),
]
WITHOUT_BANDS = [(f, s, e, NAN, NAN, label) for f, s, e, _, _, label in TRUTH]
RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    for k, (name, seconds) in enumerate(SECONDS.items()):
        write(root / name, tone(1500.0 + 1000 * k, seconds, amplitude=0.3) + noise(seconds, seed=k))
    return root


def featurize(audio: Path, store: Path, annotations: Path, **options) -> FeatureStore:
    summary = featurize_store(audio, str(store), config=CONFIG, annotations=annotations, **options)
    assert summary.done == summary.submitted and summary.failed == 0
    featurize.summary = summary
    return FeatureStore(str(store))


def tsv(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- each format written from the truth -------------------------------------------------------

def raven_per_recording(folder: Path, truth: list[tuple]) -> Path:
    """One table per recording, named after it (no file column); each selection in two views."""
    for recording in sorted({t[0] for t in truth}):
        rows = [RAVEN_HEADER + ["Species"]]
        calls = [t for t in truth if t[0] == recording]
        for n, (_, start, end, low, high, label) in enumerate(calls, start=1):
            for view in ("Spectrogram 1", "Waveform 1"):
                rows.append([n, view, 1, start, end, low, high, label])
        tsv(folder / f"{Path(recording).stem}.Table.1.selections.txt", rows)
    return folder


def raven_by_path(folder: Path, truth: list[tuple]) -> Path:
    """One table per recording whose Begin Path is a path on another machine (Windows separators)."""
    for k, recording in enumerate(sorted({t[0] for t in truth})):
        rows = [RAVEN_HEADER + ["Annotation", "Begin Path"]]
        calls = [t for t in truth if t[0] == recording]
        for n, (_, start, end, low, high, label) in enumerate(calls, start=1):
            rows.append([n, "Spectrogram 1", 1, start, end, low, high, label,
                         "D:\\fieldwork\\2024\\" + recording.replace("/", "\\")])
        tsv(folder / f"table{k}.txt", rows)
    return folder


def raven_multi_file(folder: Path, truth: list[tuple]) -> Path:
    """One table over every file: Begin Time counts on across files, File Offset is the time inside."""
    rows, offset = [RAVEN_HEADER + ["Species", "Begin File", "File Offset (s)"]], 0.0
    for recording in sorted({t[0] for t in truth}):
        for _, start, end, low, high, label in (t for t in truth if t[0] == recording):
            rows.append([len(rows), "Spectrogram 1", 1, offset + start, offset + end, low, high, label,
                         Path(recording).name, start])
        offset += SECONDS[recording]
    tsv(folder / "all.selections.txt", rows)
    return folder


def audacity(folder: Path, truth: list[tuple]) -> Path:
    """A label file per recording, named by its stem; spectral lines where the truth has a band."""
    for recording in sorted({t[0] for t in truth}):
        lines = []
        for _, start, end, low, high, label in (t for t in truth if t[0] == recording):
            lines.append(f"{start}\t{end}\t{label}\n")
            if not math.isnan(low):
                lines.append(f"\\\t{low}\t{high}\n")
        (folder / f"{Path(recording).stem}.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{Path(recording).stem}.txt").write_text("".join(lines), encoding="utf-8")
    return folder


def annotation_csv(folder: Path, truth: list[tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    banded = not math.isnan(truth[0][3])
    header = "path,start,end,label" + (",low_hz,high_hz" if banded else "")
    rows = [",".join(map(str, (f, s, e, label) + ((low, high) if banded else ())))
            for f, s, e, low, high, label in truth]
    (folder / "calls.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder / "calls.csv"


def stored(store: FeatureStore) -> list[tuple]:
    """The store's events as truth-like tuples (label = class id)."""
    events = store.events
    return [(store.ids[f], s, e, lo, hi, store.classes[c]) for f, s, e, lo, hi, c in zip(
        events["event_file"], events["event_start_s"], events["event_end_s"], events["event_low_hz"],
        events["event_high_hz"], events["event_class"])]


def same(found: list[tuple], expected: list[tuple]) -> None:
    key = lambda t: (t[0], t[1])  # noqa: E731
    assert len(found) == len(expected)
    for got, want in zip(sorted(found, key=key), sorted(expected, key=key)):
        assert got[0] == want[0] and got[5] == want[5]
        np.testing.assert_allclose(got[1:5], want[1:5], rtol=0, atol=1e-9)


CASES = {
    "raven per recording": (raven_per_recording, TRUTH),
    "raven begin path": (raven_by_path, TRUTH),
    "raven multi-file offset": (raven_multi_file, TRUTH),
    "audacity spectral": (audacity, TRUTH),
    "audacity plain": (audacity, WITHOUT_BANDS),
    "csv bands": (annotation_csv, TRUTH),
    "csv plain": (annotation_csv, WITHOUT_BANDS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_events_round_trip_from_each_format_to_the_store_and_back_to_raven(case, audio, tmp_path):
    writer, truth = CASES[case]
    store = featurize(audio, tmp_path / "s.zarr", writer(tmp_path / "ann", truth), labels="none")
    same(stored(store), truth)
    # back to Raven, one table per recording: Begin Time is the time in the file; no band -> 0..Nyquist
    expected = [(f, s, e, 0.0 if math.isnan(lo) else lo, NYQUIST if math.isnan(hi) else hi, label)
                for f, s, e, lo, hi, label in truth]
    for recording in sorted({t[0] for t in truth}):
        text = events_to_raven(store, recording)
        back = read_raven(text, "x.txt", label_column="Species")
        assert {e.file for e in back} == {str(audio.resolve() / recording)}
        same([(recording, e.start_s, e.end_s, e.low_hz, e.high_hz, e.label) for e in back],
             [t for t in expected if t[0] == recording])
    # one table over all files, read back as featurize reads a table: same events again
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "all.selections.txt").write_text(events_to_raven(store), encoding="utf-8")
    again = featurize(audio, tmp_path / "again.zarr", tmp_path / "back", labels="none")
    same(stored(again), expected)


def test_xarray_shows_the_event_arrays(audio, tmp_path):
    featurize(audio, tmp_path / "s.zarr", raven_multi_file(tmp_path / "ann", TRUTH), labels="none")
    dataset = xr.open_zarr(tmp_path / "s.zarr")
    assert dataset["event_start_s"].dims == ("event",) and dataset.sizes["event"] == len(TRUTH)
    files = dataset["file"].values[dataset["event_file"].values]
    classes = dataset["class"].values[dataset["event_class"].values]
    assert sorted(zip(files, dataset["event_start_s"].values, classes)) == sorted((f, s, c) for f, s, *_, c in TRUTH)
    assert dataset["event_end_s"].attrs["units"] == "s" and dataset["event_low_hz"].attrs["units"] == "Hz"


@pytest.mark.parametrize("name, text, line, says", [
    ("XC1.Table.1.selections.txt", "Selection\tBegin Time (s)\tSpecies\n1\t0.5\tx\n", 1, "End Time (s)"),
    ("XC1.Table.1.selections.txt", "Begin Time (s)\tEnd Time (s)\tOther\n0.1\t0.5\tx\n", 1, "label column"),
    ("XC1.Table.1.selections.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n0.1\t0.5\tx\n0.2\tabc\tx\n", 3,
     "not a number"),
    ("XC1.Table.1.selections.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n\n0.9\t0.5\tx\n", 3, "not after"),
    ("XC1.txt", "0.1\t0.5\tx\n-0.2\t0.5\ty\n", 2, "negative time"),
    ("XC1.txt", "0.1\t0.5\tx\n\\\t100\tlow\n", 2, "not a number"),
    ("calls.csv", "path,start,end,label\na/XC1.wav,0.1,0.5,x\na/XC1.wav,0.1,0.5\n", 3, "field(s)"),
    ("calls.csv", "a/XC1.wav,0.5,0.5,x\n", 1, "not after"),
])
def test_malformed_annotations_stop_in_one_line_naming_file_and_row(name, text, line, says, audio, tmp_path):
    path = tmp_path / "ann" / name
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AnnotationError) as error:
        featurize_store(audio, str(tmp_path / "s.zarr"), config=CONFIG, annotations=path)
    message = str(error.value)
    assert "\n" not in message and name in message and f"line {line}:" in message and says in message
    assert not (tmp_path / "s.zarr").exists()  # read before anything is written


def test_raven_label_column_named_by_the_user(tmp_path):
    text = "Begin Time (s)\tEnd Time (s)\tSpecies\tMy Label\n0.1\t0.5\twrong\tright\n"
    assert [e.label for e in read_raven(text, "XC1.selections.txt", label_column="My Label")] == ["right"]
    assert [e.label for e in read_raven(text, "XC1.selections.txt")] == ["wrong"]
    with pytest.raises(AnnotationError, match="line 1: no column 'Call'"):
        read_raven(text, "XC1.selections.txt", label_column="Call")


def test_annotations_for_missing_files_or_past_the_end_are_listed(audio, tmp_path):
    path = tmp_path / "calls.csv"
    path.write_text("path,start,end,label\nXC3.wav,0.5,1.0,wren\nXC3.wav,2.0,2.75,wren\nnope.wav,0.1,0.2,wren\n"
                    "a/XC1.wav,0.1,0.2,wren\n", encoding="utf-8")
    report = tmp_path / "report.txt"
    result = CliRunner().invoke(main, ["featurize", str(audio), "--store", str(tmp_path / "s.zarr"), "--serial",
                                       "--labels", "none", "--min-duration", "2", "--annotations", str(path),
                                       "--annotations-report", str(report)])
    assert result.exit_code == 0, result.output
    issues = report.read_text(encoding="utf-8").splitlines()
    assert len(issues) == 2
    assert "line 4:" in issues[0] and "'nope.wav'" in issues[0] and "not stored" in issues[0]
    assert "line 3:" in issues[1] and "ends after XC3.wav (2.500 s long)" in issues[1]
    assert "2 call annotation(s) name no recording" in result.output
    store = FeatureStore(str(tmp_path / "s.zarr"))
    assert sorted((f, s) for f, s, *_ in stored(store)) == [("XC3.wav", 0.5), ("XC3.wav", 2.0), ("a/XC1.wav", 0.1)]


def test_labels_follow_from_events_multi_label(audio, tmp_path):
    # XC1: "robin" has 1.2 s of calls but they overlap (0.9 s annotated); "wren" 1.0 s: wren is main
    calls = tmp_path / "calls.csv"
    calls.write_text("a/XC1.wav,0.0,0.6,robin\na/XC1.wav,0.3,0.9,robin\na/XC1.wav,1.0,2.0,wren\n"
                     "b/XC2.wav,0.0,1.0,Erithacus rubecula\n", encoding="utf-8")
    store = featurize(audio, tmp_path / "s.zarr", calls, labels="none")
    label, background = store.table["label"], store.background
    row = {name: i for i, name in enumerate(store.ids)}
    assert store.classes[label[row["a/XC1.wav"]]] == "wren"
    assert [store.classes[c] for c in background[row["a/XC1.wav"]]] == ["robin"]
    assert store.classes[label[row["b/XC2.wav"]]] == "Erithacus rubecula" and background[row["b/XC2.wav"]] == []
    assert label[row["XC3.wav"]] == -1


def test_metadata_labels_are_kept_and_event_labels_match_class_ids(audio, tmp_path):
    metadata, calls = tmp_path / "labels.csv", tmp_path / "calls.csv"
    metadata.write_text("b/XC2.wav,sp02\n", encoding="utf-8")
    calls.write_text("a/XC1.wav,0.0,2.0,newbird\n", encoding="utf-8")
    store = featurize(audio, tmp_path / "s.zarr", calls, metadata=metadata, labels="csv")
    row = {name: i for i, name in enumerate(store.ids)}
    assert store.classes == ["sp02", "newbird"]
    assert store.classes[store.table["label"][row["a/XC1.wav"]]] == "newbird"  # no metadata label: the events'
    # now the metadata labels XC1 too, and its events would say sp02 ("SP02": that class, any case)
    metadata.write_text("a/XC1.wav,newbird\nb/XC2.wav,sp02\n", encoding="utf-8")
    calls.write_text("a/XC1.wav,0.0,2.0,SP02\na/XC1.wav,2.1,2.2,newbird\n", encoding="utf-8")
    store = featurize(audio, tmp_path / "s.zarr", calls, metadata=metadata, labels="csv")
    assert store.classes == ["sp02", "newbird"]  # the class list only grows
    assert store.classes[store.table["label"][row["a/XC1.wav"]]] == "newbird"  # metadata's, not the events'
    assert store.background[row["a/XC1.wav"]] == []
    assert [store.classes[c] for c in store.events_of(row["a/XC1.wav"])["event_class"]] == ["sp02", "newbird"]


def test_a_later_run_keeps_stored_metadata_labels_and_updates_labels_from_events(audio, tmp_path):
    metadata, calls = tmp_path / "labels.csv", tmp_path / "calls.csv"
    metadata.write_text("a/XC1.wav,sp01\n", encoding="utf-8")
    calls.write_text("b/XC2.wav,0.0,1.0,robin\n", encoding="utf-8")
    featurize(audio, tmp_path / "s.zarr", calls, metadata=metadata, labels="csv")
    # no metadata this time; XC1 gets events, XC2's are corrected
    calls.write_text("a/XC1.wav,0.0,2.0,wren\nb/XC2.wav,0.0,1.0,wren\nb/XC2.wav,1.5,1.6,robin\n", encoding="utf-8")
    store = featurize(audio, tmp_path / "s.zarr", calls, labels="none")
    row = {name: i for i, name in enumerate(store.ids)}
    assert store.classes[store.table["label"][row["a/XC1.wav"]]] == "sp01"  # stored from metadata: kept
    assert store.classes[store.table["label"][row["b/XC2.wav"]]] == "wren"  # from events: follows them
    assert [store.classes[c] for c in store.background[row["b/XC2.wav"]]] == ["robin"]


def test_rerun_is_idempotent_and_keeps_other_recordings_events(audio, tmp_path):
    url = tmp_path / "s.zarr"
    first = stored(featurize(audio, url, raven_per_recording(tmp_path / "ann", TRUTH), labels="none"))
    again = featurize(audio, url, tmp_path / "ann", labels="none")
    assert featurize.summary.skipped == 3 and featurize.summary.submitted == 0
    same(stored(again), first)  # no duplicates
    # another table, for XC3 only: XC1's and XC2's events stay, XC3's are added
    extra = [("XC3.wav", 0.5, 1.0, 500.0, 900.0, "Troglodytes")]
    later = featurize(audio, url, raven_per_recording(tmp_path / "more", extra), labels="none")
    same(stored(later), TRUTH + extra)
    # a corrected table for XC3 replaces XC3's events
    fixed = [("XC3.wav", 0.6, 1.1, 500.0, 900.0, "Troglodytes")]
    tsv(tmp_path / "more" / "XC3.Table.1.selections.txt",
        [["Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species"], [0.6, 1.1, 500.0, 900.0,
                                                                                             "Troglodytes"]])
    same(stored(featurize(audio, url, tmp_path / "more", labels="none")), TRUTH + fixed)


def test_a_folder_mixes_formats_by_content(tmp_path):
    raven_per_recording(tmp_path / "ann", TRUTH[:1])
    audacity(tmp_path / "ann", [("b/XC2.wav", 0.5, 1.0, NAN, NAN, "wren")])
    events = read_annotations(tmp_path / "ann")
    assert sorted((e.file, e.label) for e in events) == [("XC1", "Turdus merula"), ("XC2", "wren")]


def test_an_interrupted_write_of_the_events_is_seen_and_redone_by_a_rerun(audio, tmp_path):
    import zarr

    from soundception.shared.reader import StoreError

    url = tmp_path / "s.zarr"
    featurize(audio, url, raven_multi_file(tmp_path / "ann", TRUTH), labels="none")
    group = zarr.open_group(str(url), mode="r+")
    del group.attrs["event_count"]  # what a crash between the arrays' writes leaves
    group["event_start_s"].resize((2,))
    with pytest.raises(StoreError, match="interrupted while writing them"):
        _ = FeatureStore(str(url)).events
    store = featurize(audio, url, tmp_path / "ann", labels="none")
    assert featurize.summary.skipped == 3  # images kept
    assert any("half-written" in note for note in featurize.summary.notes)
    same(stored(store), TRUTH)


def test_event_arrays_of_another_length_than_their_count_are_refused(audio, tmp_path):
    import zarr

    from soundception.shared.reader import StoreError

    url = tmp_path / "s.zarr"
    featurize(audio, url, raven_multi_file(tmp_path / "ann", TRUTH), labels="none")
    group = zarr.open_group(str(url), mode="r+")
    assert group.attrs["event_count"] == len(TRUTH)
    group["event_class"].resize((len(TRUTH) - 1,))  # the count is there, one array is short
    with pytest.raises(StoreError, match="interrupted while writing them"):
        _ = FeatureStore(str(url)).events


def test_a_write_of_the_events_that_fails_half_way_leaves_no_count(audio, tmp_path, monkeypatch):
    import zarr

    from soundception.featurize import store as store_io

    url = tmp_path / "s.zarr"
    featurize(audio, url, raven_multi_file(tmp_path / "ann", TRUTH), labels="none")
    group = zarr.open_group(str(url), mode="r+")
    table = {name: np.asarray(group[name][...]) for name in store_io.schema.PER_EVENT}
    real_resize = zarr.Array.resize
    calls = []

    def resize_then_fail(self, shape):  # the third array's resize dies, as a crash would
        calls.append(self.path)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real_resize(self, shape)

    monkeypatch.setattr(zarr.Array, "resize", resize_then_fail)
    with pytest.raises(OSError, match="disk went away"):
        store_io.write_events(group, {name: values[:-1] for name, values in table.items()})
    monkeypatch.undo()
    assert "event_count" not in zarr.open_group(str(url), mode="r").attrs
