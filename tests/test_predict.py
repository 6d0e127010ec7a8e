"""``soundception predict``: audio and store paths agree, segments tile recordings, tables parse back, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from soundception.cli import main
from soundception.shared.reader import FeatureStore
from soundception.train import tables
from soundception.train.config import UserError
from soundception.train.inference import FileWindows
from soundception.train.predict import PredictOptions, predict_store
from soundception.train.score import read_run_file
from soundception.train.segments import segment_scores
from soundception.train.timecode import format_tc

ROOT = Path(__file__).resolve().parents[1]


def predict_cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["predict", *args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def best_species(rows: list[dict[str, str]]) -> dict[str, str]:
    return {r["file"]: r["class_id"] for r in rows if r["rank"] == "1"}


def test_audio_as_wav_and_mp3_gives_the_store_paths_answers(trained_run, tmp_path):
    store = FeatureStore(trained_run.store)
    chosen = [i for i in store.ids if i.endswith(".wav")][:3]
    audio = tmp_path / "audio"
    for file_id in chosen:
        samples, rate = soundfile.read(trained_run.audio / file_id)
        (audio / "wav").mkdir(parents=True, exist_ok=True)
        (audio / "mp3").mkdir(parents=True, exist_ok=True)
        soundfile.write(audio / "wav" / Path(file_id).name, samples, rate)
        soundfile.write(audio / "mp3" / (Path(file_id).stem + ".mp3"), samples, rate, compression_level=0.0,
                        bitrate_mode="CONSTANT")  # the best MP3 libsndfile writes
    from_store = tmp_path / "from_store"
    predict_store(trained_run.checkpoint, trained_run.store, from_store, PredictOptions(device="cpu"),
                  file_ids=chosen, progress=False)
    predict_cli("--checkpoint", str(trained_run.checkpoint), str(audio / "wav"), str(audio / "mp3"),
                "--out", str(tmp_path / "from_audio"), "--device", "cpu")
    expected = {Path(f).stem: c for f, c in best_species(csv_rows(from_store / "predictions.csv")).items()}
    got = best_species(csv_rows(tmp_path / "from_audio" / "predictions.csv"))
    assert len(got) == 2 * len(chosen)
    for file_id, species in got.items():
        assert species == expected[Path(file_id).stem], file_id
    # the wav copies hold the same samples as the training audio: the same images, the same scores
    store_scores = {(Path(r["file"]).stem, r["class_id"]): float(r["score"])
                    for r in csv_rows(from_store / "predictions.csv")}
    for r in csv_rows(tmp_path / "from_audio" / "predictions.csv"):
        if r["file"].startswith("wav/"):
            assert float(r["score"]) == pytest.approx(store_scores[(Path(r["file"]).stem, r["class_id"])], abs=2e-6)
    # the featurizer config beside the predictions reproduces the checkpoint's store config
    assert json.loads((tmp_path / "from_audio" / "featurizer_config.json").read_text()) == trained_run.config.to_dict()
    # the scratch store opens in xarray quietly: its metadata was consolidated after the run's last change
    import warnings

    import xarray

    (scratch,) = (tmp_path / "from_audio" / "stores").glob("*.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xarray.open_zarr(scratch).sizes["file"] == 2 * len(chosen)


def test_segments_tile_each_recording_once_in_original_time(trained_run, tmp_path):
    store = FeatureStore(trained_run.store)
    durations = dict(zip(store.ids, store.table["duration"]))
    predict_store(trained_run.checkpoint, trained_run.store, tmp_path, PredictOptions(segment_seconds=1.0,
                  top_k=1, device="cpu"), progress=False)
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in csv_rows(tmp_path / "predictions.csv"):
        spans.setdefault(r["file"], []).append((float(r["start_s"]), float(r["end_s"])))
    assert set(spans) == set(store.ids)
    concatenated = [f for f in store.ids if durations[f] < trained_run.config.min_duration]
    assert concatenated, "the fixture should hold self-concatenated clips"
    for file_id, bounds in spans.items():
        bounds = sorted(bounds)
        assert bounds[0][0] == 0.0 and bounds[-1][1] == round(durations[file_id], 3)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # no gap, no overlap
        assert len(bounds) == int(np.ceil(durations[file_id] - 1e-9))


def fake_windows(temporal: np.ndarray, probabilities: np.ndarray, starts: list[int]) -> FileWindows:
    return FileWindows(position=0, index=0, starts=np.array(starts), probabilities=probabilities.astype(np.float32),
                       temporal=temporal.astype(np.float32), time_frequency=None)


def test_self_concatenated_attention_lands_on_the_original_segment():
    # a 2 s clip shown 3 times: a 600 px image at 100 px/s, one window of 600 px with 60 steps (0.1 s each).
    # The bird is active 0.5-0.7 s into each copy: image times 0.5, 2.5 and 4.5 s (and 0.6 ...).
    steps = np.zeros((1, 60))
    for copy in range(3):
        steps[0, copy * 20 + 5: copy * 20 + 7] = 0.9
    steps[0, 35] = 0.4  # 3.5 s into the image = 1.5 s into the clip
    windows = fake_windows(steps, np.array([[0.8, 0.2]]), [0])
    result = segment_scores(windows, width=600, n_frames=600, duration=2.0, pixels_per_second=100.0,
                            segment_seconds=1.0, nyquist=11025.0)
    np.testing.assert_allclose(result.bounds, [[0, 1], [1, 2]])
    np.testing.assert_allclose(result.activity, [0.9, 0.4], rtol=1e-6)
    np.testing.assert_allclose(result.scores, [[0.72, 0.18], [0.32, 0.08]], rtol=1e-6)


def test_overlapping_windows_each_segment_takes_the_window_that_sees_it():
    # two windows of 400 px (4 s) starting at 0 and 200 px, over a 6 s recording at 100 px/s, 40 steps each.
    # Window A (0-4 s) is sure of species 0 and active at 1.0-1.2 s; window B (2-6 s) is sure of
    # species 1 and active at 4.5-4.7 s. A's confidence must not paint segment 4-5 s.
    a, b = np.zeros(40), np.zeros(40)
    a[10:12] = 1.0
    b[25:27] = 1.0
    windows = fake_windows(np.stack([a, b]), np.array([[0.9, 0.1], [0.1, 0.9]]), [0, 200])
    result = segment_scores(windows, width=400, n_frames=600, duration=6.0, pixels_per_second=100.0,
                            segment_seconds=1.0, nyquist=11025.0)
    assert result.scores.shape == (6, 2)
    assert result.scores[1].argmax() == 0 and result.scores[4].argmax() == 1
    np.testing.assert_allclose(result.scores[1], [0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose(result.scores[4], [0.1, 0.9], rtol=1e-6)
    np.testing.assert_allclose(result.scores[[0, 2, 3, 5]], 0.0)
    # both windows active in segment 3-4 s: it takes the better window, species by species (not the mean)
    a[30:32], b[15:17] = 0.5, 1.0  # both at 3.0-3.2 s
    windows = fake_windows(np.stack([a, b]), np.array([[0.9, 0.1], [0.3, 0.7]]), [0, 200])
    result = segment_scores(windows, width=400, n_frames=600, duration=6.0, pixels_per_second=100.0,
                            segment_seconds=1.0, nyquist=11025.0)
    np.testing.assert_allclose(result.scores[3], [max(0.9 * 0.5, 0.3), max(0.1 * 0.5, 0.7)], rtol=1e-6)


def test_the_journal_key_changes_with_what_changes_the_scores(trained_run):
    import dataclasses

    from soundception.train.predict import result_key
    from soundception.train.trained import load_trained_model

    trained = load_trained_model(trained_run.checkpoint)
    source, options = {"size": 10, "mtime": 1}, PredictOptions()
    key = result_key("a.wav", source, trained, options, 85)
    assert key == result_key("a.wav", dict(source), trained, PredictOptions(top_k=2, min_score=0.5), 85)
    assert key != result_key("a.wav", source, dataclasses.replace(trained, digest="0" * 64), options, 85)
    assert key != result_key("a.wav", {"size": 10, "mtime": 2}, trained, options, 85)
    assert key != result_key("a.wav", source, trained, options, 42)
    assert key != result_key("a.wav", source, trained, PredictOptions(segment_seconds=5.0), 85)


def test_every_table_parses_back_to_the_same_rows(trained_run, tmp_path):
    options = PredictOptions(segment_seconds=1.0, top_k=2, min_score=0.001,
                             formats=("csv", "raven", "audacity", "birdclef"), device="cpu")
    predict_store(trained_run.checkpoint, trained_run.store, tmp_path / "each", options, progress=False)
    predict_store(trained_run.checkpoint, trained_run.store, tmp_path / "combined",
                  PredictOptions(**{**options.__dict__, "combined": True, "formats": ("raven",)}), progress=False)
    every = tables.read_csv(tmp_path / "each" / "predictions.csv")
    # the CSV keeps every top-k row; Raven and Audacity list those at or above --min-score
    assert every and all(r.rank <= 2 for r in every) and any(r.score < 0.001 for r in every)
    rows = [r for r in every if r.score >= 0.001]
    by_file: dict[str, list[tables.Detection]] = {}
    for r in rows:
        by_file.setdefault(r.file, []).append(r)
    store = FeatureStore(trained_run.store)
    paths = {f: str(Path(store.attrs["audio_root"]) / p) for f, p in zip(store.ids, store.table["path"])}

    def essentials(items, *, rank=True):
        return [(r.file, r.start_s, r.end_s, r.class_name, r.score) + ((r.rank,) if rank else ()) for r in items]

    for file_id, expected in by_file.items():
        raven = tables.read_raven(tmp_path / "each" / "raven" / f"{file_id}.selections.txt",
                                  files={paths[file_id]: file_id})
        assert essentials(raven, rank=False) == essentials(expected, rank=False)
        assert all(r.low_hz < r.high_hz <= 11025.0 for r in raven)
        audacity = tables.read_audacity(tmp_path / "each" / "audacity" / f"{file_id}.txt", file_id)
        assert essentials(audacity, rank=False) == essentials(expected, rank=False)
    combined = tables.read_raven(tmp_path / "combined" / "raven" / "combined.selections.txt",
                                 files={p: f for f, p in paths.items()})
    assert essentials(combined, rank=False) == essentials(rows, rank=False)
    with open(tmp_path / "combined" / "raven" / "combined.selections.txt") as handle:
        begins = [float(line.split("\t")[3]) for line in handle.readlines()[1:]]
    assert begins == sorted(begins) and begins[-1] > max(r.end_s for r in rows)  # files laid end to end

    segments = read_run_file(tmp_path / "each" / "birdclef" / "segments.txt")
    recordings = read_run_file(tmp_path / "each" / "birdclef" / "recordings.txt")
    assert segments.kind == "segment" and recordings.kind == "recording"
    ids = tables.media_ids(list(store.ids))
    best = {(ids[r.file], format_tc(r.start_s, r.end_s)): (r.class_id, r.score)
            for r in every if r.rank == 1}
    first = {}
    for media, tc, class_id, probability, _ in segments.rows:
        first.setdefault((media, tc), (class_id, probability))
    assert first == best
    assert len(recordings.rows) == len(store.ids) * 3  # every species listed for every recording (3 < 100)


HOLD_THIRD_ENTRY = """
# on the predictor's PYTHONPATH: its third journal entry is written only once the file named by
# SOUNDCEPTION_TEST_RELEASE exists (SOUNDCEPTION_TEST_HELD is created when it starts waiting), so the
# test kills a run that has written exactly two entries, however fast the machine is
import os
import time

