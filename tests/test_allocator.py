"""shared.allocator.mallopt, used by featurize's workers and predict's heap bound: glibc's own count
of mmapped blocks (``mallinfo2().hblks``) shows where a block of a given size comes from."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, json, sys
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    def mmapped(size):  # does a block of this size get its own mapping?
        before = libc.mallinfo2().hblks
        libc.malloc(size)
        return libc.mallinfo2().hblks - before == 1
    sizes = [1 << 20, 8 << 20, 16 << 20]
    result = {"before": [mmapped(s) for s in sizes]}
    exec(sys.argv[1])
    result["applied"] = applied
    result["after"] = [mmapped(s) for s in sizes]
    print(json.dumps(result))
""")


def probe(code: str) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", PROBE, code], capture_output=True, text=True, timeout=120)
    if "mallinfo2" in done.stderr:
        pytest.skip("not glibc >= 2.33")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_featurize_worker_settings_keep_blocks_up_to_32_mib_on_the_heap():
    result = probe("from soundception.featurize.cluster import set_malloc; applied = set_malloc()")
    assert result["before"] == [True, True, True]  # glibc's start: 128 KiB and up are mmapped
    assert result["applied"] and result["after"] == [False, False, False]


def test_predict_heap_bound_mmaps_blocks_from_4_mib():
    result = probe("from soundception.train.runtime import bound_heap; applied = bound_heap()")
    assert result["applied"] and result["after"] == [False, True, True]


def test_parameters_by_number_or_environment_name():
    result = probe("from soundception.shared.allocator import M_MMAP_THRESHOLD, mallopt\n"
                   "applied = mallopt({'MALLOC_MMAP_THRESHOLD_': 10 << 20}) and mallopt({M_MMAP_THRESHOLD: 10 << 20})")
    assert result["applied"] and result["after"] == [False, False, True]
    from soundception.shared.allocator import mallopt

    with pytest.raises(KeyError):
        mallopt({"MALLOC_NO_SUCH_": 1})
