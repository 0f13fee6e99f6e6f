"""Keeping credentials out of messages, logs and saved files.

``redact_url(url)`` masks what a URL may carry as a secret: the ``user:password@`` part and the
values of credential-like query parameters (``api_key=``, ``key=``, ``token=``, ...). Everything
else is kept, so the redacted URL still says which endpoint was meant. ``redact_text(text)`` does
the same to every URL inside a longer text (an error message, an argv line). Standard library
only: no import cost for the CLI's error path.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "SECRET_PARAMS", "is_secret_param", "redact_text", "redact_url"]

MASK = "***"
# Query parameter names taken to hold a credential (compared lower-case, '-' read as '_').
SECRET_PARAMS = frozenset({
    "key", "api_key", "apikey", "token", "access_token", "auth", "auth_token", "password", "pass", "pwd",
    "secret", "client_secret", "sig", "signature", "credential", "credentials", "session", "x_api_key",
})
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_secret_param(name: str) -> bool:
    """True for a query parameter name that carries a credential (``api_key``, ``X-API-Key``, ...)."""
    return name.strip().lower().replace("-", "_") in SECRET_PARAMS


def redact_url(url: str) -> str:
    """``url`` with its user:password@ and credential query values replaced by ``***``.

    >>> redact_url("https://me:s3cret@host:8443/v1?api_key=abc&model=x")
    'https://***@host:8443/v1?api_key=***&model=x'

    A string that is not a URL is returned unchanged (it carries no URL credentials).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: mask everything after the scheme
        head, sep, _ = url.partition("://")
        return f"{head}{sep}{MASK}" if sep else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if is_secret_param(k) else v) for k, v in pairs], safe="*")
    fragment = MASK if parts.fragment and "=" in parts.fragment else parts.fragment  # OAuth-style #access_token=
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """``text`` with :func:`redact_url` applied to every ``scheme://...`` URL in it."""
    return URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
