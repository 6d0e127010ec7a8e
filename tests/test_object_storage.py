"""Featurize into, and read from, a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from featurize.pipeline import featurize_store
from shared import FeatureStore, FeaturizerConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.fail("moto_server is not installed: pip install -e '.[dev]'")
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("moto_server did not start")
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        process.terminate()
        process.wait(timeout=10)


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
