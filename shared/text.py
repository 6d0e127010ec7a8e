"""Small helpers both command lines use: one-line error text, JSON options, known-key checks."""

from __future__ import annotations

import json
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
