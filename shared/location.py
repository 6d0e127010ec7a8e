"""Where a store or a recording lives: a local path, or a URL that fsspec opens. One rule for both sides.

=================================  ==========================================================
``stores/a.zarr``, ``/data/x``     local (relative or absolute path)
``C:\\audio``, ``C:/audio``         local (a one-letter "scheme" is a Windows drive)
``file:///data/x``                 local: the path ``/data/x`` (``file://localhost/data/x`` too)
``file://host/data/x``             refused in one line: a file on another machine
``s3://``, ``gs://``, ``http(s)://``,  URLs (any ``scheme://`` with a scheme of two characters or
``memory://``, ``abfs://``...        more), opened through fsspec with ``storage_options``
a :class:`pathlib.Path`            local, always
=================================  ==========================================================

A ``file://`` path is taken as written (no ``%20`` decoding), as fsspec's local file system does.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath

from soundception.shared.errors import UserError

# RFC 3986 scheme; two characters at least, so that "C://x" stays a Windows path
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_LOCAL_HOSTS = ("", "localhost")


class LocationError(UserError):
    """A location this project cannot use (a ``file://`` URL naming another host)."""


def _file_url_path(text: str) -> str:
    """The path of ``file://HOST/PATH``, for an empty or local host; :class:`LocationError` otherwise."""
    rest = text[len("file://"):]
    host, slash, path = rest.partition("/")
    if host.lower() not in _LOCAL_HOSTS:
        raise LocationError(f"{text}: a file:// URL must name a local path (file:///path); files on another "
                            f"host ({host}) are not supported: mount it, or give its s3:// or https:// URL")
    return slash + path if slash else "/"


def scheme(location: str | PurePath) -> str:
    """The URL scheme of ``location``, lower case (``"s3"``), or ``"file"`` for a local path.

    Raises:
        LocationError: a ``file://`` URL naming another host.
    """
    if isinstance(location, PurePath):
        return "file"
    match = _SCHEME.match(location)
    if match is None:
        return "file"
    found = match.group(1).lower()
    if found == "file":
        _file_url_path(location)
    return found


def is_url(location: str | PurePath) -> bool:
    """True for a URL fsspec opens (``s3://``, ``gs://``, ``https://``, ``memory://``...); False for a
    local path, ``file:///path`` included (rule in the module docstring).

    Raises:
        LocationError: a ``file://`` URL naming another host.
    """
    return scheme(location) != "file"


def normalize(location: str | PurePath) -> str:
    """``location`` as the rest of the code uses it: a URL unchanged, a local path as a path
    string (``file:///data/x`` -> ``/data/x``; a relative path stays relative).

    Raises:
        LocationError: a ``file://`` URL naming another host.
    """
    if isinstance(location, PurePath):
        return str(location)
    if _SCHEME.match(location) and scheme(location) == "file":
        return _file_url_path(location)
    return location


def local_path(location: str | PurePath) -> Path:
    """The local :class:`~pathlib.Path` of ``location`` (``file:///x`` -> ``/x``).

    Raises:
        LocationError: ``location`` is a URL of another kind, or a ``file://`` URL naming another host.
    """
    if is_url(location):
        raise LocationError(f"{location} is a URL, not a local path")
    return Path(normalize(location))
