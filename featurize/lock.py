"""One writer per store: the lock a featurize run holds, and the short lock around per-file fields.

The rules (README, "What the store promises"):

The lock sits beside the store, ``STORE.lock`` (``stores/birds.zarr.lock``), so the store itself
holds only Zarr objects.

* **Local and network file systems.** The run holds an OS lock (``fcntl.lockf``) on the lock file
  and writes its host, pid and start time into it; it deletes the file when it ends. The kernel
  (or the NFS lock manager) drops the lock when the process ends, however it ends, so a file left
  by a killed run is stale by definition and the next run simply takes it over; the file's text
  only names the holder in the refusal message.
* **Object stores** (``s3://``, ``gs://``...) have no OS locks. The lock is the object
  ``STORE.lock``, created only if absent (a conditional put). The holder rewrites it
  every :data:`HEARTBEAT_SECONDS`. It is stale when its heartbeat is older than
  :data:`STALE_SECONDS`, or when it names a process on this host that no longer runs; a stale
  lock is deleted and the conditional create tried again. Before each heartbeat the holder checks
  the lock is still its own and stops the run if it is not.
* **Per-file fields** (status, n_frames, duration...) live in chunks of 4,096 files, so writing
  one file's fields rewrites its neighbours'. On a file system, :func:`fields_lock` serialises
  those read-modify-writes between processes (an OS lock on ``STORE.fields.lock``, deleted at
  the end of the run), so two writers never lose each other's fields; on an object store the
  run's lock keeps writers apart.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from soundception.shared.errors import UserError
from soundception.shared.location import is_url, local_path, normalize, scheme

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0

# Object stores whose fsspec backend makes ``open(path, "xb")`` an atomic create-if-absent, with the
# first release that does so for small objects (s3fs sends ``If-None-Match: *`` on every put since
# 2025.7.0; before, a small "xb" write silently overwrote). Tested against a real S3 server
# (moto) in tests/test_store_faults.py. Other backends are refused rather than locked unsafely.
ATOMIC_CREATE = {"s3": ("s3fs", "2025.7.0"), "s3a": ("s3fs", "2025.7.0")}


class StoreLocked(UserError, RuntimeError):
    """Another run holds the store; the message names it (host, pid, start time)."""


def lock_url(url: str, suffix: str = ".lock") -> str:
    """Where the lock of the store at ``url`` lives: beside it, ``STORE.lock``."""
    return str(url).rstrip("/") + suffix


def _holder(token: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "heartbeat": time.time()}


def describe(holder: dict[str, Any]) -> str:
    """``host H, pid P, started T`` for a holder record (what a refusal message names)."""
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started', '?')}")


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(holder: dict[str, Any], *, now: float | None = None, stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether an object-store lock record no longer stands for a running featurize run."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and not _process_running(int(holder.get("pid", -1))):
        return True
    return now - float(holder.get("heartbeat", 0.0)) > stale_seconds


class StoreLock:
    """The lock a featurize run holds on ``url`` for its whole run (a context manager).

    Raises :class:`StoreLocked` on entry when another live run holds it. ``stale_seconds`` and
    ``heartbeat_seconds`` matter for object stores only.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 stale_seconds: float = STALE_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.url = normalize(url).rstrip("/")  # file:///x is the path /x
        self.storage_options = storage_options
        self.stale_seconds, self.heartbeat_seconds = stale_seconds, heartbeat_seconds
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None  # the stale holder this run replaced, if any
        self._fd: int | None = None
        self._path = Path()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str = ""  # set by the heartbeat when another run took the lock
        self._refreshed = 0.0  # time.monotonic() of the last refresh of an object-store lock

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- file systems -------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        # one lock per real place: symbolic links, "." and ".." resolved
        path = Path(lock_url(str(local_path(self.url).resolve())))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if self._lock_fd(fd, path):
                    break
        except OSError as error:  # read-only, permission, a file in the way, no space...
            raise PermissionError(f"cannot write beside {self.url} ({path.name}): "
                                  f"{os.strerror(error.errno) if error.errno else error}; "
                                  "choose a --store in a place you can write") from None
        previous = _read_json(os.pread(fd, 1 << 16, 0))
        if previous:
            self.took_over = previous  # its process ended without releasing: the OS dropped its lock
        record = json.dumps(_holder(self.token)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd, self._path = fd, path

    def _lock_fd(self, fd: int, path: Path) -> bool:
        """Lock ``fd``; False (fd closed) if the file was deleted or replaced meanwhile, so retry."""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _read_json(os.pread(fd, 1 << 16, 0))
            os.close(fd)
            raise StoreLocked(f"{self.url} is in use by another featurize run ({describe(holder)}); wait for it "
                              "to finish or stop it, then rerun") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the last holder deleted it as we opened it: lock the new file instead
            os.close(fd)
        return same

    # -- object stores --------------------------------------------------------------------------
    def _filesystem(self) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(lock_url(self.url), **(self.storage_options or {}))

    def _acquire_remote(self) -> None:
        check_atomic_create(self.url)
        filesystem, path = self._filesystem()
        for _ in range(5):
            try:
                with filesystem.open(path, "xb") as handle:
                    handle.write(json.dumps(_holder(self.token)).encode())
                break
            except FileExistsError:
                holder = _read_remote(filesystem, path)
                if holder is None:  # released as we looked: try again
                    continue
                if holder and not is_stale(holder, stale_seconds=self.stale_seconds):
                    raise StoreLocked(f"{self.url} is in use by another featurize run ({describe(holder)}); wait "
                                      "for it to finish or stop it, then rerun") from None
                if _read_remote(filesystem, path) != holder:  # someone else is taking it over right now
                    continue
                self.took_over = holder
                with contextlib.suppress(FileNotFoundError):
                    filesystem.rm(path)
        else:
            raise StoreLocked(f"{self.url}: another run took the store's lock at the same time; rerun")
        # two runs taking over one stale lock can both get this far (a delete cannot be made
        # conditional here): the later delete removed the earlier lock, so after a pause only
        # the run whose record is still there goes on
        time.sleep(min(1.0, self.heartbeat_seconds))
        holder = _read_remote(filesystem, path)
        if not holder or holder.get("token") != self.token:
            raise StoreLocked(f"{self.url}: another run took the store's lock at the same time"
                              + (f" ({describe(holder)})" if holder else "") + "; rerun")
        self._refreshed = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name="soundception-lock", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        """Refresh the lock every ``heartbeat_seconds``; a network error is retried, but a lock not
        refreshed for half the stale time (another run may soon take it) counts as lost."""
        filesystem, path = self._filesystem()
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                holder = _read_remote(filesystem, path)
                if not holder or holder.get("token") != self.token:
                    self.lost = describe(holder) if holder else "nobody (the lock was deleted)"
                    return
                holder["heartbeat"] = time.time()
                with filesystem.open(path, "wb") as handle:
                    handle.write(json.dumps(holder).encode())
                self._refreshed = time.monotonic()
            except Exception:  # the network: try again at the next beat (check() watches the time)
                continue

    def check(self) -> None:
        """Raise :class:`StoreLocked` if the heartbeat found another run holding the lock, or could
        not refresh it for half the stale time (another run may soon take it over)."""
        if not self.lost and self._thread is not None and \
                time.monotonic() - self._refreshed > self.stale_seconds / 2:
            self.lost = "unknown (the lock could not be refreshed)"
        if self.lost:
            raise StoreLocked(f"{self.url}: this run lost the store's lock (now held by {self.lost}); "
                              "stopped so that two runs never write together")

    # -- both ---------------------------------------------------------------------------------
    def acquire(self) -> StoreLock:
        if not is_url(self.url):
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def release(self) -> None:
        if self._fd is not None:  # delete while still holding it, so no one locks a file about to vanish
            remove_fields_lock(self.url)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)  # a beat stuck on the network is a daemon: not waited for
            self._thread = None
            try:
                filesystem, path = self._filesystem()
                if not self.lost and (_read_remote(filesystem, path) or {}).get("token") == self.token:
                    filesystem.rm(path)
            except Exception:  # unreachable now: the lock goes stale on its own (STALE_SECONDS)
                pass


