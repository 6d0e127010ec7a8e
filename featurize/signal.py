"""Where a decoded signal lives: in memory, or, for long recordings, in a temporary file on disk.

A 10 h recording at 22,050 Hz is 3.2 GB of float32. :class:`SignalWriter` collects decoded
blocks in one preallocated buffer while the signal is short, and past ``spill_samples`` writes
them to an unnamed temporary file instead; the result is then a read-only ``numpy`` array over a
memory map of that file, which every numpy operation (slices, ``sliding_window_view``, fancy
indexing) reads like an in-memory array, so the image code computes identical values.

Pages of a mapped file that were read stay resident (and count in the process's RSS) until the
kernel needs the memory; :func:`release_pages` drops them, so a reader that goes block by block
holds only its current block. The file lives on the disk of ``tempfile.gettempdir()``
(``TMPDIR``): on a tmpfs it would sit in memory. It has no name and is deleted when the array is
garbage collected (Linux ``O_TMPFILE``; elsewhere, deleted on close as soon as it is mapped).
"""

from __future__ import annotations

import mmap
import tempfile

import numpy as np


class _SignalMap(mmap.mmap):
    """A read-only map of a :class:`SignalWriter` file: the only maps whose pages are dropped
    (dropping a copy-on-write ``np.memmap``'s pages would lose its changes)."""


def _mapping(array: np.ndarray) -> _SignalMap | None:
    """The signal map under ``array`` (through any chain of views), or None."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer keeps a memoryview of the map
        base = base.obj
    return base if isinstance(base, _SignalMap) else None


def is_disk_backed(array: np.ndarray) -> bool:
    """True when ``array`` reads a temporary file written by :class:`SignalWriter`."""
    return _mapping(array) is not None


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a disk-backed ``array`` (they are read again when touched);
    nothing for an in-memory array. The data stays in the file and the kernel's page cache."""
    mapping = _mapping(array)
    if mapping is not None and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)


class SignalWriter:
    """Appends float32 blocks into one 1-D signal, on disk once it outgrows ``spill_samples``.

    Args:
        expected: samples the header promises (sizes the in-memory buffer; 0 if unknown).
        spill_samples: above this many samples the signal goes to a temporary file. A header
            that promises more starts on disk; a short header that under-stated is spilled
            when the signal passes it.

    Non-finite samples (a corrupt float WAV) are written as 0.
    """

    def __init__(self, expected: int, *, spill_samples: float) -> None:
        self.spill_samples = spill_samples
        self.size = 0
        self.file = None
        self.overflow: list[np.ndarray] = []
        self.buffer = np.empty(0 if expected > spill_samples else max(expected, 0), dtype=np.float32)
        if expected > spill_samples:
            self._open_file()

    def _open_file(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="soundception-signal-")  # noqa: SIM115 (closed in result)

    def add(self, block: np.ndarray) -> None:
        """Append a 1-D block (any float dtype; converted to float32)."""
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        if self.file is not None:
            self.file.write(memoryview(np.ascontiguousarray(block)))
        elif block.size <= self.buffer.size - self.size and not self.overflow:
            self.buffer[self.size : self.size + block.size] = block
        else:  # the header under-stated the length: keep going in pieces
            self.overflow.append(block.copy())
        self.size += block.size
        if self.file is None and self.size > self.spill_samples:
            self._spill()

    def _spill(self) -> None:
        """Move what is in memory to the temporary file; later blocks go there directly."""
        self._open_file()
        in_buffer = self.size - sum(piece.size for piece in self.overflow)
        for piece in (self.buffer[:in_buffer], *self.overflow):
            self.file.write(memoryview(np.ascontiguousarray(piece)))
        self.buffer, self.overflow = np.empty(0, np.float32), []

    def result(self) -> np.ndarray:
        """The signal, float32 ``(size,)``: in memory, or read-only over the temporary file."""
        if self.file is None:
            head = self.buffer[: self.size - sum(piece.size for piece in self.overflow)]
            return np.concatenate([head, *self.overflow]) if self.overflow else head
        self.file.flush()
        if self.size == 0:
            self.file.close()
            return np.zeros(0, dtype=np.float32)
        mapping = _SignalMap(self.file.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
        self.file.close()
        mapping.madvise(mmap.MADV_SEQUENTIAL)
        return np.frombuffer(mapping, dtype=np.float32)
