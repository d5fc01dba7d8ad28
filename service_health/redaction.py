"""Keeping secrets out of logs, artifacts, JSON output and exception messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import (
    parse_qsl,
    quote,
    quote_plus,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

from pydantic import BaseModel, SecretStr

MASK = "***"

# Query parameters that carry credentials in database and service URLs.
_SECRET_PARAMS = {
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "auth",
}
# Keys whose values are masked wherever they appear in structured data.
_SECRET_KEYS = (_SECRET_PARAMS - {"key", "auth"}) | {
    "api-key",
    "authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "aws_secret_access_key",
    "aws_session_token",
    "secret_access_key",
    "session_token",
}
# Userinfo of any URL embedded in free text: scheme://user:pass@ or scheme://token@.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]+@")
_LOOSE_USERINFO = re.compile(r"[^\s/@]+@")
# A URL in free text, up to the first character that cannot be part of it in a sentence.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")
_MAX_DEPTH = 64


def redact_url(url: str) -> str:
    """The URL with its userinfo and credential query parameters replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            # With a password the user name is harmless; alone it may be a token (redis://tok@).
            netloc = f"{user}:{MASK}@{host}" if has_password and user else f"{MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
                query = urlencode(
                    [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs],
                    safe="*",
                )
        # A URL missing its "//" ("app:pw@db:5432/app", "postgresql:/u:pw@h") has its
        # credentials in the path: mask anything that ends with "@" there too.
        path = _LOOSE_USERINFO.sub(f"{MASK}@", parts.path)
        return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
    except ValueError:
        # Not parseable as a URL (e.g. a broken IPv6 literal): mask userinfo textually.
        return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", url)


def _url_password(value: str) -> set[str]:
    """A secret URL's password alone (as written and decoded): a server may echo it."""
    if "://" not in value:
        return set()
    try:
        password = urlsplit(value).password
    except ValueError:
        return set()
    return {password, unquote(password)} - {""} if password else set()


def _unwrap(secret: str | SecretStr | None) -> str | None:
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    return secret


class Redactor:
    """Replaces every known secret value (raw and URL-encoded) and URL credentials by ***."""

    def __init__(self, secrets: Iterable[str | SecretStr | None]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            value = _unwrap(secret)
            if not value:
                continue  # an empty secret would match everywhere
            for part in {value, *_url_password(value)}:
                forms.update({part, quote(part, safe=""), quote_plus(part), quote(part)})
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None

    def text(self, s: str) -> str:
        """The text with secrets and URL credentials (userinfo, credential query
        parameters of any URL in it) masked."""
        if self._pattern is not None:
            s = self._pattern.sub(MASK, s)
        if "://" in s:
            s = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), s)
        return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", s)

    def obj(self, o: Any) -> Any:
        """A copy of dicts/lists/tuples/strings/models with every string redacted."""
        return self._walk(o, 0)

    def _walk(self, o: Any, depth: int) -> Any:
        if isinstance(o, str):
            return self.text(o)
        if depth >= _MAX_DEPTH:
            # Too deep to be our own data; dropping it is safer than a RecursionError.
            return "[nested too deeply]" if isinstance(o, dict | list | tuple | BaseModel) else o
        if isinstance(o, SecretStr):
            return MASK
        if isinstance(o, BaseModel):
            return self._walk(o.model_dump(mode="json"), depth + 1)
        if isinstance(o, dict):
            out: dict[Any, Any] = {}
            for key, value in o.items():
                clean_key = self.text(key) if isinstance(key, str) else key
                if isinstance(key, str) and key.lower() in _SECRET_KEYS and value:
                    out[clean_key] = MASK
                else:
                    out[clean_key] = self._walk(value, depth + 1)
            return out
        if isinstance(o, list | tuple):
            return [self._walk(item, depth + 1) for item in o]
        return o
