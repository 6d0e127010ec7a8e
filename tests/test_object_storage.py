"""Featurize into, and read from, a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig




def test_featurize_to_s3_and_read_back(small_corpus, tmp_path, s3_endpoint):
    import s3fs

    s3fs.S3FileSystem(**s3_endpoint).mkdir("birds")
    url = "s3://birds/features.zarr"
    config = FeaturizerConfig(min_duration=4.0)
    summary = featurize_store(small_corpus, url, config=config, labels="folders", storage_options=s3_endpoint,
                              time_chunk=512)
    assert summary.done == 4
    local = str(tmp_path / "local.zarr")
    featurize_store(small_corpus, local, config=config, labels="folders", time_chunk=512)
    remote, reference = FeatureStore(url, s3_endpoint), FeatureStore(local)
    assert list(remote.ids) == list(reference.ids) and remote.classes == ["high", "low"]
    for i in range(4):
        assert np.array_equal(remote.image(i), reference.image(i))
    ds = xr.open_zarr(url, storage_options=s3_endpoint)
    assert ds["image"].sizes["file"] == 4 and set(ds["status"].values) == {"done"}
    # a rerun against the bucket resumes: nothing left to do
    assert featurize_store(small_corpus, url, config=config, labels="folders",
                           storage_options=s3_endpoint).submitted == 0


SECRET = "Zm9yLXRlc3RzLW9ubHktZG8tbm90LXByaW50LXRoaXM"  # must never appear in any output or file


def test_audio_on_s3_to_a_store_on_s3_to_training_crops_with_credentials_from_the_environment(
        s3_endpoint, tmp_path, monkeypatch):
    """The whole path a cluster user takes: nothing local but the model, credentials only in the
    environment, and the secret nowhere in what the commands print or write."""
    import s3fs
    from click.testing import CliRunner

    from soundception.featurize.synthetic import make_dataset
    from soundception.cli import main

    make_dataset(tmp_path / "data", n_species=2, files_per_species=3, min_seconds=3, max_seconds=6, seed=1)
    (tmp_path / "data" / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "soundception-tests")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint["endpoint_url"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    filesystem = s3fs.S3FileSystem()
    filesystem.mkdir("field")
    filesystem.put(str(tmp_path / "data" / "audio"), "field/audio", recursive=True)
    filesystem.put(str(tmp_path / "data" / "labels.csv"), "field/labels.csv")
    store = "s3://field/features.zarr"
    runner = CliRunner()
    outputs = []

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args))
        outputs.append(result.output)
        assert result.exit_code == 0, result.output
        return result.stdout

    printed = run("featurize", "s3://field/audio", "--store", store, "--metadata", "s3://field/labels.csv",
                  "--min-duration", "4", "--workers", "2")
    assert "featurized 6 of 7 file(s)" in printed and "1 file(s) failed" in printed
    run("inspect", store, "--failed")
    assert run("inspect", store, "--verify").strip().endswith("all sound")

    local = str(tmp_path / "local.zarr")
    featurize_store(tmp_path / "data" / "audio", local, config=FeaturizerConfig(min_duration=4.0),
                    metadata=tmp_path / "data" / "labels.csv")
    remote, reference = FeatureStore(store), FeatureStore(local)
    assert list(remote.ids) == list(reference.ids) and remote.classes == reference.classes
    for i in reference.done_indices():
        assert np.array_equal(remote.image(i), reference.image(i))
        assert np.array_equal(remote.window(i, 150, 199), reference.window(i, 150, 199))  # a training crop
    ds = xr.open_zarr(store)
    assert int((ds["status"] == "done").sum()) == 6 and ds["image"].dims == ("file", "channel", "freq", "time")

    run_dir = tmp_path / "run"
    run("train", "--store", store, "--out", str(run_dir), "--backbone", "test_efficientnet", "--crop-seconds", "1",
        "--stage1-steps", "1", "--stage2-steps", "2", "--stage1-batch-size", "2", "--stage2-batch-size", "2",
        "--workers", "1", "--eval-every", "2", "--checkpoint-every", "2", "--validation-fraction", "0.34",
        "--no-progress", "--storage-options", json.dumps({"key": "soundception-tests", "secret": SECRET}))
    run("evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--store", store)
    run("predict", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--store", store,
        "--out", str(tmp_path / "predictions"), "--format", "csv")
    # the same recordings straight from the bucket: featurized with the checkpoint's config, same scores
    run("predict", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "s3://field/audio",
        "--out", str(tmp_path / "from-audio"), "--format", "csv", "--featurize-workers", "0")
    tables = [sorted((tmp_path / name / "predictions.csv").read_text().splitlines()) for name in
              ("predictions", "from-audio")]
    assert tables[0] == tables[1] and len(tables[0]) > 6
    assert "broken.wav" in (tmp_path / "from-audio" / "failures.csv").read_text()
    for text in outputs:
        assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".log", ".jsonl", ".pt", ""):
            assert SECRET.encode() not in path.read_bytes(), path
    for key in filesystem.find("field/features.zarr"):
        if key.endswith("zarr.json"):
            assert SECRET.encode() not in filesystem.cat_file(key), key
