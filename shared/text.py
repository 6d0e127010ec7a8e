"""Small helpers both command lines use: one-line error text, JSON options, known-key checks."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import click


def one_line(error: BaseException, *, limit: int = 300) -> str:
    """``error``'s message on one line (whitespace collapsed), at most ``limit`` characters.

    An error with an empty message is named by its type instead.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_object(text: str | None) -> dict[str, Any] | None:
    """Parse a JSON object (an option's value, a config file's text); ``None``/empty gives ``None``.

    Raises:
        ValueError: one line, ``"not JSON: <where the parser stopped>"`` or ``"must be a JSON
            object, got list"``; the caller names what it parsed.
    """
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    return value


class JsonObject(click.ParamType):
    """A click option that takes a JSON object (``--storage-options '{"anon": true}'``).

    Every command parses its JSON options with this one type, so a bad value reads the same
    everywhere: click's usage error, exit 2, ``Invalid value for '--storage-options': not JSON: ...``.
    The command receives a ``dict``, or ``None`` when the option is not given.
    """

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any] | None:
        if value is None or isinstance(value, dict):
            return value
        try:
            return parse_json_object(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


JSON_OBJECT = JsonObject()


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
