"""Service-account keys from the environment: ``GEE_SERVICE_ACCOUNT`` and ``GEE_SERVICE_ACCOUNT_KEY``.

The key variable may hold the JSON key, its base64 (the form CI secret stores often keep) or the path of a
file holding either. The key is a secret, so this module's rules are about what is never shown:

* every way a key can be unusable is one :class:`~edown.errors.AuthenticationError` line naming the
  variable and the problem, never the value, and never a library's message (google-auth's may quote it);
* key material (an inline value, every private key read) is registered with :mod:`edown.redaction` before
  it is parsed, so that no later message, log line or manifest can carry a fragment of it;
* the signed token request is sent only over https (or to loopback, the emulator).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edown import redaction
from edown.earthengine import is_loopback
from edown.errors import AuthenticationError

KEY_VARIABLE = "GEE_SERVICE_ACCOUNT_KEY"
#: A service account's JSON key is about 2.4 kB (3.2 kB in base64); anything this large is not one.
MAX_KEY_BYTES = 64 * 1024
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]{64,}={0,2}")
_REQUIRED_KEY_FIELDS = ("client_email", "private_key", "token_uri")
_NEW_KEY_HINT = "download a JSON key for the service account from the Cloud console"
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,190}")


def credentials(account: str, key: str) -> tuple[Any, str | None]:
    """``(google.auth credentials, the key's project)`` for ``GEE_SERVICE_ACCOUNT`` and its key."""
    import ee
    from google.oauth2 import service_account

    if not _EMAIL.fullmatch(account):
        if len(account) <= MAX_KEY_BYTES:
            redaction.register_secret(account)  # a key pasted into the wrong variable is still a key
        raise AuthenticationError(
            "GEE_SERVICE_ACCOUNT is not a service account's e-mail address",
            hint="set it to NAME@PROJECT.iam.gserviceaccount.com; the key goes in GEE_SERVICE_ACCOUNT_KEY",
        )
    info = load_key(key)
    if info["client_email"] != account:
        raise AuthenticationError(
            f"GEE_SERVICE_ACCOUNT is {account} but GEE_SERVICE_ACCOUNT_KEY is a key of {info['client_email']}",
            hint="set both for the same service account",
        )
    try:
        creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(ee.oauth.SCOPES)
        )
    except Exception as exc:  # google-auth's messages may quote the key: keep only the exception's type
        raise _key_error(
            f"holds a private key that cannot be read ({type(exc).__name__})",
            "download a new JSON key for the service account from the Cloud console",
        ) from None
    project = info.get("project_id")
    return creds, project if isinstance(project, str) and project else None


def load_key(value: str) -> dict[str, Any]:
    """The JSON key that ``GEE_SERVICE_ACCOUNT_KEY`` holds, as a mapping.

    The variable may hold the JSON itself, its base64 (standard or URL-safe, padded or not, wrapped or not:
    CI secret stores often keep it so), or a path to a file holding either. Whatever is wrong becomes one
    :class:`AuthenticationError` line naming the variable: never its value, which is the key, nor a
    library's message, which may quote it. Only values that look like key material (base64, a PEM key,
    anything too long for a path) are registered for redaction: masking a mistyped path would mask every
    path that shares its folder.
    """
    if len(value) > MAX_KEY_BYTES:
        raise _key_error(f"is too long to be a key (over {MAX_KEY_BYTES // 1024} KiB)", _NEW_KEY_HINT)
    text = value.strip()
    if text.startswith("{"):
        return _key_from_text(text, "holds")
    path: Path | None
    try:
        path = Path(value).expanduser()
        is_path = os.path.lexists(path)
    except (OSError, ValueError, RuntimeError):  # too long for the OS, a NUL byte, an unknown ~user
        path, is_path = None, False
    if path is not None and is_path:
        return _key_from_text(_read_key_file(path), "names a file that")
    compact = "".join(text.split())
    if "PRIVATE KEY" in value:
        redaction.register_secret(value)
        raise _key_error(
            "holds a bare PEM private key",
            "give the service account's JSON key (its text, its base64, or a path to the file)",
        )
    if _BASE64.fullmatch(compact):
        redaction.register_secret(value)
        return _key_from_text(_decode_base64(text), "holds base64 of something that")
    if len(value) >= 4096:  # no file name is this long: most likely a mangled key
        redaction.register_secret(value)
        path = None
    raise _not_found(path)


