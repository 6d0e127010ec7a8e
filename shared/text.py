"""Small helpers both command lines use: one-line error text, JSON options, known-key checks."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any


def one_line(error: BaseException, *, limit: int = 300) -> str:
    """``error``'s message on one line (whitespace collapsed), at most ``limit`` characters.

    An error with an empty message is named by its type instead.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_option(text: str | None, name: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line; ``None``/empty gives ``None``.

    Raises:
        ValueError: ``"--name is not a JSON object: ..."`` for anything else.
    """
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def check_known_keys(data: dict[str, Any], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError("unknown <what> keys: [...]")`` when ``data`` has keys outside ``known``."""
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")


SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "auth", "sas")


def redact_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Storage options fit to be written into a file or a log: every value under a key that names
    a secret (``key``, ``secret``, ``token``, ``password``...), at any depth, becomes ``"***"``."""
    if options is None:
        return None
    clean: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, dict):
            clean[name] = redact_options(value)
        elif any(word in str(name).lower() for word in SECRET_WORDS):
            clean[name] = "***"
        else:
            clean[name] = value
    return clean


def redact(text: str) -> str:
    """``text`` with the user and password of any ``scheme://user:password@host`` removed, for
    messages and logs (keys passed in storage options never appear in a message at all)."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1", text)


def refuse_credentials_in_url(url: str, what: str = "--store") -> None:
    """Raise ``ValueError`` (one line, the credentials masked) for ``scheme://user:secret@...``:
    such a URL would carry its secret into every message, log and config that names it."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*@", str(url)):
        raise ValueError(f"{what} {redact(str(url))}: credentials in a URL are not accepted; give them in the "
                         "environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or --storage-options")
