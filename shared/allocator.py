"""glibc's allocator settings, changed inside a running process with ``mallopt``.

Both sides tune it: featurize workers keep freed per-chunk blocks instead of faulting them in
anew (:data:`soundception.featurize.cluster.WORKER_MALLOC`), and a long CPU inference bounds its
heap (:func:`soundception.train.runtime.bound_heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping

# mallopt() parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# the environment variables glibc reads at start for the same parameters (mallopt(3))
ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": M_TRIM_THRESHOLD, "MALLOC_MMAP_THRESHOLD_": M_MMAP_THRESHOLD,
               "MALLOC_ARENA_MAX": M_ARENA_MAX}


def mallopt(settings: Mapping[int | str, int]) -> bool:
    """Apply ``settings`` to this process's allocator now, with glibc's ``mallopt``.

    Args:
        settings: ``{parameter: value}``, a parameter as its number (:data:`M_MMAP_THRESHOLD`...)
            or as its environment variable's name (``"MALLOC_MMAP_THRESHOLD_"``, :data:`ENVIRONMENT`);
            thresholds in bytes. mallopt overrides the environment's values in a running process.

    Returns:
        True when glibc accepted every setting; False where the C library has no ``mallopt`` (and
        nothing changed) or refused a value (the mmap threshold's most is 32 MiB on 64-bit).

    Raises:
        KeyError: a parameter name not in :data:`ENVIRONMENT`.
    """
    parameters = [(ENVIRONMENT[key] if isinstance(key, str) else key, int(value)) for key, value in settings.items()]
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if function is None:
        return False
    return all(function(parameter, value) == 1 for parameter, value in parameters)