def _read_key_file(path: Path) -> str:
    try:
        if path.is_dir():
            raise _key_error("names a directory, not a key file", "give the path of the JSON key file")
        if not path.is_file():
            raise _key_error("names something that is not a regular file", "give the path of the JSON key")
        if path.stat().st_size > MAX_KEY_BYTES:
            raise _key_error(
                f"names a file that is too large to be a key (over {MAX_KEY_BYTES // 1024} KiB)",
                "give the path of the service account's JSON key",
            )
        data = path.read_bytes()
    except PermissionError:
        raise _key_error("names a file edown may not read", "check the file's permissions") from None
    except OSError as exc:
        raise _key_error(
            f"names a file that cannot be read ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})",
            "give the path of the service account's JSON key",
        ) from None
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise _key_error("names a file that is not JSON (not UTF-8 text)", _NEW_KEY_HINT) from None
    if not text.startswith("{") and _BASE64.fullmatch("".join(text.split())):
        redaction.register_secret(text)
        return _decode_base64(text)
    return text


def _decode_base64(text: str) -> str:
    compact = "".join(text.split()).replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        return raw.decode("utf-8-sig").strip()
    except (binascii.Error, ValueError):
        if "/" in text:  # base64's alphabet includes "/": it may as well be a path that does not exist
            raise _key_error(
                "is neither a key file that exists nor base64 of a JSON key",
                "set it to the path of the service account's JSON key, the JSON itself, or its base64",
            ) from None
        raise _key_error(
            "holds base64 of something that is not JSON text", "encode the JSON key file: base64 -w0 key.json"
        ) from None


def _key_from_text(text: str, what: str) -> dict[str, Any]:
    """Parse and check the key's JSON; ``what`` says where it came from (for the message)."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        message = "holds text that is not valid JSON" if what == "holds" else f"{what} is not JSON"
        raise _key_error(message, _NEW_KEY_HINT) from None
    if not isinstance(info, dict):
        raise _key_error(f"holds a JSON {type(info).__name__}, not a JSON object", _NEW_KEY_HINT)
    if "private_key" in info and isinstance(info["private_key"], str):
        redaction.register_secret(info["private_key"])
    kind = info.get("type", "service_account")
    if kind != "service_account":
        shown = (
            repr(kind) if isinstance(kind, str) and re.fullmatch(r"[a-z_]{1,40}", kind) else "another kind"
        )
        raise _key_error(
            f"holds credentials of type {shown}, not a service account key",
            "give a service account's JSON key (user credentials are found by `earthengine authenticate`)",
        )
    missing = [name for name in _REQUIRED_KEY_FIELDS if info.get(name) in (None, "")]
    if missing:
        raise _key_error(f"is a JSON key without {', '.join(missing)}", _NEW_KEY_HINT)
    for name in _REQUIRED_KEY_FIELDS:
        if not isinstance(info[name], str):
            raise _key_error(f"has {name} as a JSON {type(info[name]).__name__}, not text", _NEW_KEY_HINT)
    if not _EMAIL.fullmatch(info["client_email"]):
        raise _key_error("has a client_email that is not an e-mail address", _NEW_KEY_HINT)
    token_uri = urlsplit(info["token_uri"])
    if token_uri.scheme != "https" and not (token_uri.scheme == "http" and is_loopback(info["token_uri"])):
        # The signed token request is a credential for an hour: it never travels in clear.
        raise _key_error("has a token_uri that is not https", _NEW_KEY_HINT)
    return info


def _not_found(path: Path | None) -> AuthenticationError:
    """Why a value that is neither JSON, base64 nor an existing path names no key file."""
    neither = _key_error(
        "is neither a key file, nor JSON, nor base64",
        "set it to the JSON key, its base64, or the path of the key file",
    )
    if path is None:
        return neither
    try:
        path.stat()
    except FileNotFoundError:
        return _key_error(
            "points to a file that does not exist",
            "set it to the path of the service account's JSON key (or the JSON itself, or its base64)",
        )
    except NotADirectoryError:
        return _key_error("points below a file that is not a folder", "check the path")
    except PermissionError:
        return _key_error("points into a folder edown may not read", "check the folder's permissions")
    except (OSError, ValueError):
        pass
    return neither


def _key_error(problem: str, hint: str) -> AuthenticationError:
    return AuthenticationError(f"{KEY_VARIABLE} {problem}", hint=hint)
