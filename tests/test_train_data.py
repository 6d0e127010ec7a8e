"""The dataset over a feature store: split, sampler, loader (shapes, dtypes, only done + labelled files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from soundception.featurize.pipeline import featurize_store
from soundception.shared import schema
from soundception.shared.config import FeaturizerConfig
from soundception.shared.reader import FeatureStore
from soundception.train.dataset import (WindowDataset, WindowSampler, make_loader, sample_windows, split_files,
                           trainable_indices)

SR = 22050
CONFIG = FeaturizerConfig(image_height=64, image_seconds=0.75, min_duration=4.0)


def write_tone_corpus(root: Path, *, classes: int = 3, per_class: int = 5, seed: int = 0) -> Path:
    """Per class a tone in its own band plus noise (3-6 s); one corrupt file; one unlabelled file."""
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    for c in range(classes):
        (audio / f"class{c}").mkdir(parents=True)
        for k in range(per_class):
            seconds = rng.uniform(3.0, 6.0)
            t = np.arange(int(seconds * SR)) / SR
            tone = np.sin(2 * np.pi * (1500 + 2500 * c) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            soundfile.write(audio / f"class{c}" / f"f{k}.wav", 0.5 * tone + 0.05 * rng.standard_normal(t.size), SR)
    (audio / "class0" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    soundfile.write(audio / "unlabelled.wav", 0.1 * rng.standard_normal(4 * SR), SR)
    return audio


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    root = tmp_path_factory.mktemp("tones")
    audio = write_tone_corpus(root)
    featurize_store(audio, str(root / "s.zarr"), config=CONFIG, labels="folders")
    return FeatureStore(str(root / "s.zarr"))


def test_only_done_labelled_files_are_trainable(store):
    table = store.table
    assert (table["status"] == schema.FAILED).sum() == 1
    assert (table["label"] == -1).sum() == 1  # the unlabelled file
    failed = np.flatnonzero(table["status"] == schema.FAILED)
    assert table["label"][failed[0]] >= 0  # the broken file is labelled: excluded by its status alone
    indices = trainable_indices(store)
    assert len(indices) == 15
    assert failed[0] not in indices
    assert (table["status"][indices] == schema.DONE).all() and (table["label"][indices] >= 0).all()


def test_split_reproducible_disjoint_and_covering(store):
    a = split_files(store, validation_fraction=0.2, seed=3)
    b = split_files(store, validation_fraction=0.2, seed=3)
    c = split_files(store, validation_fraction=0.2, seed=4)
    assert a == b and a.validation != c.validation
    assert not set(a.train) & set(a.validation)
    assert sorted(a.train + a.validation) == sorted(trainable_indices(store).tolist())
    assert len(a.validation) == 3
    assert list(store.ids[list(a.validation)]) == list(a.validation_ids)
    assert type(a).from_dict(a.to_dict()) == a
    a.check_against(store)


def test_sample_windows_stay_inside_and_balance():
    rng = np.random.default_rng(0)
    files = np.arange(10)
    n_frames = np.array([50, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    labels = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    picks = sample_windows(rng, files, n_frames, labels, batch_size=4000, read_width=100, balanced=False)
    starts = np.array([s for _, s in picks])
    chosen = np.array([f for f, _ in picks])
    assert (starts[chosen == 0] == 0).all()  # narrower than the window: start 0, zero-padded
    assert (starts[chosen > 0] <= 400).all() and starts.max() == 400
    assert abs((chosen == 0).mean() - 0.1) < 0.03  # uniform over files
    balanced = sample_windows(rng, files, n_frames, labels, batch_size=4000, read_width=100, balanced=True)
    assert abs(np.mean([f == 0 for f, _ in balanced]) - 0.5) < 0.05  # uniform over classes


def test_sampler_is_a_function_of_seed_and_step(store):
    files = np.array(split_files(store, seed=0).train)
    full = WindowSampler(store, files, batch_size=3, read_width=100, seed=5, stop_step=6, accumulation=2)
    tail = WindowSampler(store, files, batch_size=3, read_width=100, seed=5, start_step=4, stop_step=6, accumulation=2)
    assert list(full)[8:] == list(tail) and len(full) == 12
    other_rank = WindowSampler(store, files, batch_size=3, read_width=100, seed=5, stop_step=6, rank=1)
    assert other_rank.batch(0) != full.batch(0)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_shapes_dtypes_and_done_files(store, workers):
    split = split_files(store, seed=0)
    width = 180
    sampler = WindowSampler(store, np.array(split.train), batch_size=4, read_width=width, seed=1, stop_step=5)
    dataset = WindowDataset(store, width=width)
    batches = list(make_loader(dataset, sampler, num_workers=workers, pin_memory=False))
    assert len(batches) == 5
    for batch, expected in zip(batches, sampler):
        assert batch["image"].shape == (4, 3, 64, width) and batch["image"].dtype == torch.uint8
        assert batch["label"].dtype == torch.int64 and batch["target"].shape == (4, len(store.classes))
        assert set(batch["file"].tolist()) <= set(split.train)
        # straight from Zarr: the same columns the reader returns
        file, start = expected[0]
        np.testing.assert_array_equal(batch["image"][0].numpy(), store.window(file, start, width))
        assert (batch["target"][torch.arange(4), batch["label"]] == 1).all()


def test_reader_pickles_by_url(store):
    import pickle

    clone = pickle.loads(pickle.dumps(WindowDataset(store, width=50)))
    assert clone.store.url == store.url
    np.testing.assert_array_equal(clone[(0, 0)]["image"].numpy(), store.window(0, 0, 50))
