"""Keeping secrets out of what mcit prints and saves: error messages, the argv recorded in
environment.json and the config.yaml of a run.

A secret is (1) the value of a ``key=value`` argument or ``--option value`` whose name looks like a
credential (``judge.api_key=...``, ``train.secret=...``, ``--token ...``), (2) what a URL carries as
a credential (``user:password@``, ``?api_key=``, ``key=``, ``token=``) and (3) the value of an
environment variable whose name looks like one (``MCIT_JUDGE_API_KEY``, ``OPENAI_API_KEY``).
Standard library only: the CLI's error path must stay free of heavy imports.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from .secrets import MASK, URL_IN_TEXT
from .secrets import redact_text as redact_urls

__all__ = ["MASK", "is_secret_name", "redact_argv", "redact_config", "redact_message", "secret_values"]

# A name holding a credential: api_key, apikey, token, secret, password, passwd, pwd, credential;
# "tokens" (eval.max_new_tokens, judge.max_tokens) counts tokens and is not one.
_SECRET_NAME = re.compile(r"key|token(?!s)|secret|passw|pwd|credential", re.IGNORECASE)
_SHORTEST_SECRET = 4  # shorter values ("1", "abc") would mask ordinary words of a message
_SHORTEST_ENV_SECRET = 8  # an environment variable is only masked when it is key-sized ("true" is not)
_NOT_SECRET_SUFFIXES = ("_env", "_path", "_file", "_dir")  # they name where a secret is, not the secret
_SHELL_DIRS = ("PWD", "OLDPWD")  # the shell's working directories: "pwd" names no password there


def is_secret_name(name: str) -> bool:
    """True for a setting, option, query or variable name that holds a credential; a name ending in
    ``_env`` (judge.api_key_env), ``_path``, ``_file`` or ``_dir`` says where one is, which is not secret.

    >>> [is_secret_name(n) for n in ("judge.api_key", "--token", "OPENAI_API_KEY", "judge.max_tokens", "judge.api_key_env")]
    [True, True, True, False, False]
    """
    leaf = name.strip().lstrip("-").rsplit(".", 1)[-1].lower().replace("-", "_")
    return bool(_SECRET_NAME.search(leaf)) and not leaf.endswith(_NOT_SECRET_SUFFIXES)


def _url_secrets(text: str) -> list[str]:
    """The password of ``user:password@`` and the secret query values of every URL in ``text``."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    found = []
    for url in URL_IN_TEXT.findall(text):
        try:
            parts = urlsplit(url)
            found += [v for k, v in parse_qsl(parts.query) if is_secret_name(k)]
        except ValueError:
            continue
        userinfo = parts.netloc.rpartition("@")[0]
        if userinfo:
            found += [userinfo, unquote(userinfo), *userinfo.split(":")[1:]]
    return found


def secret_values(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret in ``argv`` and in the environment, longest first (so a longer secret is masked
    whole before a shorter one inside it)."""
    environ = os.environ if environ is None else environ
    found = [value for name, value in environ.items()
             if is_secret_name(name) and name not in _SHELL_DIRS and len(value) >= _SHORTEST_ENV_SECRET]
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if sep and is_secret_name(name):
            found.append(value)
        elif not sep and arg.startswith("--") and is_secret_name(arg) and i + 1 < len(argv):
            found.append(argv[i + 1])  # `--api-key VALUE`
        found += _url_secrets(arg)
    return sorted({v for v in found if len(v) >= _SHORTEST_SECRET}, key=len, reverse=True)


def redact_message(text: str, argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """``text`` (an error message, a log line) with every secret of ``argv`` and the environment, and
    every URL credential, replaced by ``***``."""
    for secret in secret_values(argv, environ):
        text = text.replace(secret, MASK)
    return redact_urls(text)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line safe to save: secret ``key=value`` and ``--option value`` values and URL
    credentials masked; everything else kept as given."""
    out: list[str] = []
    mask_next = False
    for arg in map(str, argv):
        name, sep, _ = arg.partition("=")
        if mask_next:
            out.append(MASK)
        elif sep and is_secret_name(name):
            out.append(f"{name}={MASK}")
        else:
            out.append(redact_urls(arg))
        mask_next = not sep and arg.startswith("--") and is_secret_name(arg)
    return out


def redact_config(cfg: Any) -> Any:
    """A copy of a config dataclass with the URL credentials of every string setting masked (the
    config saved as a run's config.yaml; the running process keeps its own copy with them)."""
    cfg = copy.deepcopy(cfg)
    _redact_fields(cfg)
    return cfg


def _redact_fields(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _redact_fields(value)
        elif isinstance(value, str) and redact_urls(value) != value:
            object.__setattr__(obj, f.name, redact_urls(value))  # object.__setattr__: frozen sections too
