"""The Zarr feature store end to end: round trip, dask, resume, refusal, checksums, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import SR, noise, tone, write

from soundception.featurize import store as store_io
from soundception.featurize.audio import decode, self_concatenate
from soundception.featurize.image import multiscale_image
from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig, schema

SMALL = FeaturizerConfig(min_duration=4.0)  # keeps images short; geometry as in the paper


def expected_image(path: Path, config: FeaturizerConfig) -> np.ndarray:
    samples = decode(path, sample_rate=config.sample_rate).samples
    signal, _ = self_concatenate(samples, min_samples=int(np.ceil(config.min_duration * config.sample_rate)))
    return multiscale_image(signal, config)


def chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store / "image" / "c")): p.read_bytes() for p in (store / "image" / "c").rglob("*") if p.is_file()}


def test_round_trip_through_xarray(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    assert (summary.done, summary.failed) == (4, 0)
    ds = xr.open_zarr(url)
    assert ds["image"].dims == ("file", "channel", "freq", "time") and ds["image"].dtype == np.uint8
    assert list(ds["channel"].values) == ["fft128", "fft512", "fft2048"]
    assert list(ds["class"].values) == ["high", "low"]
    np.testing.assert_allclose(ds["freq"].values, schema.freq_coordinate(SMALL))
    assert ds["freq"].values[0] == pytest.approx(SR / 2) and ds["freq"].values[-1] == 0
    assert ds["time"].values[1] - ds["time"].values[0] == pytest.approx(1.5 / 299)
    assert ds.attrs["config_hash"] and ds.attrs["featurizer_config"]["hop_lengths"] == [32, 128, 512]
    for i, file_id in enumerate(ds["file"].values):
        width = int(ds["n_frames"].values[i])
        stored = ds["image"].isel(file=i, time=slice(0, width)).values
        assert np.array_equal(stored, expected_image(small_corpus / str(file_id), SMALL))
        assert ds["label"].values[i] == (0 if str(file_id).startswith("high") else 1)
        assert ds["status"].values[i] == "done"
        assert not ds["image"].isel(file=i, time=slice(width, None)).values.any()  # padding reads as 0
    reader = FeatureStore(url)
    assert reader.image(0).shape == (3, 299, int(reader.table["n_frames"][0]))
    window = reader.window(0, reader.table["n_frames"][0] - 10, 30)
    assert window.shape == (3, 299, 30) and not window[:, :, 10:].any()


def test_dask_cluster_writes_the_same_images_as_the_serial_path(small_corpus, tmp_path):
    from distributed import Client, LocalCluster

    serial, parallel = str(tmp_path / "serial.zarr"), str(tmp_path / "dask.zarr")
    featurize_store(small_corpus, serial, config=SMALL, labels="folders", time_chunk=256)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        summary = featurize_store(small_corpus, parallel, config=SMALL, labels="folders", client=client,
                                  time_chunk=256)
    assert summary.done == 4
    a, b = FeatureStore(serial), FeatureStore(parallel)
    assert list(a.ids) == list(b.ids)
    for i in range(4):
        assert np.array_equal(a.image(i), b.image(i))


def test_interrupted_run_resumes_without_touching_done_files(small_corpus, tmp_path):
    url = tmp_path / "s.zarr"

    def stop_after_two(summary):
        assert summary.submitted == 4
        if summary.finished == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        featurize_store(small_corpus, str(url), config=SMALL, labels="folders", time_chunk=256,
                        progress=stop_after_two)
    status = FeatureStore(str(url)).table["status"]
    assert sorted(status.tolist()) == ["done", "done", "pending", "pending"]
    before = chunk_files(url)
    done_rows = [i for i, s in enumerate(status) if s == "done"]
    # a crash halfway through a pending file leaves garbage in its chunks: it must be redone
    pending = [i for i, s in enumerate(status) if s == "pending"][0]
    zarr.open_array(str(url / "image"), mode="r+")[pending, :, :, :256] = 7
    summary = featurize_store(small_corpus, str(url), config=SMALL, labels="folders")
    assert (summary.submitted, summary.skipped, summary.done) == (2, 2, 2)
    after = chunk_files(url)
    for key, data in before.items():
        if int(key.split("/")[0]) in done_rows:
            assert after[key] == data  # done work is never rewritten
    reader = FeatureStore(str(url))
    assert set(reader.table["status"]) == {"done"}
    for i, file_id in enumerate(reader.ids):
        assert np.array_equal(reader.image(i), expected_image(small_corpus / file_id, SMALL))


def test_plan_lists_new_pending_and_retried_files_and_records_problems_once():
    from soundception.featurize.labels import Recording
    from soundception.featurize.pipeline import Job, plan_jobs

    recordings = [Recording("new.wav", "/a/new.wav"), Recording("done.wav", "/a/done.wav"),
                  Recording("cut.wav", "/a/cut.wav"), Recording("bad.wav", "/a/bad.wav"),
                  Recording("gone.wav", "/a/gone.wav", problem="not found"),
                  Recording("kept.wav", "/a/kept.wav", problem="conflicting labels")]
    rows = {r.id: i for i, r in enumerate(recordings)}
    status = ["pending", "done", "pending", "failed", "pending", "done"]
    plan = plan_jobs(recordings, rows, status)
    assert plan.jobs == (Job(0, "new.wav", "/a/new.wav"), Job(2, "cut.wav", "/a/cut.wav"))
    assert plan.failures == ((4, "gone.wav", "not found"),)  # a done file keeps its image despite a problem
    assert (plan.skipped, plan.failed_before) == (1, 1)
    retried = plan_jobs(recordings, rows, status, retry_failed=True)
    assert [job.file_id for job in retried.jobs] == ["new.wav", "cut.wav", "bad.wav"]
    assert (retried.skipped, retried.failed_before) == (1, 0)


def test_rerun_with_another_config_refuses_and_changes_nothing(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders")
    before = chunk_files(Path(url))
    with pytest.raises(store_io.StoreMismatch, match=r"hop_lengths: \[32, 128, 512\] -> \[32, 128, 256\]"):
        featurize_store(small_corpus, url, config=FeaturizerConfig(min_duration=4.0, hop_lengths=(32, 128, 256)),
                        labels="folders")
    assert chunk_files(Path(url)) == before


def test_not_a_store_is_refused(tmp_path, small_corpus):
    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.attrs["owner"] = "someone else"
    with pytest.raises(store_io.StoreMismatch, match="not a Soundception feature store"):
        featurize_store(small_corpus, str(tmp_path / "other.zarr"), config=SMALL)


def test_corrupted_chunk_is_detected_on_read(small_corpus, tmp_path):
    url = tmp_path / "s.zarr"
    featurize_store(small_corpus, str(url), config=SMALL, labels="folders", time_chunk=256)
    chunk = sorted((url / "image" / "c").rglob("*"))[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    reader = FeatureStore(str(url))
    with pytest.raises(Exception, match="checksum"):
        for i in range(reader.n_files):
            reader.image(i)


def test_longer_file_in_a_later_run_grows_the_store(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    first = FeatureStore(url)
    old_width, old_images = first.image_shape[3], [first.image(i) for i in range(4)]
    write(small_corpus / "low" / "long.flac", tone(1000.0, 9.0, amplitude=0.3) + noise(9.0))
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders")
    assert (summary.submitted, summary.done) == (1, 1)
    reader = FeatureStore(url)
    assert reader.image_shape[3] > old_width and reader.image_shape[3] % 256 == 0
    index = list(reader.ids).index("low/long.flac")
    assert reader.table["n_frames"][index] == SMALL.width_for(9.0)
    for i, image in enumerate(old_images):
        assert np.array_equal(reader.image(list(reader.ids).index(first.ids[i])), image)
    assert xr.open_zarr(url).sizes["time"] == reader.image_shape[3]  # consolidated metadata is fresh


def test_every_bad_input_fails_alone_with_a_one_line_reason(tmp_path):
    root = tmp_path / "audio"
    write(root / "good.wav", tone(2000.0, 3.0) + noise(3.0))
    write(root / "stereo.flac", np.stack([tone(800.0, 2.0), noise(2.0)], axis=1))
    write(root / "rate8k.wav", tone(1000.0, 2.0, sample_rate=8000), 8000)
    write(root / "rate96k.wav", tone(1000.0, 2.0, sample_rate=96000), 96000)
    write(root / "silent.wav", np.zeros(SR * 2, np.float32))
    write(root / "chant d'oiseau é 鳥.wav", tone(3000.0, 2.0))
    write(root / "tiny.wav", tone(1000.0, 50 / SR))  # 50 samples: less than one 128 window
    write(root / "nothing.wav", np.zeros(0, np.float32))
    (root / "empty.ogg").write_bytes(b"")
    (root / "notes.mp3").write_text("not audio at all\n" * 50)
    truncated = write(root / "cut.flac", tone(1000.0, 10.0) + noise(10.0))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "broken.flac").write_bytes(truncated.read_bytes()[:2000])
    url = str(tmp_path / "s.zarr")
    summary = featurize_store(root, url, config=SMALL, labels="none")
    reader = FeatureStore(url)
    status = dict(zip(reader.ids, reader.table["status"]))
    errors = dict(zip(reader.ids, reader.table["error"]))
    for name in ("good.wav", "stereo.flac", "rate8k.wav", "rate96k.wav", "silent.wav", "chant d'oiseau é 鳥.wav"):
        assert status[name] == "done", (name, errors[name])
    for name, reason in (("tiny.wav", "too short"), ("nothing.wav", "no audio samples"),
                         ("empty.ogg", "empty file"), ("notes.mp3", "cannot decode"), ("broken.flac", "lost sync")):
        assert status[name] == "failed" and reason in errors[name], (name, errors[name])
    assert status["cut.flac"] == "done" and "truncated" in reader.table["warning"][list(reader.ids).index("cut.flac")]
    assert all("\n" not in e for e in errors.values())
    assert summary.failed == sum(s == "failed" for s in status.values()) == 5
    assert summary.warnings == 2 and "silent" in reader.table["warning"][list(reader.ids).index("silent.wav")]
    assert not reader.image(list(reader.ids).index("silent.wav")).any()
    assert all(label == -1 for label in reader.table["label"])
    assert any("inspect" in line and "--failed" in line for line in summary.lines())
    # failed files stay failed on a plain rerun and are retried on request
    (root / "notes.mp3").unlink()
    write(root / "notes.mp3", tone(1500.0, 2.0), format="MP3", subtype="MPEG_LAYER_III")
    assert featurize_store(root, url, config=SMALL, labels="none").submitted == 0
    again = featurize_store(root, url, config=SMALL, labels="none", retry_failed=True)
    assert again.done >= 1
    reader = FeatureStore(url)
    assert reader.table["status"][list(reader.ids).index("notes.mp3")] == "done"


def test_labels_from_csv_with_background_missing_and_conflicting_rows(tmp_path):
    root = tmp_path / "audio"
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        write(root / "x" / name, tone(1000.0, 1.0))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,background\n"
                        "x/a.wav,wren,robin;tit\n"
                        "./x/b.wav,robin,\n"
                        "x/c.wav,wren\n"
                        "x/c.wav,robin\n"
                        "x/gone.wav,tit\n")
    url = str(tmp_path / "s.zarr")
    summary = featurize_store(root, url, config=SMALL, metadata=csv_path)
    reader = FeatureStore(url)
    assert reader.classes == ["robin", "wren"]  # sorted; "tit" never a main label
    row = {file_id: i for i, file_id in enumerate(reader.ids)}
    assert reader.table["label"][row["x/a.wav"]] == 1 and reader.table["label"][row["x/b.wav"]] == 0
    assert reader.table["label"][row["x/d.wav"]] == -1  # not in the CSV: unlabelled
    assert reader.table["background"][row["x/a.wav"]] == "robin;tit"
    assert reader.background[row["x/a.wav"]] == [0]
    assert reader.table["status"][row["x/c.wav"]] == "failed"
    assert "conflicting labels" in reader.table["error"][row["x/c.wav"]]
    assert reader.table["status"][row["x/gone.wav"]] == "failed"
    assert "not found" in reader.table["error"][row["x/gone.wav"]]
    assert summary.done == 3 and summary.failed == 2


def test_labels_from_birdclef_xml(tmp_path):
    root = tmp_path / "audio"
    write(root / "LIFECLEF2017_BIRD_XC_WAV_RN1.wav", tone(1000.0, 1.0))
    write(root / "LIFECLEF2017_BIRD_XC_WAV_RN2.wav", tone(2000.0, 1.0))
    for n, (class_id, genus, species, background) in enumerate(
            [("lsmvvt", "Turdus", "leucomelas", "Pitangus sulphuratus, Turdus amaurochalinus"),
             ("ahfcxd", "Pitangus", "sulphuratus", "")], start=1):
        (root / f"LIFECLEF2017_BIRD_XC_WAV_RN{n}.xml").write_text(
            f"<?xml version='1.0' encoding='UTF-8'?>\n<Audio><MediaId>{n}</MediaId>"
            f"<FileName>LIFECLEF2017_BIRD_XC_WAV_RN{n}.wav</FileName><ClassId>{class_id}</ClassId>"
            f"<Family>Turdidae</Family><Genus>{genus}</Genus><Species>{species}</Species>"
            f"<BackgroundSpecies>{background}</BackgroundSpecies><Quality>1</Quality></Audio>")
    (root / "broken.xml").write_text("<Audio><ClassId>")
    url = str(tmp_path / "s.zarr")
    summary = featurize_store(root, url, config=SMALL)
    reader = FeatureStore(url)
    assert reader.classes == ["ahfcxd", "lsmvvt"]
    assert reader.class_names == ["Pitangus sulphuratus", "Turdus leucomelas"]
    assert list(reader.table["label"]) == [1, 0]
    assert reader.background[0] == [0]  # matched by species name; the other is unknown
    assert any("broken.xml" in note for note in summary.notes)


def test_checksum_codec_and_chunking_are_as_documented(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=512)
    image = zarr.open_group(url, mode="r")["image"]
    assert image.chunks == (1, 3, 299, 512)
    assert [type(codec).__name__ for codec in image.compressors] == ["Crc32cCodec"]
    assert os.path.isdir(os.path.join(url, "image", "c"))
    packed = str(tmp_path / "zstd.zarr")
    featurize_store(small_corpus, packed, config=SMALL, labels="folders", time_chunk=512, zstd_level=3)
    image = zarr.open_group(packed, mode="r")["image"]
    assert [type(codec).__name__ for codec in image.compressors] == ["ZstdCodec", "Crc32cCodec"]
    assert np.array_equal(FeatureStore(packed).image(1), FeatureStore(url).image(1))


def test_a_non_empty_folder_that_is_not_a_store_is_refused_and_untouched(small_corpus, tmp_path):
    precious = tmp_path / "stores"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("field notes")
    (precious / "sub" / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(store_io.StoreMismatch, match="not empty and is not a Zarr store"):
        featurize_store(small_corpus, str(precious), config=SMALL, labels="folders")
    assert (precious / "notes.txt").read_text() == "field notes" and (precious / "sub" / "a.wav").exists()


def test_reruns_keep_labels_and_class_indices_stable(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders")
    before = FeatureStore(url)
    labels = dict(zip(before.ids, before.table["label"]))
    assert before.classes == ["high", "low"]
    # a rerun without labels changes no label
    featurize_store(small_corpus, url, config=SMALL, labels="none")
    assert dict(zip(FeatureStore(url).ids, FeatureStore(url).table["label"])) == labels
    # a new class sorts first but is appended: the old indices keep their meaning
    write(small_corpus / "aaa" / "new.wav", tone(3000.0, 2.0))
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders")
    after = FeatureStore(url)
    assert summary.submitted == 1 and after.classes == ["high", "low", "aaa"]
    assert {i: after.table["label"][k] for k, i in enumerate(after.ids) if i in labels} == labels
    assert after.table["label"][list(after.ids).index("aaa/new.wav")] == 2


def test_another_audio_folder_is_refused_unless_it_moved(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders")
    moved = tmp_path / "moved"
    small_corpus.rename(moved)
    with pytest.raises(store_io.StoreMismatch, match="holds recordings from"):
        featurize_store(moved, url, config=SMALL, labels="folders")
    summary = featurize_store(moved, url, config=SMALL, labels="folders", new_audio_root=True)
    assert (summary.submitted, summary.skipped) == (0, 4)
    assert FeatureStore(url).attrs["audio_root"] == str(moved.resolve())


def test_crash_while_growing_leaves_a_store_the_next_run_repairs(small_corpus, tmp_path):
    url = str(tmp_path / "s.zarr")
    featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    image = group["image"]
    grown = image.shape[3] + 512
    image.resize(image.shape[:3] + (grown,))  # time axis grown, coordinate not yet
    file_array = group["file"]
    file_array.resize((file_array.shape[0] + 2,))  # two rows registered, ids never written
    featurize_store(small_corpus, url, config=SMALL, labels="folders")
    ds = xr.open_zarr(url)
    assert ds.sizes["time"] == grown and ds.sizes["file"] == 4
    np.testing.assert_allclose(ds["time"].values, schema.time_coordinate(ds.sizes["time"], SMALL))


def test_conflicting_xml_labels_fail_the_file_and_tsv_metadata_reads(tmp_path):
    root = tmp_path / "audio"
    write(root / "a.wav", tone(1000.0, 1.0))
    write(root / "b.wav", tone(2000.0, 1.0))
    for n, class_id in ((1, "wren"), (2, "robin")):
        (tmp_path / "xml").mkdir(exist_ok=True)
        (tmp_path / "xml" / f"{n}.xml").write_text(
            f"<Audio><FileName>a.wav</FileName><ClassId>{class_id}</ClassId></Audio>")
    url = str(tmp_path / "x.zarr")
    featurize_store(root, url, config=SMALL, metadata=tmp_path / "xml")
    reader = FeatureStore(url)
    row = list(reader.ids).index("a.wav")
    assert reader.table["status"][row] == "failed" and "conflicting labels" in reader.table["error"][row]
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("path\tlabel\tbackground\na.wav\twren\trobin\nb.wav\trobin\t\n")
    featurize_store(root, str(tmp_path / "t.zarr"), config=SMALL, metadata=tsv)
    reader = FeatureStore(str(tmp_path / "t.zarr"))
    assert reader.classes == ["robin", "wren"] and list(reader.table["label"]) == [1, 0]
    assert reader.background[0] == [0]


def test_files_wider_than_the_header_said_grow_the_store_and_are_redone(small_corpus, tmp_path, monkeypatch):
    # Headers can under-state a length (or be unreadable, for codecs only audioread opens); no
    # such file can be made here, so the driver's estimate is made to say 0 px for every file.
    from soundception.featurize import plan

    monkeypatch.setattr(plan, "estimate_width", lambda path, config, storage_options=None: 0)
    url = str(tmp_path / "s.zarr")
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=256)
    assert (summary.submitted, summary.done, summary.failed) == (4, 4, 0)
    reader = FeatureStore(url)
    widest = int(reader.table["n_frames"].max())  # 3 s clip x 2 = 6 s: 1,196 px
    assert widest == SMALL.width_for(6.0) and reader.image_shape[3] == 1280  # whole 256 px chunks
    for i, file_id in enumerate(reader.ids):
        assert np.array_equal(reader.image(i), expected_image(small_corpus / file_id, SMALL))


@pytest.mark.parametrize("width", [100, 256, 1000, 1024, 1100, 2048])
def test_write_image_round_trips_any_width_chunk_aligned(tmp_path, width):
    """Widths under a chunk, at chunk and write-call boundaries and past them: the pixels read
    back, and the rest of the last chunk (and of the row) is zero."""
    url = str(tmp_path / "w.zarr")
    group = store_io.open_for_writing(url, SMALL, time_chunk=256)  # 4 chunks (1,024 columns) per write call
    store_io.register_files(group, [{"id": "a", "path": "a", "label": -1, "background": ""}])
    extent = store_io.ensure_width(group, 2100, SMALL)
    image = np.random.default_rng(width).integers(1, 256, (3, SMALL.image_height, width), dtype=np.uint8)
    sizes = []

    def blocks(columns: int):
        sizes.append(columns)
        return ((start, image[:, :, start : start + columns]) for start in range(0, width, columns))

    store_io.write_image(url, 0, width, blocks)
    stored = zarr.open_array(f"{url}/{schema.IMAGE}", mode="r")[0]
    assert sizes == [1024] and stored.shape[-1] == extent
    assert np.array_equal(stored[:, :, :width], image) and not stored[:, :, width:].any()