import soundception.train.predict as predict

_write = predict.write_journal
_count = [0]


def _held_write(*args, **kwargs):
    _count[0] += 1
    if _count[0] == 3:
        open(os.environ["SOUNDCEPTION_TEST_HELD"], "w").close()
        while not os.path.exists(os.environ["SOUNDCEPTION_TEST_RELEASE"]):
            time.sleep(0.05)
    return _write(*args, **kwargs)


predict.write_journal = _held_write
"""


def test_a_killed_run_resumes_without_predicting_anything_twice(trained_run, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "soundception", "predict", "--checkpoint", str(trained_run.checkpoint),
               "--store", trained_run.store, "--out", str(out), "--device", "cpu", "--no-progress"]
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD_THIRD_ENTRY)
    held, release = tmp_path / "held", tmp_path / "release"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hold), os.environ.get("PYTHONPATH", "")]),
                   "SOUNDCEPTION_TEST_HELD": str(held), "SOUNDCEPTION_TEST_RELEASE": str(release)}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=environment)
    try:
        deadline = time.monotonic() + 300  # a bound on a hang, not a wait on speed: the third entry is held
        while time.monotonic() < deadline and process.poll() is None and not held.exists():
            time.sleep(0.05)
        assert held.exists() and process.poll() is None, "the predictor should be waiting on its third entry"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        release.touch()
        process.kill()
    journal = {p: p.stat().st_mtime_ns for p in (out / "journal").glob("*.npz")}
    assert len(journal) == 2, "the kill lands after two entries"
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)  # no hold this time
    assert f"predicted {18 - len(journal)} recording(s), {len(journal)} already done" in result.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in journal.items())  # nothing predicted twice
    rows = csv_rows(out / "predictions.csv")
    clean = tmp_path / "clean"
    predict_store(trained_run.checkpoint, trained_run.store, clean, PredictOptions(device="cpu"), progress=False)
    assert rows == csv_rows(clean / "predictions.csv")  # the resumed run lost nothing
    settings = json.loads((out / "settings.json").read_text())
    assert settings["reused"] == len(journal) and len(settings["checkpoint_sha256"]) == 64


def test_a_corrupt_file_fails_alone(trained_run, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for file_id in ["sp00/XC000001.wav", "sp01/XC000007.wav"]:
        samples, rate = soundfile.read(trained_run.audio / file_id)
        soundfile.write(audio / Path(file_id).name, samples, rate)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    (audio / "x.txt").write_text("notes")
    out = tmp_path / "out"
    output = predict_cli("--checkpoint", str(trained_run.checkpoint), str(audio), "--out", str(out), "--device", "cpu")
    assert "predicted 2 recording(s), 0 already done, 1 failed" in output
    failures = csv_rows(out / "failures.csv")
    assert [(f["file"], f["stage"]) for f in failures] == [("broken.wav", "featurize")]
    assert "\n" not in failures[0]["error"] and failures[0]["error"]
    assert set(best_species(csv_rows(out / "predictions.csv"))) == {"XC000001.wav", "XC000007.wav"}
    # a recording edited in place is featurized and predicted again; the other is reused
    before = best_species(csv_rows(out / "predictions.csv"))
    samples, rate = soundfile.read(trained_run.audio / "sp02/XC000013.wav")
    soundfile.write(audio / "XC000001.wav", samples, rate)
    output = predict_cli("--checkpoint", str(trained_run.checkpoint), str(audio), "--out", str(out), "--device", "cpu")
    assert "predicted 1 recording(s), 1 already done, 1 failed" in output
    after = best_species(csv_rows(out / "predictions.csv"))
    assert after["XC000007.wav"] == before["XC000007.wav"]
    assert (before["XC000001.wav"], after["XC000001.wav"]) == ("sp00", "sp02")
    named = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run.checkpoint), str(audio / "x.txt"),
                                      "--out", str(out)])
    assert named.exit_code == 2 and "not an audio file" in named.output


def test_an_unreadable_image_chunk_fails_its_file_alone(trained_run, tmp_path):
    import shutil

    store_path = tmp_path / "copy.zarr"
    shutil.copytree(trained_run.store, store_path)
    store = FeatureStore(str(store_path))
    victim = 4
    chunks = sorted((store_path / "image" / "c" / str(victim)).rglob("*"))
    chunk = [c for c in chunks if c.is_file()][0]
    chunk.write_bytes(b"\x00garbage")
    summary = predict_store(trained_run.checkpoint, str(store_path), tmp_path / "out", PredictOptions(device="cpu"),
                            progress=False)
    assert summary["predicted"] == store.n_files - 1 and summary["failed"] == 1
    failures = csv_rows(tmp_path / "out" / "failures.csv")
    assert [(f["file"], f["stage"]) for f in failures] == [(store.ids[victim], "predict")]


def test_a_store_made_with_another_config_is_refused(trained_run, tmp_path):
    from soundception.featurize.pipeline import featurize_store

    other = trained_run.config.__class__(**{**trained_run.config.to_dict(), "image_height": 48,
                                            "fft_windows": tuple(trained_run.config.fft_windows),
                                            "hop_lengths": tuple(trained_run.config.hop_lengths),
                                            "dynamic_range_db": tuple(trained_run.config.dynamic_range_db),
                                            "channel_names": tuple(trained_run.config.channel_names)})
    featurize_store(trained_run.audio, str(tmp_path / "other.zarr"), config=other, labels="none",
                    only=["sp00/XC000001.wav"])
    with pytest.raises(UserError, match="image_height: 64 -> 48"):
        predict_store(trained_run.checkpoint, str(tmp_path / "other.zarr"), tmp_path / "out",
                      PredictOptions(device="cpu"), progress=False)
    refused = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run.checkpoint), "--store",
                                        str(tmp_path / "other.zarr"), "--out", str(tmp_path / "o2")])
    assert refused.exit_code == 1 and "image_height: 64 -> 48" in refused.output
    assert refused.output.count("\n") == 1


def test_featurize_config_file_reproduces_the_checkpoints_store(trained_run, tmp_path):
    config_file = Path(trained_run.checkpoint).parents[1] / "featurizer_config.json"
    assert config_file.is_file()
    result = CliRunner().invoke(main, ["featurize", str(trained_run.audio), "--store", str(tmp_path / "s.zarr"),
                                       "--labels", "none", "--serial", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    rebuilt = FeatureStore(str(tmp_path / "s.zarr"))
    original = FeatureStore(trained_run.store)
    assert rebuilt.config_hash == original.config_hash
    index = list(rebuilt.ids).index("sp01/XC000008.flac")
    np.testing.assert_array_equal(rebuilt.image(index), original.image(list(original.ids).index("sp01/XC000008.flac")))
    both = CliRunner().invoke(main, ["featurize", str(trained_run.audio), "--store", str(tmp_path / "t.zarr"),
                                     "--serial", "--config", str(config_file), "--min-duration", "3"])
    assert both.exit_code == 2 and "--config replaces the image options" in both.output


def test_embeddings_open_in_xarray_and_equal_the_pooled_features(trained_run, tmp_path):
    import torch
    import xarray

    from soundception.train.trained import load_trained_model
    from soundception.train.windows import window_starts

    path = tmp_path / "emb.zarr"
    predict_store(trained_run.checkpoint, trained_run.store, tmp_path / "out", PredictOptions(device="cpu"),
                  progress=False, embeddings=path)
    data = xarray.open_zarr(path, consolidated=False)
    store = FeatureStore(trained_run.store)
    trained = load_trained_model(trained_run.checkpoint)
    hop = int(round(trained.crop_seconds / 2 * store.config.pixels_per_second))
    assert data["embedding"].dims == ("file", "window", "feature")
    assert list(data["file"].values) == list(store.ids)
    index = 5
    starts = window_starts(int(store.table["n_frames"][index]), trained.crop_width, hop)
    assert int(data["n_windows"][index]) == len(starts)
    np.testing.assert_allclose(data["start_s"][index, :len(starts)], np.array(starts) / store.config.pixels_per_second)
    assert np.isnan(data["embedding"][index, len(starts):].values).all()
    window = torch.from_numpy(store.window(index, starts[-1], trained.crop_width))[None]
    with torch.no_grad():
        _, main = trained.model.forward_features(trained.model.normalize(window.float() / 255))
        pooled, _ = trained.model.main_attention(main)
    np.testing.assert_allclose(data["embedding"][index, len(starts) - 1].values, pooled[0].numpy(), rtol=1e-4,
                               atol=1e-5)
    again = predict_store(trained_run.checkpoint, trained_run.store, tmp_path / "out", PredictOptions(device="cpu"),
                          progress=False, embeddings=path)
    assert again["predicted"] == 0 and again["reused"] == store.n_files
    with pytest.raises(UserError, match="holds embeddings of other files"):
        predict_store(trained_run.checkpoint, trained_run.store, tmp_path / "out2", PredictOptions(device="cpu"),
                      progress=False, embeddings=path, file_ids=list(store.ids[:3]))


def test_a_birdclef_run_scores_the_same_map_as_evaluate(trained_run, tmp_path):
    from soundception.train.evaluate import evaluate
    from soundception.train.score import read_run_file, read_truth, score
    from soundception.train.trained import load_trained_model

    trained = load_trained_model(trained_run.checkpoint)
    predict_store(trained_run.checkpoint, trained_run.store, tmp_path,
                  PredictOptions(hop_seconds=trained.crop_seconds, formats=("birdclef",), device="cpu"),
                  progress=False)  # windows one window apart, as evaluation tiles them
    truth = trained_run.root / "data" / "truth.csv"
    scored = score(read_run_file(tmp_path / "birdclef" / "recordings.txt"), read_truth(truth), background=False)
    evaluated = evaluate(trained_run.checkpoint, trained_run.store, files="all", device="cpu")
    assert scored["n_scored"] == evaluated["n_recordings"] == 18
    assert scored["map"] == pytest.approx(evaluated["map"], abs=1e-9)
    with_background = score(read_run_file(tmp_path / "birdclef" / "recordings.txt"), read_truth(truth),
                            background=True)
    assert with_background["map"] == pytest.approx(evaluated["map_background"], abs=1e-9)
    result = CliRunner().invoke(main, ["score", str(tmp_path / "birdclef" / "recordings.txt"), str(truth)])
    assert result.exit_code == 0 and f"{evaluated['map']:.4f}"[:5] in result.output


@pytest.mark.parametrize("device", ["mps", "cuda:7", "meta", "nonsense"])
def test_a_device_this_machine_lacks_is_one_line_and_exit_1(trained_run, tmp_path, device):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(trained_run.checkpoint), "--store",
                                       trained_run.store, "--out", str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: --device {device}: ") and result.output.count("\n") == 1, result.output
    assert "unexpected" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, path", [("Turdus\tmerula", "/a/b.wav"), ("Turdus merula\n", "/a/b.wav"),
                                        ("Turdus merula", "/a/b\tc.wav"), ("Turdus merula", "/a/b\r.wav")])
def test_raven_and_audacity_refuse_a_tab_or_line_break_in_one_line_naming_it(name, path):
    row = tables.Detection("b.wav", 0.0, 5.0, "turmer", name, 0.5, 1, 0.0, 11025.0, path)
    bad = name if name != "Turdus merula" else path
    with pytest.raises(UserError, match="contains a tab or a line break") as raised:
        tables.raven_text([row])
    assert repr(bad) in str(raised.value) and "\n" not in str(raised.value)
    if bad == name:
        with pytest.raises(UserError, match="an Audacity label track"):
            tables.audacity_text([row])
    else:  # the path is not in a label track
        assert tables.audacity_text([row]).count("\n") == 1
    fine = tables.Detection("b.wav", 0.0, 5.0, "turmer", "Turdus merula; 'ssp.'", 0.5, 1, 0.0, 11025.0, "/a/b c.wav")
    assert tables.raven_text([fine]).count("\n") == 2 and tables.audacity_text([fine]).count("\n") == 1
