"""Keeping secrets out of everything the service prints, logs, measures or dead-letters.

Two tools, used wherever a secret could travel:

* :class:`Secret` holds a configured secret (a password, key material); its ``repr`` and
  ``str`` are ``Secret('***')``, so a configuration printed whole shows no secret;
* :func:`mask_url` is the one way to format a URL for people: ``http://alice:***@host/``.
  Every URL the service shows (errors, CLI output, logs, probe bodies, dead-letter headers)
  goes through it; :func:`mask_text` cleans a third-party text that may quote a URL.

This module imports nothing of the service, so every module may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "Secret", "is_secret_key", "mask_text", "mask_url", "reveal"]

MASK = "***"

_SECRET_KEY = re.compile(r"password|secret|ssl\.key\.pem|sasl\.oauthbearer", re.IGNORECASE)
# scheme://user:password@ or scheme://token@ anywhere in a text (an error quoting a URL)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")


class Secret:
    """A secret value; shown as ``***`` everywhere but :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value, for handing to a client library only."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_secret_key(key: str) -> bool:
    """Whether a setting called ``key`` holds a secret (``*password*``, ``*secret*``...)."""
    return _SECRET_KEY.search(key) is not None


def reveal(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with every :class:`Secret` replaced by its value (for librdkafka)."""
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in settings.items()}


def mask_url(url: str) -> str:
    """``url`` with the password of its user-info masked: ``http://alice:***@host:8081/x``.

    A user-info without a colon is taken as a token and masked whole. A text that is not
    a URL is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def mask_text(text: str, secrets: Iterable[str | Secret | None] = ()) -> str:
    """``text`` with every URL user-info masked and each of ``secrets`` replaced by ``***``.

    For texts the service does not write itself, such as a library's exception message.
    """
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, MASK)
    return _USERINFO.sub(lambda m: m["scheme"] + _mask_userinfo(m["userinfo"]) + "@", text)


def _mask_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{MASK}" if colon else MASK