def check_atomic_create(url: str) -> None:
    """Raise :class:`~soundception.shared.errors.UserError` unless the store at ``url`` sits on an
    object store whose installed fsspec backend creates an object only if it is absent, atomically
    (:data:`ATOMIC_CREATE`): without that, two runs could both believe they hold the lock."""
    from importlib.metadata import PackageNotFoundError, version

    protocol = scheme(url)
    if protocol not in ATOMIC_CREATE:
        raise UserError(f"{url}: featurize cannot lock a store on {protocol}:// (no create-if-absent proven for "
                        "it); featurize into a local folder or s3://, then copy the store there")
    package, first = ATOMIC_CREATE[protocol]
    try:
        installed = version(package)
    except PackageNotFoundError:
        raise UserError(f"{url}: {protocol}:// needs {package} (pip install '{package}>={first}')") from None
    if _release(installed) < _release(first):
        raise UserError(f"{url}: {package} {installed} may overwrite the store's lock instead of refusing; "
                        f"pip install '{package}>={first}'")


def _release(text: str) -> tuple[int, ...]:
    """``"2025.7.0"`` -> ``(2025, 7, 0)``; pre-release and local tags ignored."""
    import re

    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _read_json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_remote(filesystem: Any, path: str) -> dict[str, Any] | None:
    """The lock record at ``path``; ``{}`` if unreadable, None if there is no lock."""
    try:
        return _read_json(filesystem.cat_file(path))
    except FileNotFoundError:
        return None


def _lock_file(path: Path) -> int:
    """An fd holding a blocking OS lock on ``path``, the file the path names once the lock is held
    (a file deleted while we waited is replaced by a new one, locked in turn)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def fields_lock(group: Any) -> Iterator[None]:
    """Hold an OS lock on ``STORE.fields.lock`` while per-file fields are rewritten.

    Only for stores on a file system (zarr ``LocalStore``); elsewhere nothing is locked here and
    the run's :class:`StoreLock` keeps writers apart. The run deletes the file at its end, under
    this same lock (:func:`remove_fields_lock`), so no writer is ever inside when it goes.
    """
    root = getattr(group.store, "root", None)
    if root is None or not Path(root).is_dir():
        yield
        return
    fd = _lock_file(Path(lock_url(str(Path(root).resolve()), ".fields.lock")))
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_fields_lock(url: str) -> None:
    """Delete ``STORE.fields.lock`` while holding it (a writer waiting on the old file then retries)."""
    path = Path(lock_url(str(local_path(url).resolve()), ".fields.lock"))
    if not path.exists():
        return
    fd = _lock_file(path)
    try:
        path.unlink()
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
