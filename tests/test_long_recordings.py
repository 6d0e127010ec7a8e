"""Long recordings: the decoded signal goes to a temporary file above a length threshold, and the
images made from it are byte-identical to those made in memory, while only a block stays resident."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, noise, tone, write

import soundception.featurize.audio as audio_module
from soundception.featurize.audio import decode, self_concatenate
from soundception.featurize.image import MultiscaleImage
from soundception.featurize.signal import SignalWriter, is_disk_backed, release_pages
from soundception.shared.config import FeaturizerConfig


def resident_bytes(array: np.ndarray) -> int:
    """Resident bytes of the memory mapping that holds ``array`` (Linux ``/proc/self/smaps``)."""
    address = array.__array_interface__["data"][0]
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line: "start-end perms ..."
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "Rss:":
            return int(fields[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.mark.parametrize("expected,spill,disk", [(0, 100_000, False), (50_000, 10_000, True), (5_000, 10_000, True),
                                                 (50_000, math.inf, False)])
def test_signal_writer_returns_the_blocks_in_order(expected, spill, disk):
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal(size).astype(np.float32) for size in rng.integers(1, 3000, 20)]
    blocks[3][5] = np.nan  # a corrupt sample becomes 0
    writer = SignalWriter(expected, spill_samples=spill)
    for block in blocks:
        writer.add(block)
    signal = writer.result()
    oracle = np.nan_to_num(np.concatenate(blocks), nan=0.0)
    assert signal.dtype == np.float32 and is_disk_backed(signal) == disk
    np.testing.assert_array_equal(signal, oracle)
    release_pages(signal[100:])  # dropping the pages loses nothing
    np.testing.assert_array_equal(signal, oracle)
    if disk:
        assert not signal.flags.writeable


def test_only_the_writers_own_maps_have_their_pages_dropped(tmp_path):
    """A copy-on-write np.memmap keeps its changes only in its pages: they must never be dropped."""
    path = tmp_path / "x.f32"
    np.arange(5000, dtype=np.float32).tofile(path)
    copy_on_write = np.memmap(path, dtype=np.float32, mode="c")
    copy_on_write[7] = -1.0
    release_pages(copy_on_write)
    assert not is_disk_backed(copy_on_write) and copy_on_write[7] == -1.0


@pytest.fixture(scope="module")
def twelve_minutes(tmp_path_factory):
    """12 min of 44.1 kHz stereo FLAC: noise, a tone, and a loud chirp every 7 s (decoded to 22,050 Hz)."""
    seconds, rate = 720.0, 44100
    left = tone(2500.0, seconds, sample_rate=rate, amplitude=0.1) + noise(seconds, sample_rate=rate, seed=4)
    right = noise(seconds, sample_rate=rate, seed=5)
    t = np.arange(int(0.4 * rate)) / rate
    chirp = (0.5 * np.sin(2 * np.pi * (1000 * t + 5000 * t**2))).astype(np.float32)
    for start in range(0, left.size - chirp.size, 7 * rate):
        right[start : start + chirp.size] += chirp
    return write(tmp_path_factory.mktemp("long") / "long.flac", np.stack([left, right], axis=1), rate)


def test_a_long_decode_goes_to_disk_with_the_same_samples(twelve_minutes, monkeypatch):
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", math.inf)
    in_memory = decode(twelve_minutes, sample_rate=SR)
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", 60.0)
    on_disk = decode(twelve_minutes, sample_rate=SR)
    assert not is_disk_backed(in_memory.samples) and is_disk_backed(on_disk.samples)
    assert on_disk.samples.size == pytest.approx(720 * SR, abs=2)
    np.testing.assert_array_equal(on_disk.samples, in_memory.samples)
    assert on_disk.duration == in_memory.duration and on_disk.warning == in_memory.warning == ""


def test_images_from_a_disk_signal_are_byte_identical_and_stay_small_in_memory(twelve_minutes, monkeypatch):
    config = FeaturizerConfig()
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", math.inf)
    in_memory = MultiscaleImage.plan(decode(twelve_minutes, sample_rate=SR).samples, config)
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", 60.0)
    samples = decode(twelve_minutes, sample_rate=SR).samples
    signal, repeats = self_concatenate(samples, min_samples=math.ceil(config.min_duration * SR))
    assert repeats == 1 and is_disk_backed(signal)
    on_disk = MultiscaleImage.plan(signal, config)
    assert on_disk.bounds == in_memory.bounds and on_disk.width == in_memory.width
    block_columns = 2048
    block_bytes = block_columns * math.ceil(SR / config.pixels_per_second) * 4
    assert resident_bytes(signal) <= block_bytes  # the first pass read samples all over the file
    largest = 0
    for (start, pixels), (_, expected) in zip(on_disk.blocks(block_columns), in_memory.blocks(block_columns)):
        assert np.array_equal(pixels, expected), start
        largest = max(largest, resident_bytes(signal))
    # the 64 MB signal was read end to end; at most about one block's samples stayed resident
    assert largest <= 2 * block_bytes < signal.nbytes / 10


def test_the_store_holds_the_same_image_either_way(twelve_minutes, tmp_path, monkeypatch):
    from soundception.featurize.pipeline import featurize_store
    from soundception.shared import FeatureStore

    config = FeaturizerConfig(image_height=64)
    folder = twelve_minutes.parent
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", math.inf)
    featurize_store(folder, str(tmp_path / "memory.zarr"), config=config, labels="none")
    monkeypatch.setattr(audio_module, "DISK_SIGNAL_SECONDS", 60.0)
    featurize_store(folder, str(tmp_path / "disk.zarr"), config=config, labels="none")
    memory, disk = FeatureStore(str(tmp_path / "memory.zarr")), FeatureStore(str(tmp_path / "disk.zarr"))
    assert list(disk.table["status"]) == ["done"]
    image = disk.image(0)
    assert image.shape[-1] == config.width_for(720.0) and image.std() > 10
    assert np.array_equal(image, memory.image(0))
