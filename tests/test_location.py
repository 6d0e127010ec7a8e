"""shared.location: one rule for "is this a URL", and every command follows it."""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import pytest
from click.testing import CliRunner

from soundception.shared.location import LocationError, is_url, local_path, normalize, scheme


@pytest.mark.parametrize(("location", "url", "normalized"), [
    ("stores/a.zarr", False, "stores/a.zarr"),  # relative
    ("/data/a.zarr", False, "/data/a.zarr"),
    ("file:///data/a.zarr", False, "/data/a.zarr"),
    ("file://localhost/data/a.zarr", False, "/data/a.zarr"),
    ("FILE:///data/a.zarr", False, "/data/a.zarr"),
    ("file:///", False, "/"),
    ("C:\\audio\\a.wav", False, "C:\\audio\\a.wav"),  # Windows drives are not schemes
    ("C:/audio/a.wav", False, "C:/audio/a.wav"),
    ("c://audio", False, "c://audio"),
    ("data/odd://name", False, "data/odd://name"),  # "://" inside a path is no scheme
    ("s3://bucket/a.zarr", True, "s3://bucket/a.zarr"),
    ("S3://bucket/a.zarr", True, "S3://bucket/a.zarr"),
    ("gs://bucket/a", True, "gs://bucket/a"),
    ("http://host/a.wav", True, "http://host/a.wav"),
    ("https://host/a.wav", True, "https://host/a.wav"),
    ("memory://store", True, "memory://store"),
    ("simplecache::s3://b/a", False, "simplecache::s3://b/a"),  # fsspec chains are not taken
])
def test_the_rule_by_hand(location, url, normalized):
    assert is_url(location) is url
    assert normalize(location) == normalized


def test_schemes_and_paths():
    assert scheme("s3://b/k") == "s3" and scheme("GS://b") == "gs" and scheme("rel/x") == "file"
    assert scheme(Path("/x")) == "file" and not is_url(PureWindowsPath("C:/x"))
    assert local_path("file:///data/x") == Path("/data/x") and local_path("rel") == Path("rel")
    with pytest.raises(LocationError, match="is a URL, not a local path"):
        local_path("s3://b/k")


@pytest.mark.parametrize("call", [is_url, normalize, scheme, local_path])
def test_a_file_url_on_another_host_is_refused_in_one_line(call):
    with pytest.raises(LocationError) as refused:
        call("file://nas/share/audio")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("file://nas/share/audio: a file:// URL must name a local path")


def test_featurize_and_inspect_take_file_urls_as_local_paths(small_corpus, tmp_path):
    """featurize writes a store given as file:///... from audio given as file:///...; it is the same
    store as the plain path (inspect opens it both ways); file://host/... is refused in one line."""
    from soundception.cli import main
    from soundception.featurize.pipeline import featurize_store
    from soundception.shared import FeatureStore
    from soundception.shared.config import FeaturizerConfig

    store = tmp_path / "s.zarr"
    summary = featurize_store("file://" + str(small_corpus), "file://" + str(store), labels="folders",
                              config=FeaturizerConfig(min_duration=4.0))
    assert summary.failed == 0 and (store / "zarr.json").is_file()
    opened = FeatureStore("file://" + str(store))
    assert opened.url == str(store) and opened.attrs["audio_root"] == str(small_corpus.resolve())
    assert sorted(opened.ids) == ["high/high0.wav", "high/high1.wav", "low/low0.wav", "low/low1.wav"]
    runner = CliRunner()
    shown = runner.invoke(main, ["inspect", "file://" + str(store)])
    assert shown.exit_code == 0 and "4 done" in shown.output, shown.output
    refused = runner.invoke(main, ["featurize", "file://nas/audio", "--store", str(tmp_path / "t.zarr"), "--serial"])
    assert refused.exit_code == 1 and refused.output.startswith("Error: file://nas/audio: a file:// URL must name")
    assert len(refused.output.strip().splitlines()) == 1
