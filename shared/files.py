"""Writing a local file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit, make it ``path``.

    The temporary file is in the same folder (so the rename cannot cross file systems), named
    ``.<name>.<random>.tmp`` (never the final name's suffix, so a half-written file is never
    taken for a finished one); on exit it is flushed, ``fsync``-ed and renamed over ``path``
    (``os.replace``, atomic on POSIX), then the folder is ``fsync``-ed so the rename survives a
    crash. If the block raises (a writer's bug, a full disk), the temporary file is removed,
    ``path`` is left as it was, and the error goes on up. Missing parent folders are created.

    Args:
        path: the file to write (local).
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding, newline: as for :func:`open`, text mode only (``encoding`` defaults to UTF-8).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    text = {"encoding": encoding or "utf-8", "newline": newline} if mode == "w" else {}
    try:
        with os.fdopen(descriptor, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it 0600; a plain open() would not
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8, newlines as given) to ``path`` (:func:`atomic_write`); returns ``path``."""
    with atomic_write(path, "w", newline="") as handle:
        handle.write(text)
    return Path(path)


def _read_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide, and setting it while threads write races


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system that cannot sync a folder is left be."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
