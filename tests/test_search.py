"""Search by example (train/search.py, ``soundception search``): exact cosine ranking, non-overlapping hits,
recording time, and a planted copy of a query found first from audio."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import zarr
from click.testing import CliRunner
from sklearn.metrics.pairwise import cosine_similarity

from soundception.cli import main
from soundception.train.config import UserError, crop_width_px
from soundception.train.embeddings import open_embeddings, write_file_embeddings
from soundception.train.search import Span, hits_raven, query_vectors, search
from soundception.train.tables import read_raven

WINDOW, HOP = 2.0, 1.0


def corpus(tmp_path, n_files=12, features=24, seed=0, durations=None):
    """An embeddings group of random windows: file k has 4 + k % 5 windows, 1 s apart, 2 s long."""
    rng = np.random.default_rng(seed)
    ids = [f"f{k:02d}.wav" for k in range(n_files)]
    group = open_embeddings(tmp_path / "emb.zarr", ids, features=features,
                            attrs={"checkpoint_sha256": "x", "config_hash": "y", "window_seconds": WINDOW,
                                   "hop_seconds": HOP})
    windows = {}
    for k, file_id in enumerate(ids):
        count = 4 + k % 5
        windows[file_id] = rng.normal(size=(count, features)).astype(np.float32)
        duration = durations[k] if durations else (count - 1) * HOP + WINDOW
        write_file_embeddings(group, k, windows[file_id], np.arange(count) * HOP, WINDOW, duration_s=duration,
                              path=f"/audio/{file_id}")
    return group, windows


def reference(windows, queries, top, exclude=()):
    """Greedy non-maximum suppression over sklearn's cosine similarities: the rule, written plainly."""
    scored = []
    for file_id, vectors in windows.items():
        similarity = cosine_similarity(vectors, queries).max(axis=1)
        for w, value in enumerate(similarity):
            start, end = w * HOP, w * HOP + WINDOW
            if any(s.file == file_id and start < s.end_s and end > s.start_s for s in exclude):
                continue
            scored.append((-value, file_id, w, start, end))
    kept = []
    for value, file_id, _, start, end in sorted(scored):
        if any(f == file_id and start < e and end > s for f, s, e, _ in kept):
            continue
        kept.append((file_id, start, end, -value))
    return kept[:top]


def test_every_files_embeddings_read_back_including_those_that_grew_the_window_axis(tmp_path):
    group, windows = corpus(tmp_path)
    for k, vectors in enumerate(windows.values()):
        np.testing.assert_array_equal(group["embedding"][k, :len(vectors)], vectors)
        assert np.isnan(group["embedding"][k, len(vectors):]).all()
    assert group["path"][0] == "/audio/f00.wav" and group["duration_s"][4] == 9.0


def test_hits_are_the_exact_cosine_ranking_with_overlaps_suppressed(tmp_path):
    group, windows = corpus(tmp_path)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(2, 24))
    hits = search(group, queries, top=15, block_bytes=3 * 8 * 24 * 4)  # three files per block
    expected = reference(windows, queries, 15)
    assert [(h.file, h.start_s, h.end_s) for h in hits] == [(f, s, e) for f, s, e, _ in expected]
    np.testing.assert_allclose([h.similarity for h in hits], [v for *_, v in expected], rtol=1e-5)
    assert [h.rank for h in hits] == list(range(1, 16)) and hits[0].path == f"/audio/{hits[0].file}"


def test_a_planted_copy_of_the_query_ranks_first_and_the_query_span_is_left_out(tmp_path):
    group, windows = corpus(tmp_path)
    query = Span("f03.wav", 1.0, 3.0)  # exactly window 1 of f03
    vector = query_vectors(group, [query])
    np.testing.assert_allclose(vector[0], windows["f03.wav"][1] / np.linalg.norm(windows["f03.wav"][1]), rtol=1e-5)
    planted = windows["f03.wav"][1] * 0.7 + np.random.default_rng(2).normal(size=24).astype(np.float32) * 0.1
    group["embedding"][9, 2] = planted
    windows["f09.wav"][2] = planted
    hits = search(group, vector, top=5, exclude=[query])
    assert (hits[0].file, hits[0].start_s, hits[0].end_s) == ("f09.wav", 2.0, 4.0)
    assert hits[0].similarity > 0.95
    assert not any(h.file == "f03.wav" and h.start_s < 3.0 and h.end_s > 1.0 for h in hits)
    assert [(h.file, h.start_s) for h in hits] == [(f, s) for f, s, _, _ in reference(windows, vector, 5, [query])]
    with_query = search(group, vector, top=1)
    assert (with_query[0].file, with_query[0].start_s, round(with_query[0].similarity, 5)) == ("f03.wav", 1.0, 1.0)


