"""Reading training windows from a feature store: the split, the sampler and the dataset.

* :func:`split_files` - a seeded 90/10 train/validation split by file over labelled, done files.
* :class:`WindowSampler` - a batch sampler whose batch at ``(step, micro_batch, rank)`` depends only
  on those numbers and the seed: which files (uniform over files, or class-balanced) and where
  each window starts. Resuming at step ``s`` therefore reproduces the uninterrupted run exactly,
  with any number of loader workers, and ranks under DDP draw disjoint random streams.
* :class:`WindowDataset` - maps ``(file, start)`` to a uint8 window read straight from Zarr; only
  the chunks the window touches are read. Workers reopen the store by URL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from soundception.shared import schema
from soundception.shared.location import is_url, local_path, normalize
from soundception.shared.reader import FeatureStore, StoreError
from soundception.train.config import UserError


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> FeatureStore:
    """Open a feature store for training or evaluation.

    Raises:
        StoreError: one line; a local path that does not exist or is a regular file is named as such.
    """
    url = normalize(url)
    if not is_url(url):
        path = local_path(url)
        if not path.exists():
            raise StoreError(f"{url} is not a readable Zarr feature store: no such file or folder")
        if not path.is_dir():
            raise StoreError(f"{url} is not a readable Zarr feature store: it is a file, not a store folder")
    return FeatureStore(url, storage_options)


@dataclass(frozen=True)
class Split:
    """File ids (stable across store rewrites) and store indices of each part of the split."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    seed: int
    validation_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"train": list(self.train), "validation": list(self.validation), "train_ids": list(self.train_ids),
                "validation_ids": list(self.validation_ids), "seed": self.seed,
                "validation_fraction": self.validation_fraction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        return cls(train=tuple(data["train"]), validation=tuple(data["validation"]),
                   train_ids=tuple(data["train_ids"]), validation_ids=tuple(data["validation_ids"]),
                   seed=int(data["seed"]), validation_fraction=float(data["validation_fraction"]))

    def check_against(self, store: FeatureStore) -> None:
        """Raise if the store's file ids at the split's indices are not the split's ids."""
        for indices, ids in ((self.train, self.train_ids), (self.validation, self.validation_ids)):
            if indices and (max(indices) >= store.n_files or list(store.ids[list(indices)]) != list(ids)):
                raise UserError(f"the split stored with the run does not match the files of {store.url}")


def trainable_indices(store: FeatureStore) -> np.ndarray:
    """Indices of files that are done, labelled (label >= 0) and have a non-empty image, ``(n,)``."""
    table = store.table
    keep = (table["status"] == schema.DONE) & (table["label"] >= 0) & (table["n_frames"] > 0)
    return np.flatnonzero(keep)


