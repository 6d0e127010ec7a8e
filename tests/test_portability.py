"""A feature store is plain Zarr v3: a second implementation (tensorstore's ``zarr3`` driver) reads it
byte for byte, today's one-object-per-chunk layout and the sharded layout proposed in issue 9 alike.

tensorstore shares no code with zarr-python, so a codec that only numcodecs knows, a layout only
zarr-python understands, or a wrong shard index would show up here as a failed open or as pixels
that differ from what the featurizer computed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from soundception.featurize.audio import decode, self_concatenate
from soundception.featurize.image import multiscale_image
from soundception.featurize.pipeline import featurize_store
from soundception.shared import FeatureStore, FeaturizerConfig, schema

tensorstore = pytest.importorskip("tensorstore")

SMALL = FeaturizerConfig(min_duration=4.0)  # 3-5 s files, 800-1,000 columns; geometry as in the paper
TIME_CHUNK = 128  # several chunks (and shards) per file, a partial last one


def open_with_tensorstore(url: str, name: str):
    """Array ``name`` of the store at local path ``url``, opened by tensorstore's ``zarr3`` driver."""
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{url}/{name}/"}}
    return tensorstore.open(spec, read=True).result()


def featurizer_image(path: Path, config: FeaturizerConfig) -> np.ndarray:
    """The image the featurizer computes for ``path``, independent of any store."""
    samples = decode(path, sample_rate=config.sample_rate).samples
    signal, _ = self_concatenate(samples, min_samples=int(np.ceil(config.min_duration * config.sample_rate)))
    return multiscale_image(signal, config)


def reshard(source: str, target: str, shard_chunks: int) -> None:
    """Copy a featurized store, its image rewritten as Zarr v3 shards of ``shard_chunks`` chunks.

    Inner chunks are the store's ``(1, channels, height, time_chunk)`` with a crc32c each, the
    shard index has its own crc32c (zarr's default), and every write call covers whole shards
    (the last one up to the file's last chunk), as issue 9 proposes for ``write_image``.
    """
    shutil.copytree(source, target)
    reader = FeatureStore(source)
    rows = {int(i): reader.image(int(i)) for i in reader.done_indices()}
    group = zarr.open_group(target, mode="r+", use_consolidated=False)
    old = group[schema.IMAGE]
    shape, chunks, attrs = old.shape, old.chunks, dict(old.attrs)
    del group[schema.IMAGE]
    image = group.create_array(
        schema.IMAGE, shape=shape, chunks=chunks, shards=chunks[:3] + (chunks[3] * shard_chunks,),
        dtype="uint8", fill_value=0, dimension_names=schema.IMAGE_DIMS, compressors=[Crc32cCodec()],
    )
    image.attrs.update(attrs)
    image = image.with_config({"write_empty_chunks": True})  # as write_image: every chunk holds columns
    step = chunks[3] * shard_chunks
    for index, pixels in rows.items():
        end = -(-pixels.shape[2] // chunks[3]) * chunks[3]  # the last chunk zero-padded
        padded = np.zeros(pixels.shape[:2] + (end,), dtype=np.uint8)
        padded[:, :, : pixels.shape[2]] = pixels
        for start in range(0, end, step):
            image[index, :, :, start:min(start + step, end)] = padded[:, :, start:start + step]


@pytest.fixture
def featurized(small_corpus, tmp_path) -> str:
    url = str(tmp_path / "features.zarr")
    summary = featurize_store(small_corpus, url, config=SMALL, labels="folders", time_chunk=TIME_CHUNK)
    assert (summary.done, summary.failed) == (4, 0)
    return url


def assert_tensorstore_reads(url: str, audio_root: Path) -> None:
    """tensorstore reads the store's image and per-file numbers as zarr-python and the featurizer do."""
    reader = FeatureStore(url)
    image = open_with_tensorstore(url, schema.IMAGE)
    assert image.dtype == tensorstore.uint8
    assert tuple(image.shape) == reader.image_shape
    assert tuple(image.domain.labels) == schema.IMAGE_DIMS
    n_frames = open_with_tensorstore(url, "n_frames").read().result()
    duration = open_with_tensorstore(url, "duration").read().result()
    assert np.array_equal(n_frames, reader.table["n_frames"])
    assert np.array_equal(duration, reader.table["duration"])
    done = reader.done_indices()
    assert len(done) == 4
    for index in done:
        width = int(n_frames[index])
        row = image[index].read().result()  # the whole padded row: channels x height x time extent
        assert np.array_equal(row[:, :, :width], reader.image(index))
        assert np.array_equal(row[:, :, :width], featurizer_image(audio_root / str(reader.ids[index]), SMALL))
        assert not row[:, :, width:].any()  # padding: never written, reads as the fill value


def test_tensorstore_reads_the_featurizers_store(featurized, small_corpus):
    assert_tensorstore_reads(featurized, small_corpus)


@pytest.mark.parametrize("shard_chunks", [4, 12])
def test_tensorstore_reads_a_sharded_store(featurized, small_corpus, tmp_path, shard_chunks):
    url = str(tmp_path / f"sharded{shard_chunks}.zarr")
    reshard(featurized, url, shard_chunks)
    metadata = zarr.open_array(f"{url}/{schema.IMAGE}", mode="r").metadata.to_dict()
    assert [codec["name"] for codec in metadata["codecs"]] == ["sharding_indexed"]
    widths = FeatureStore(url).table["n_frames"]
    shards = sum(-(-int(w) // (TIME_CHUNK * shard_chunks)) for w in widths)
    assert sum(1 for p in Path(url, schema.IMAGE, "c").rglob("*") if p.is_file()) == shards  # one object each
    assert FeatureStore(url).image_shape == FeatureStore(featurized).image_shape
    assert_tensorstore_reads(url, small_corpus)