def test_a_span_takes_the_windows_that_hold_it_or_else_those_it_overlaps(tmp_path):
    group, windows = corpus(tmp_path)
    unit = windows["f04.wav"] / np.linalg.norm(windows["f04.wav"], axis=1, keepdims=True)
    # 1.5-2.5 s lies inside window 1 (1-3 s) only
    np.testing.assert_allclose(query_vectors(group, [Span("f04.wav", 1.5, 2.5)])[0], unit[1], rtol=1e-5)
    # 0.5-3.5 s (longer than a window) overlaps 0-2 by 1.5 s, 1-3 by 2 s, 2-4 by 1.5 s, 3-5 by 0.5 s
    mixed = 1.5 * unit[0] + 2.0 * unit[1] + 1.5 * unit[2] + 0.5 * unit[3]
    np.testing.assert_allclose(query_vectors(group, [Span("f04.wav", 0.5, 3.5)])[0], mixed / np.linalg.norm(mixed),
                               rtol=1e-5)
    whole = unit.sum(axis=0)
    np.testing.assert_allclose(query_vectors(group, [Span("f04.wav")])[0], whole / np.linalg.norm(whole), rtol=1e-5)


def test_windows_in_a_short_clips_repeat_are_left_out_and_ends_cut_at_the_recording(tmp_path):
    # f01 holds 5 windows (0-6 s of image) but the recording is 2.5 s long: windows from 3 s on repeat it
    durations = [6.0] * 12
    durations[1] = 2.5
    group, windows = corpus(tmp_path, durations=durations)
    hits = search(group, windows["f01.wav"][:1], top=100)
    f01 = sorted((h.start_s, h.end_s) for h in hits if h.file == "f01.wav")
    assert f01 and all(start < 2.5 and end <= 2.5 for start, end in f01)
    assert (0.0, 2.0) in f01


def test_span_parsing_and_bad_queries_are_one_line_errors(tmp_path):
    assert Span.parse("a/b.wav") == Span("a/b.wav")
    assert Span.parse("a/b.wav:1.5-3") == Span("a/b.wav", 1.5, 3.0)
    assert Span.parse("odd:name.wav") == Span("odd:name.wav")
    with pytest.raises(UserError, match="0 <= START < END"):
        Span.parse("a.wav:3-1")
    group, _ = corpus(tmp_path)
    with pytest.raises(UserError, match="no such file in the embeddings"):
        query_vectors(group, [Span("nope.wav")])
    with pytest.raises(UserError, match="no window overlaps this span"):
        query_vectors(group, [Span("f00.wav", 50.0, 51.0)])


def test_the_raven_table_reads_back_with_the_hits_and_offsets_lay_files_end_to_end(tmp_path):
    group, _ = corpus(tmp_path)
    hits = search(group, np.ones((1, 24)), top=6)
    seconds = {f"f{k:02d}.wav": (4 + k % 5 - 1) * HOP + WINDOW for k in range(12)}
    path = tmp_path / "t.txt"
    path.write_text(hits_raven(hits, label="wren", nyquist=11025.0, seconds=seconds))
    rows = read_raven(path)
    assert [(r.path, r.start_s, r.end_s, r.class_name, r.score) for r in rows] == \
        [(h.path, h.start_s, h.end_s, "wren", round(h.similarity, 6)) for h in hits]
    lines = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    starts = np.concatenate([[0.0], np.cumsum(list(seconds.values()))])
    for h, line in zip(hits, lines):
        assert float(line[3]) == pytest.approx(starts[int(h.file[1:3])] + h.start_s)


