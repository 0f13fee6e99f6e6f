"""mcit.secrets: credentials masked in URLs and in texts holding URLs (the canary test is tests/test_secrets.py)."""
from __future__ import annotations

import pytest

from mcit.secrets import MASK, is_secret_param, redact_text, redact_url


@pytest.mark.parametrize("url, expected", [
    ("https://me:pw@host:8443/v1", "https://***@host:8443/v1"),
    ("http://onlyuser@host/v1", "http://***@host/v1"),
    ("https://host/v1?api_key=abc&model=x", "https://host/v1?api_key=***&model=x"),
    ("https://host/v1?KEY=abc", "https://host/v1?KEY=***"),
    ("https://host/v1?x-api-key=abc", "https://host/v1?x-api-key=***"),
    ("https://host/v1?token=a&token=b", "https://host/v1?token=***&token=***"),
    ("https://host/v1#access_token=abc", "https://host/v1#***"),
    ("https://a:b@host/v1?access_token=t&q=1#frag", "https://***@host/v1?access_token=***&q=1#frag"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),  # nothing to hide: unchanged
    ("not a url", "not a url"),
    ("http://[::1/v1?key=x", "http://***"),  # unparsable host: everything after the scheme masked
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_url_keeps_no_secret_value():
    url = "https://u:S3CRET@h/v1?api_key=S3CRET&token=S3CRET&password=S3CRET&sig=S3CRET"
    assert "S3CRET" not in redact_url(url) and redact_url(url).count(MASK) == 5


def test_redact_text_masks_every_url_in_a_message():
    text = "argv: mcit run judge.base_url=https://a:K1@x.org/v1?key=K2 and http://y.org/?token=K3 done"
    assert redact_text(text) == ("argv: mcit run judge.base_url=https://***@x.org/v1?key=*** and "
                                 "http://y.org/?token=*** done")


@pytest.mark.parametrize("name, secret", [("api_key", True), ("Api-Key", True), ("token", True), ("model", False),
                                          ("keys", False), ("monkey", False)])
def test_is_secret_param(name, secret):
    assert is_secret_param(name) is secret
