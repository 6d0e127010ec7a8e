"""Run a model over every window of some recordings: window softmax and both attention maps, file by file.

Evaluation and prediction share this: a recording's score is the mean of its windows' softmax
(paper 3.3), and prediction also keeps the attention maps to localise within a window.

Windows are read by DataLoader workers (``workers > 0``) while the device computes; the loader
keeps their order, so a file's windows arrive together and each file is handed on as soon as its
last window is scored. Memory is bounded by the batch and one file's per-window results, never by
the whole image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from soundception.shared.reader import FeatureStore
from soundception.shared.text import one_line
from soundception.train.augment import to_float
from soundception.train.runtime import autocast
from soundception.train.windows import window_starts


@dataclass
class FileWindows:
    """What the model said about every window of one file.

    Attributes:
        position: the file's position in the requested ``indices``.
        index: its index in the store.
        starts: int ``(n_windows,)`` first column of each window, px.
        probabilities: float32 ``(n_windows, n_classes)`` softmax of the main logits.
        temporal: float32 ``(n_windows, T16)`` temporal (auxiliary) attention, or ``None``.
        time_frequency: float32 ``(n_windows, F32, T32)`` time-frequency (main) attention, or ``None``.
        error: why a window of this file could not be read (its results are then not to be used).
        embedding: float32 ``(n_windows, C32)`` pooled main-branch features, or ``None``.
    """

    position: int
    index: int
    starts: np.ndarray
    probabilities: np.ndarray
    temporal: np.ndarray | None
    time_frequency: np.ndarray | None
    error: str = ""
    embedding: np.ndarray | None = None

    def recording_scores(self) -> np.ndarray:
        """The recording's scores: mean of the windows' softmax, float64 ``(n_classes,)``."""
        return self.probabilities.astype(np.float64).mean(axis=0)


class WindowReader(Dataset):
    """``(position, store index, start px)`` items -> ``(position, start, uint8 (C, H, width), error)``.

    A window that cannot be read (a corrupt or missing chunk) comes back black with the reason in
    ``error``, so one bad file fails alone instead of stopping the loader.
    """

    def __init__(self, store: FeatureStore, items: Sequence[tuple[int, int, int]], width: int) -> None:
        self.store, self.items, self.width = store, list(items), int(width)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> tuple[int, int, torch.Tensor, str]:
        position, index, start = self.items[item]
        try:
            return position, start, torch.from_numpy(self.store.window(index, start, self.width)), ""
        except Exception as error:
            shape = (len(self.store.config.fft_windows), self.store.config.image_height, self.width)
            return position, start, torch.zeros(shape, dtype=torch.uint8), one_line(error)


def window_items(store: FeatureStore, indices: Sequence[int], *, width: int, hop: int) -> list[tuple[int, int, int]]:
    """Every window of every file, in file order: ``(position, store index, start px)``."""
    n_frames = store.table["n_frames"]
    return [(position, int(index), start) for position, index in enumerate(indices)
            for start in window_starts(int(n_frames[int(index)]), width, hop)]


@torch.no_grad()
def forward_windows(model: torch.nn.Module, windows: torch.Tensor, device: torch.device
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """uint8 ``(B, C, H, W)`` -> softmax ``(B, K)``, the two attention maps and the embedding (float32 numpy;
    ``None`` where the model gives none)."""
    batch = windows.to(device, non_blocking=True)
    if device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    prepare = getattr(model, "prepare", None)
    with autocast(device):
        output = model(prepare(batch) if prepare is not None else model.normalize(to_float(batch)))
    probabilities = torch.softmax(output.logits.float(), dim=1).cpu().numpy()
    maps = [getattr(output, name, None) for name in ("temporal_attention", "time_frequency_attention", "embedding")]
    arrays = (None if m is None else m.float().cpu().numpy() for m in maps)
    return (probabilities, *arrays)  # type: ignore[return-value]


def file_windows(model: torch.nn.Module, store: FeatureStore, indices: Sequence[int], *, width: int,
                 hop: int | None = None, device: torch.device, batch_size: int = 8, workers: int = 0,
                 attention: bool = True) -> Iterator[FileWindows]:
    """Score every window of each file in ``indices``; yield one :class:`FileWindows` per file, in order.

    Args:
        width: window width, px (the training crop).
        hop: px between window starts (default ``width``: tiled, as in evaluation).
        workers: DataLoader worker processes reading windows (0: read in this process).
        attention: keep the attention maps (prediction); evaluation needs only the softmax.
    """
    indices = [int(i) for i in indices]
    items = window_items(store, indices, width=width, hop=hop or width)
    loader = DataLoader(WindowReader(store, items, width), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    was_training = model.training
    model.eval()
    names = ("starts", "probabilities", "temporal", "time_frequency", "embedding", "errors")
    pending: dict[str, list] = {name: [] for name in names}
    current = None
    try:
        for positions, starts, windows, errors in loader:
            probabilities, temporal, time_frequency, embedding = forward_windows(model, windows, device)
            for k, position in enumerate(positions.tolist()):
                if current is not None and position != current:
                    yield _collect(current, indices[current], pending, attention)
                current = position
                pending["starts"].append(int(starts[k]))
                pending["probabilities"].append(probabilities[k])
                if errors[k]:
                    pending["errors"].append(errors[k])
                if attention:
                    pending["temporal"].append(None if temporal is None else temporal[k])
                    pending["time_frequency"].append(None if time_frequency is None else time_frequency[k])
                    pending["embedding"].append(None if embedding is None else embedding[k])
        if current is not None:
            yield _collect(current, indices[current], pending, attention)
    finally:
        model.train(was_training)


def _collect(position: int, index: int, pending: dict[str, list], attention: bool) -> FileWindows:
    def stacked(name: str) -> np.ndarray | None:
        values = pending[name]
        return None if not attention or not values or values[0] is None else np.stack(values).astype(np.float32)

    result = FileWindows(position=position, index=index, starts=np.array(pending["starts"], dtype=np.int64),
                         probabilities=np.stack(pending["probabilities"]).astype(np.float32),
                         temporal=stacked("temporal"), time_frequency=stacked("time_frequency"),
                         error=pending["errors"][0] if pending["errors"] else "", embedding=stacked("embedding"))
    for values in pending.values():
        values.clear()
    return result