def test_search_from_audio_finds_the_planted_call_first(trained_run, tmp_path):
    """A window of one recording that holds a call, planted into a new recording where a window
    starts (its background the same recording played backwards, so both images are normalised
    alike), is found there first when that recording and span are the query."""
    config = trained_run.config
    width = crop_width_px(2.0, config)  # the model's window, px (2 s crops)
    hop_px = round(width / 2)  # predict's default hop: half a window
    window_s = width / config.pixels_per_second
    with open(trained_run.calls, newline="") as handle:
        calls = list(csv.DictReader(handle))
    source = next(p for p in sorted(trained_run.audio.rglob("*.wav")) if sf.info(p).duration >= 5.0)
    file_id = source.relative_to(trained_run.audio).as_posix()
    first = min(float(c["start"]) for c in calls if c["file"] == file_id and float(c["start"]) >= 0.5)
    k = int((first - 0.3) * config.pixels_per_second // hop_px)  # the window starting just before the call
    begin_s = k * hop_px / config.pixels_per_second
    samples, rate = sf.read(source, dtype="float32", always_2d=False)
    call = samples[round(begin_s * rate):round((begin_s + window_s) * rate) + 64]
    audio = tmp_path / "corpus"
    for path in sorted(trained_run.audio.rglob("*.wav")):
        if path != source:
            (audio / path.parent.name).mkdir(parents=True, exist_ok=True)
            (audio / path.parent.name / path.name).write_bytes(path.read_bytes())
    at = round(5 * hop_px / config.pixels_per_second * rate)  # where the 6th window starts, in samples
    host = np.tile(samples[::-1], 3)[:9 * rate]
    host[at:at + len(call)] = call
    (audio / "planted").mkdir()
    sf.write(audio / "planted" / "host.wav", host, rate)
    (tmp_path / "query").mkdir()
    query = tmp_path / "query" / "source.wav"
    query.write_bytes(source.read_bytes())
    runner = CliRunner()
    made = runner.invoke(main, ["predict", str(audio), "--checkpoint", str(trained_run.checkpoint), "--out",
                                str(tmp_path / "pred"), "--embeddings", str(tmp_path / "emb.zarr"), "--no-progress",
                                "--featurize-workers", "0", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    found = runner.invoke(main, ["search", "--embeddings", str(tmp_path / "emb.zarr"), "--query-audio",
                                 f"{query}:{begin_s + 0.01:.3f}-{begin_s + window_s - 0.01:.3f}",
                                 "--checkpoint", str(trained_run.checkpoint),
                                 "--out", str(tmp_path / "hits"), "--top", "5", "--label", "sp"])
    assert found.exit_code == 0, found.output
    with open(tmp_path / "hits" / "search.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    best = rows[0]
    assert best["file"] == "planted/host.wav", rows
    assert float(best["start_s"]) == pytest.approx(at / rate, abs=0.01)  # the window that holds the planted call
    assert float(best["similarity"]) > float(rows[1]["similarity"])
    assert len(read_raven(tmp_path / "hits" / "search.selections.txt")) == len(rows) == 5


def test_search_cli_refuses_in_one_line(trained_run, tmp_path):
    runner = CliRunner()
    empty = zarr.open_group(str(tmp_path / "not.zarr"), mode="w")
    empty.attrs["x"] = 1
    cases = [
        (["--embeddings", str(tmp_path / "not.zarr"), "--query", "a", "--out", str(tmp_path / "o")], 1,
         "is not an embeddings Zarr"),
        (["--embeddings", str(tmp_path / "not.zarr"), "--out", str(tmp_path / "o")], 2, "at least one --query"),
        (["--embeddings", str(tmp_path / "not.zarr"), "--query-audio", "q.wav", "--out", str(tmp_path / "o")], 2,
         "needs --checkpoint"),
    ]
    group, _ = corpus(tmp_path)
    sf.write(tmp_path / "q.wav", np.zeros(22050, np.float32), 22050)
    cases.append((["--embeddings", str(tmp_path / "emb.zarr"), "--query-audio", str(tmp_path / "q.wav"),
                   "--checkpoint", str(trained_run.checkpoint), "--out", str(tmp_path / "o")], 1,
                  "did not write these embeddings"))
    for args, code, message in cases:
        result = runner.invoke(main, ["search", *args])
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
