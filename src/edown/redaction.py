"""Keeps secrets out of everything edown shows or stores: messages, logs, ``--json`` output and manifests.

:func:`redact` is the one filter, applied wherever text leaves edown (and wherever a URL is stored). It
removes, wherever they occur in the text:

* credentials in a URL (``http://user:pass@host`` becomes ``http://***@host``);
* values of query parameters that look like keys (``?key=``, ``access_token=``, ``X-Goog-Signature=``...);
* bearer tokens, basic-auth headers, token and key fields of JSON (``"access_token": "..."``) and signed
  JWTs (a service account's token request is a JWT good for an hour);
* any run of :data:`MIN_SECRET_RUN` or more characters copied from a secret edown has loaded (the service
  account key and its private key, registered with :func:`register_secret` before anything parses them),
  so that even a library's error message quoting the key loses it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

#: Runs shorter than this are not treated as copied from a secret (short runs recur in ordinary text).
MIN_SECRET_RUN = 20
MASK = "***"
#: Longer than any key edown reads (a service account's JSON key is about 2.4 kB, its base64 3.2 kB).
MAX_SECRET_CHARS = 1 << 17

# Greedy up to the last "@" before the host, as URL parsers read it (a password may hold an "@").
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s\"'<>]*@")
_KEYISH_QUERY = re.compile(
    r"(?i)([?&;][\w.\-]*(?:key|token|secret|password|passwd|signature|credential|auth)[\w.\-]*=)[^&#\s\"'<>]+"
)
_AUTH_HEADER = re.compile(r"(?i)\b((?:bearer|basic)\s+)[\w.~+/\-]+=*")
_SECRET_JSON_FIELD = re.compile(
    r"(?i)([\"']?(?:access_token|refresh_token|id_token|private_key|client_secret|password)[\"']?\s*[:=]\s*[\"'])"
    r"[^\"']+"
)
_JWT = re.compile(r"\beyJ[\w\-]{8,}\.[\w\-]{8,}\.[\w\-]*")

_lock = threading.Lock()
_runs: frozenset[str] = frozenset()


def register_secret(value: str) -> None:
    """Remember ``value`` so that no run of :data:`MIN_SECRET_RUN` characters of it is ever shown.

    Each line of a multi-line secret (a PEM key) is registered too, so a fragment is caught however a
    message re-wrapped or escaped its newlines. Secrets are a few kB; a value past :data:`MAX_SECRET_CHARS`
    (whose runs would take memory in proportion) is refused with ``ValueError``.
    """
    global _runs
    if len(value) > MAX_SECRET_CHARS:
        raise ValueError(f"a secret of {len(value)} characters is too long to register")
    # As given, line by line, and with newlines escaped as JSON and repr() write them.
    parts = {value, value.replace("\n", "\\n"), *value.splitlines(), *value.replace("\\n", "\n").splitlines()}
    windows = {
        part[i : i + MIN_SECRET_RUN]
        for part in parts
        if len(part) >= MIN_SECRET_RUN
        for i in range(len(part) - MIN_SECRET_RUN + 1)
    }
    if windows:
        with _lock:
            _runs = _runs | windows


def redact(text: str) -> str:
    """``text`` without URL credentials, key-like query values, tokens or fragments of loaded secrets."""
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _KEYISH_QUERY.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_JSON_FIELD.sub(lambda m: m.group(1) + MASK, text)
    text = _JWT.sub(MASK, text)
    return _mask_secret_runs(text)


def _mask_secret_runs(text: str) -> str:
    runs = _runs
    if not runs or len(text) < MIN_SECRET_RUN:
        return text
    covered = bytearray(len(text))
    for i in range(len(text) - MIN_SECRET_RUN + 1):
        if text[i : i + MIN_SECRET_RUN] in runs:
            covered[i : i + MIN_SECRET_RUN] = b"\x01" * MIN_SECRET_RUN
    if not any(covered):
        return text
    out: list[str] = []
    for i, ch in enumerate(text):
        if not covered[i]:
            out.append(ch)
        elif i == 0 or not covered[i - 1]:
            out.append(MASK)
    return "".join(out)


class RedactingFilter(logging.Filter):
    """A log filter (for handlers that print) passing every record through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()
#: Libraries that log request URLs (with any credentials in them) or headers at DEBUG level.
CLIENT_LOGGERS = (
    "googleapiclient.discovery",
    "googleapiclient.http",
    "googleapiclient.model",
    "google_auth_httplib2",
    "urllib3.connectionpool",
)


def guard_handlers(handlers: Iterable[logging.Handler]) -> None:
    """Attach the redacting filter (once) to handlers that print, such as the CLI's."""
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def guard_loggers(names: tuple[str, ...] = CLIENT_LOGGERS) -> None:
    """Attach the redacting filter to these loggers, so that whatever handlers an application configures
    (edown's API does not configure logging) never receive their records unredacted."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
