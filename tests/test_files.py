"""shared.files.atomic_write: the old file or the new one, never half of one, and no temporary left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from soundception.shared.files import atomic_write, write_text


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "deep" / "table.txt"
    write_text(path, "first\r\n")
    assert path.read_bytes() == b"first\r\n"  # newlines as given
    with atomic_write(path) as handle:
        handle.write(b"second")
    assert path.read_bytes() == b"second" and listing(path.parent) == ["table.txt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer broke"), atomic_write(path) as handle:
        handle.write(b"half of the new")
        handle.flush()
        raise RuntimeError("writer broke")
    assert path.read_bytes() == b"old" and listing(tmp_path) == ["checkpoint.pt"]


def test_ctrl_c_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{}")
    with pytest.raises(KeyboardInterrupt), atomic_write(path, "w") as handle:
        handle.write('{"half": ')
        raise KeyboardInterrupt
    assert path.read_text() == "{}" and listing(tmp_path) == ["report.json"]


def test_a_full_disk_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """A child process whose file size limit is 64 KiB writes 1 MiB: EFBIG (the kernel's "file too
    large", the same failure path as ENOSPC) half way; the old file stays whole."""
    path = tmp_path / "journal.npz"
    path.write_bytes(b"old" * 10)
    child = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from soundception.shared.files import atomic_write
        try:
            with atomic_write({str(path)!r}) as handle:
                for _ in range(16):
                    handle.write(b"x" * 65536)
        except OSError as error:
            print("errno", error.errno)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["errno", str(__import__("errno").EFBIG)]
    assert path.read_bytes() == b"old" * 10 and listing(tmp_path) == ["journal.npz"]


def test_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
    assert listing(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere), unmounted after the test."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_leaves_the_old_file_and_no_temporary(small_disk):
    import errno

    path = small_disk / "predictions.csv"
    write_text(path, "old\n")
    with pytest.raises(OSError) as raised:
        write_text(path, "x" * (2 << 20))
    assert raised.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" and listing(small_disk) == ["predictions.csv"]