def split_files(store: FeatureStore, *, validation_fraction: float = 0.1, seed: int = 0) -> Split:
    """Seeded random split of the trainable files (:func:`trainable_indices`) by file.

    At least one file goes to each side when there are two or more files.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    indices = trainable_indices(store)
    if indices.size == 0:
        raise UserError(f"{store.url} has no labelled file with status 'done' to train on")
    order = np.random.default_rng(seed).permutation(indices)
    n_validation = int(round(validation_fraction * order.size))
    if validation_fraction > 0 and order.size >= 2:
        n_validation = max(1, n_validation)
    n_validation = min(n_validation, order.size - 1)  # always a file to train on, even with one file
    validation, train = np.sort(order[:n_validation]), np.sort(order[n_validation:])
    return Split(train=tuple(int(i) for i in train), validation=tuple(int(i) for i in validation),
                 train_ids=tuple(str(store.ids[i]) for i in train),
                 validation_ids=tuple(str(store.ids[i]) for i in validation),
                 seed=seed, validation_fraction=validation_fraction)


def step_rng(seed: int, step: int, *keys: int) -> np.random.Generator:
    """The numpy generator of one step: a pure function of ``(seed, step, *keys)``."""
    return np.random.default_rng([seed, step, *keys])


def sample_windows(rng: np.random.Generator, files: np.ndarray, n_frames: np.ndarray, labels: np.ndarray, *,
                   batch_size: int, read_width: int, balanced: bool, calls: Sequence[np.ndarray] = (),
                   call_fraction: float = 0.0) -> list[tuple[int, int]]:
    """Draw ``batch_size`` ``(file, start_column)`` pairs.

    Args:
        files: ``(n,)`` store indices to draw from.
        n_frames: ``(n,)`` valid width (px) of each file.
        labels: ``(n,)`` class of each file (for ``balanced``).
        read_width: px per window; the start is uniform over positions keeping the window inside
            the image (0 when the image is narrower; the reader zero-pads).
        balanced: draw a class uniformly first, then a file of that class; else uniform over files.
        calls: per position in ``files``, an ``(E, 2)`` int array of its annotated calls' first and
            last-plus-one columns (px); empty where a file has none.
        call_fraction: the share of windows, of files with calls, that are drawn to contain a call:
            one of the file's calls uniformly, then the start uniform over the starts whose window
            holds the whole call (or lies inside a call longer than the window). 0 (the paper's
            uniform crops) draws exactly what it drew before this option existed.
    """
    if balanced:
        classes = np.unique(labels)
        chosen = rng.choice(classes, size=batch_size)
        picks = np.array([rng.choice(np.flatnonzero(labels == c)) for c in chosen])
    else:
        picks = rng.integers(0, files.size, size=batch_size)
    spare = np.maximum(n_frames[picks] - read_width, 0)
    starts = np.floor(rng.random(batch_size) * (spare + 1)).astype(np.int64)
    if call_fraction > 0:
        on_call = rng.random(batch_size) < call_fraction
        for i in np.flatnonzero(on_call):
            events = calls[picks[i]]
            if len(events):
                starts[i] = call_start(rng, events[rng.integers(len(events))], read_width, int(spare[i]))
    return [(int(files[p]), int(s)) for p, s in zip(picks, starts)]


def call_start(rng: np.random.Generator, call: np.ndarray, read_width: int, spare: int) -> int:
    """A window start drawn uniformly among those whose ``read_width`` px window holds ``call``
    (``[first, last + 1)`` px), or, for a call longer than the window, lies inside it; kept within
    ``[0, spare]`` (a window reaching past the image end holds the call as far as the image does)."""
    first, stop = int(call[0]), int(call[1])
    low, high = sorted((first, stop - read_width))
    low, high = min(max(low, 0), spare), min(max(high, 0), spare)
    return int(low + np.floor(rng.random() * (high - low + 1)))


def call_columns(store: FeatureStore, files: np.ndarray) -> list[np.ndarray]:
    """Per file of ``files``, its annotated calls as ``(E, 2)`` int64 ``[first, last + 1)`` columns."""
    events = store.events
    pixels_per_second = store.config.pixels_per_second
    columns = []
    for index in files:
        rows = events["event_file"] == index
        first = np.floor(events["event_start_s"][rows] * pixels_per_second)
        stop = np.maximum(np.ceil(events["event_end_s"][rows] * pixels_per_second), first + 1)
        columns.append(np.stack([first, stop], axis=1).astype(np.int64).reshape(-1, 2))
    return columns


class WindowSampler:
    """Batch sampler: yields lists of ``(file, start)`` for steps ``[start_step, stop_step)``.

    Each step yields ``accumulation`` micro-batches. Micro-batch ``m`` of step ``s`` on ``rank``
    of ``world_size`` is the step's global micro-batch ``g = m * world_size + rank``, drawn from
    :func:`step_rng` ``(seed, s, g)``: so DDP over W ranks draws exactly the batches one process
    with ``accumulation * W`` draws, and the two runs train the same model.
    """

    def __init__(self, store: FeatureStore, files: np.ndarray, *, batch_size: int, read_width: int, seed: int,
                 start_step: int = 0, stop_step: int, accumulation: int = 1, balanced: bool = False,
                 rank: int = 0, world_size: int = 1, call_fraction: float = 0.0) -> None:
        if batch_size < 1 or accumulation < 1:
            raise ValueError("batch_size and accumulation must be >= 1")
        self.files = np.asarray(files, dtype=np.int64)
        if self.files.size == 0:
            raise ValueError("no training files to sample from")
        self.n_frames = store.table["n_frames"][self.files].astype(np.int64)
        self.labels = store.table["label"][self.files].astype(np.int64)
        self.batch_size, self.read_width, self.seed = batch_size, read_width, seed
        self.start_step, self.stop_step, self.accumulation = start_step, stop_step, accumulation
        self.balanced, self.rank, self.world_size = balanced, rank, world_size
        self.call_fraction = float(call_fraction)
        self.calls = call_columns(store, self.files) if self.call_fraction > 0 else []

    def global_micro_batch(self, micro_batch: int) -> int:
        """Index of this rank's ``micro_batch`` among all micro-batches of a step, on all ranks."""
        return micro_batch * self.world_size + self.rank

    def batch(self, step: int, micro_batch: int = 0) -> list[tuple[int, int]]:
        rng = step_rng(self.seed, step, self.global_micro_batch(micro_batch))
        return sample_windows(rng, self.files, self.n_frames, self.labels, batch_size=self.batch_size,
                              read_width=self.read_width, balanced=self.balanced, calls=self.calls,
                              call_fraction=self.call_fraction)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.stop_step):
            for micro_batch in range(self.accumulation):
                yield self.batch(step, micro_batch)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.accumulation


class WindowDataset(Dataset):
    """``dataset[(file, start)]`` -> ``{"image": uint8 (C, H, width), "label": int64, "target": float32 (K,),
    "file": int64}``.

    ``target`` is the multi-label vector: 1 for the main species and its background species. It is
    built per sample from the store's labels, so no ``files x classes`` matrix is held or copied into
    the loader workers (it would be 219 MB at BirdCLEF 2017's 36,492 files x 1,500 species).
    """

    def __init__(self, store: FeatureStore, *, width: int) -> None:
        if width < 1:
            raise ValueError(f"window width must be >= 1 px, got {width}")
        self.store, self.width = store, int(width)

    def __len__(self) -> int:
        return self.store.n_files

    def target(self, index: int) -> np.ndarray:
        """``(n_classes,)`` float32: 1 at file ``index``'s label and at each of its background species."""
        target = np.zeros(len(self.store.classes), dtype=np.float32)
        label = int(self.store.table["label"][index])
        if label >= 0:  # -1: an unlabelled file (never sampled for training)
            target[label] = 1.0
        target[self.store.background[index]] = 1.0
        return target

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, start = int(key[0]), int(key[1])
        window = self.store.window(index, start, self.width)
        return {"image": torch.from_numpy(window), "label": torch.tensor(int(self.store.table["label"][index])),
                "target": torch.from_numpy(self.target(index)), "file": torch.tensor(index)}


def reopen_store(worker_id: int) -> None:
    """``worker_init_fn``: each loader worker opens the store itself (no inherited handles)."""
    info = get_worker_info()
    dataset = info.dataset  # type: ignore[union-attr]
    dataset.store = FeatureStore(dataset.store.url, dataset.store.storage_options)


def make_loader(dataset: WindowDataset, sampler: WindowSampler, *, num_workers: int, pin_memory: bool,
                prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader over ``sampler``'s batches; workers persist and reopen the store themselves."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": reopen_store}
    # an explicit generator keeps the loader from drawing its base seed from the global RNG
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(sampler.seed), **extra)
