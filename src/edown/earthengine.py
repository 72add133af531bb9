"""The one door to Earth Engine: authentication, the HTTP transport, pacing, retries and error mapping.

Everything else in edown calls Earth Engine through this module, so the rules live in one place:

* **Authentication** is tried in a fixed order (injected credentials; a service account from
  ``GEE_SERVICE_ACCOUNT`` + ``GEE_SERVICE_ACCOUNT_KEY``; then, for a real endpoint, persistent Earth
  Engine user credentials and Google application default credentials). A loopback URL (the emulator)
  needs none. ``ee.Initialize`` runs once per process and endpoint, not per call.
* **Retries are ours alone.** The ``ee`` client would silently retry 429/5xx up to five times with sleeps
  of up to a minute, on top of any retry of ours; we set its retries to zero and retry only what is
  transient (429, 5xx, timeouts, resets, truncated bodies) with jittered exponential backoff, honouring
  ``Retry-After``.
* **Pacing.** One :class:`RequestPacer` per connection keeps requests under the project's quotas
  (40 concurrent, 100/s by default) and adapts its concurrency window to 429s (AIMD: halve on a 429,
  grow by one per window of successes), so Earth Engine is never hammered.
* **Deadlines.** Every request goes through :class:`_Transport`, a pooled ``requests`` session with a hard
  per-request deadline: nothing hangs forever.
* **Errors** become :class:`edown.errors.EarthEngineError` (with the HTTP status and whether a retry can
  help) or one of its subclasses. Credentials and tokens never appear in messages or logs: foreign
  messages pass through :func:`edown.redaction.redact`, and keys are read by :mod:`edown.service_account`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from edown import redaction
from edown.errors import (
    AuthenticationError,
    CollectionNotFoundError,
    EarthEngineError,
    RequestTooLargeError,
    is_disk_full,
)
from edown.plan import rate_window

log = logging.getLogger("edown.earthengine")

T = TypeVar("T")

EE_SCOPES = (
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
)
EMULATOR_DEFAULT_PROJECT = "edown-emulator"
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
SIZE_MESSAGES = (
    "Total request size",
    "must be less than or equal to",
    "User memory limit exceeded",
    "too large",
)


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


# ---- HTTP transport ---------------------------------------------------------------------------------


#: The most a single answer may bring: Earth Engine's pixel answers are under 48 MB plus headers and its
#: JSON pages far smaller, so anything bigger is a broken or hostile server, not data.
MAX_RESPONSE_BYTES = 256 << 20


class BodySink(Protocol):
    """Where :func:`compute_pixels_to` sends a response body, piece by piece."""

    def write(self, data: bytes) -> Any: ...


#: Per thread: a :class:`BodySink` that receives the body of a successful response instead of memory (see
#: :func:`compute_pixels_to`). Error bodies are always read into memory, for the ``ee`` client's messages.
_body_sink = threading.local()


class _Transport:
    """An ``httplib2.Http``-like transport for the ``ee`` client (``ee.Initialize(http_transport=...)``).

    Differences from ee's default: a connection pool as large as our concurrency (the default pool of 10
    discards connections under more threads), and a hard deadline over the whole request including the
    body, not just between bytes.
    """

    def __init__(
        self, pool_size: int, timeout: float, connect_timeout: float = 20.0, pacer: RequestPacer | None = None
    ) -> None:
        self.pacer = pacer
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        redirections: int | None = None,
        connection_type: Any = None,
    ) -> tuple[Any, bytes]:
        import httplib2

        if self.pacer is not None:
            self.pacer.sent()
        deadline = time.monotonic() + self.timeout
        try:
            response = self.session.request(
                method,
                uri,
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, self.timeout),
                stream=True,
                allow_redirects=True,
            )
            sink = getattr(_body_sink, "file", None) if response.status_code == 200 else None
            parts = []
            received = 0
            # read1 returns whatever one receive brings: a server trickling a byte at a time still meets
            # the deadline (iter_content would wait to fill a whole piece), and no body grows unbounded.
            while part := response.raw.read1(1 << 20, decode_content=True):
                received += len(part)
                if received > MAX_RESPONSE_BYTES:
                    response.close()
                    raise ConnectionError(
                        f"the server sent more than {MAX_RESPONSE_BYTES >> 20} MiB; no Earth Engine answer is that big"
                    )
                if sink is not None:
                    sink.write(part)
                else:
                    parts.append(part)
                if time.monotonic() > deadline:
                    response.close()
                    raise TimeoutError(f"request exceeded its {self.timeout:g} s deadline")
            content = b"".join(parts)
        except requests.exceptions.Timeout as exc:
            raise TimeoutError(f"no response within {self.timeout:g} s") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise ConnectionError(_short(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise TimeoutError(f"no response within {self.timeout:g} s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(_short(exc)) from exc
        except requests.exceptions.RequestException as exc:
            raise ConnectionError(_short(exc)) from exc
        out_headers: dict[str, Any] = {k.lower(): v for k, v in response.headers.items()}
        out_headers["status"] = response.status_code
        return httplib2.Response(out_headers), content


def _short(exc: BaseException) -> str:
    """A foreign exception's message, redacted (it may quote a URL, a token or the key) and cut short."""
    text = redaction.redact(str(exc))
    return text if len(text) < 300 else text[:300] + "..."


# ---- authentication and initialisation --------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """An initialised Earth Engine endpoint: where, as which project, authenticated how (never the secret)."""

    url: str
    project: str
    auth_method: str
    pacer: RequestPacer
    transport: Any = None


_connect_lock = threading.Lock()
_current: tuple[tuple[Any, ...], Connection] | None = None


def connect(
    server_url: str,
    project: str | None = None,
    credentials: Any = None,
    *,
    max_concurrent: int = 40,
    requests_per_second: float = 100.0,
    timeout: float = 300.0,
) -> Connection:
    """Initialise the ``ee`` client for ``server_url`` (once per process and endpoint) and return it.

    Raises :class:`AuthenticationError` listing every method tried when none works.
    """
    global _current
    with _connect_lock:
        key = (
            server_url,
            project,
            id(credentials) if credentials is not None else None,
            timeout,
            max_concurrent,
            requests_per_second,
        )
        if _current is not None and _current[0] == key and _still_ours(_current[1]):
            return _current[1]
        redaction.guard_loggers()
        creds, resolved_project, method = resolve_credentials(server_url, project, credentials)
        pacer = RequestPacer(max_concurrent, requests_per_second)
        transport = _initialize(server_url, creds, resolved_project, max_concurrent, timeout, pacer)
        conn = Connection(server_url, resolved_project, method, pacer, transport)
        _current = (key, conn)
        log.info(
            "Earth Engine at %s as project %s (%s)", redaction.redact(server_url), resolved_project, method
        )
        return conn


def forget() -> None:
    """Drop the cached initialisation, e.g. after code outside edown called ``ee.Initialize`` itself."""
    global _current
    with _connect_lock:
        _current = None


def _still_ours(conn: Connection) -> bool:
    """Whether the ``ee`` client still runs on the transport edown installed.

    Code in the same process (a notebook cell, a test fixture) may call ``ee.Initialize`` or ``ee.Reset``
    after edown did; the client then has ee's own retries and timeouts, and edown must initialise again.
    """
    import ee

    return getattr(ee.data._get_state(), "http_transport", None) is conn.transport


def _initialize(
    url: str, creds: Any, project: str, pool: int, timeout: float, pacer: RequestPacer
) -> _Transport:
    import ee

    # Take control of retries: ee's hidden ones would stack under ours (and sleep up to a minute).
    ee.data.setMaxRetries(0)
    transport = _Transport(pool_size=pool + 8, timeout=timeout, pacer=pacer)
    shown = redaction.redact(url)
    last: BaseException | None = None
    for attempt in range(3):
        try:
            ee.Initialize(credentials=creds, project=project, opt_url=url, http_transport=transport)
            return transport
        except (ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        except ee.EEException as exc:
            err = translate_error(exc)
            if not err.transient:
                raise _initialize_error(shown, project, err) from None
            last = exc
        except Exception as exc:  # googleapiclient raises its own types for a broken discovery document
            token_err = _token_error(exc)
            if token_err is None:
                raise EarthEngineError(
                    f"cannot initialise Earth Engine at {shown}: {type(exc).__name__}: {_short(exc)}",
                    hint="check --server-url",
                ) from None
            if not token_err.transient:
                raise AuthenticationError(token_err.message, hint=token_err.hint) from None
            last = exc
        if attempt < 2:
            time.sleep(0.5 * 2**attempt)
    raise EarthEngineError(
        f"cannot reach Earth Engine at {shown}: {_short(last) if last else 'no answer'}",
        transient=True,
        hint="check the network and --server-url",
    )


def _token_error(exc: BaseException) -> EarthEngineError | None:
    """What a failed token request means, without the endpoint's echo of our signed request.

    google-auth raises ``RefreshError`` with the token endpoint's whole answer; only its OAuth ``error``
    code and the start of its description are kept (redacted: an endpoint may echo the signed JWT).
    """
    from google.auth import exceptions

    if isinstance(exc, exceptions.RefreshError):
        answer = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        code = str(answer.get("error") or "refused")
        detail = str(answer.get("error_description") or "")
        reason = redaction.redact(f"{code}: {detail}" if detail else code)
        reason = " ".join(reason.split())
        return EarthEngineError(
            f"the token endpoint refused the credentials ({reason if len(reason) <= 160 else reason[:160] + '...'})",
            status=401,
            hint="a service account's key may be deleted or disabled (create a new one), user credentials "
            "may be revoked (run `earthengine authenticate`), or this machine's clock is off",
        )
    if isinstance(exc, exceptions.TransportError):
        return EarthEngineError(f"cannot reach the token endpoint: {_short(exc)}", transient=True)
    return None


def _initialize_error(url: str, project: str, err: EarthEngineError) -> EarthEngineError:
    if err.status == 403 or "permission" in err.message.lower() or "not registered" in err.message.lower():
        return EarthEngineError(
            f"project {project!r} may not use Earth Engine at {url}: {err.message}",
            status=err.status,
            hint="pass --project with a project registered for Earth Engine (or set GOOGLE_CLOUD_PROJECT)",
        )
    return err


def resolve_credentials(server_url: str, project: str | None, credentials: Any) -> tuple[Any, str, str]:
    """``(credentials, project, description)`` by the documented order; raises AuthenticationError."""
    env_project = os.environ.get("EE_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if credentials is not None:
        chosen = project or env_project or _credentials_project(credentials)
        return (
            credentials,
            _require_project(chosen, server_url, "injected credentials"),
            "injected credentials",
        )

    tried: list[str] = []
    account = os.environ.get("GEE_SERVICE_ACCOUNT")
    key = os.environ.get("GEE_SERVICE_ACCOUNT_KEY")
    if account and key:
        from edown import service_account

        account = account.strip()
        creds, key_project = service_account.credentials(account, key)
        chosen = project or env_project or key_project
        return creds, _require_project(chosen, server_url, "service account"), f"service account {account}"
    if account or key:
        tried.append("service account (only one of GEE_SERVICE_ACCOUNT / GEE_SERVICE_ACCOUNT_KEY is set)")
    else:
        tried.append("service account (GEE_SERVICE_ACCOUNT and GEE_SERVICE_ACCOUNT_KEY not set)")

    if is_loopback(server_url):
        return None, project or env_project or EMULATOR_DEFAULT_PROJECT, "none (local emulator)"

    import ee

    try:
        creds = ee.data.get_persistent_credentials()
        chosen = project or env_project or _credentials_project(creds)
        return (
            creds,
            _require_project(chosen, server_url, "Earth Engine credentials"),
            "Earth Engine user credentials",
        )
    except ee.EEException:
        tried.append("Earth Engine user credentials (none stored; run `earthengine authenticate`)")
    except Exception as exc:
        tried.append(f"Earth Engine user credentials ({type(exc).__name__})")

    try:
        import google.auth

        creds, adc_project = google.auth.default(scopes=list(EE_SCOPES))
        chosen = project or env_project or adc_project or _credentials_project(creds)
        return (
            creds,
            _require_project(chosen, server_url, "application default credentials"),
            "application default credentials",
        )
    except AuthenticationError:
        raise
    except Exception as exc:
        tried.append(
            f"application default credentials ({type(exc).__name__}; run `gcloud auth application-default login`)"
        )
    raise AuthenticationError(
        "no Earth Engine credentials worked; tried: " + "; ".join(tried),
        hint="set GEE_SERVICE_ACCOUNT and GEE_SERVICE_ACCOUNT_KEY, or run `earthengine authenticate`",
    )


def _credentials_project(creds: Any) -> str | None:
    for attr in ("quota_project_id", "project_id"):
        value = getattr(creds, attr, None)
        if value:
            return str(value)
    return None


def _require_project(project: str | None, url: str, method: str) -> str:
    if project:
        return project
    raise AuthenticationError(
        f"no Google Cloud project for Earth Engine at {redaction.redact(url)} (credentials: {method})",
        hint="pass --project / project=, or set GOOGLE_CLOUD_PROJECT",
    )


# ---- errors -----------------------------------------------------------------------------------------


def translate_error(exc: BaseException) -> EarthEngineError:
    """Map anything a call to Earth Engine can raise to an :class:`EarthEngineError`."""
    if isinstance(exc, EarthEngineError):
        return exc
    import ee

    token_err = _token_error(exc)
    if token_err is not None:
        return token_err
    if isinstance(exc, ee.EEException):
        ctx = exc.__context__
        resp = getattr(ctx, "resp", None)
        status = int(getattr(resp, "status", 0) or 0) or None
        message = redaction.redact(str(exc))
        retry_after = None
        if resp is not None:
            try:
                retry_after = float(resp.get("retry-after")) if resp.get("retry-after") else None
            except (TypeError, ValueError):
                retry_after = None
        if status == 400 and any(s in message for s in SIZE_MESSAGES):
            return RequestTooLargeError(message, status=400)
        if status == 404:
            return EarthEngineError(message, status=404)
        if status == 403:
            return EarthEngineError(
                message,
                status=403,
                hint="use --project / project= with a Cloud project registered for Earth Engine",
            )
        err = EarthEngineError(message, status=status, transient=status in TRANSIENT_STATUSES)
        err.retry_after = retry_after  # type: ignore[attr-defined]
        return err
    if isinstance(exc, TimeoutError | socket.timeout):
        return EarthEngineError(f"timed out: {_short(exc)}", transient=True)
    if isinstance(exc, ConnectionError | OSError):
        return EarthEngineError(f"connection failed: {_short(exc)}", transient=True)
    return EarthEngineError(f"{type(exc).__name__}: {_short(exc)}")


def retry_after(err: EarthEngineError) -> float | None:
    value = getattr(err, "retry_after", None)
    return float(value) if value is not None else None


# ---- pacing -----------------------------------------------------------------------------------------


class RequestPacer:
    """Keeps requests within the project's quotas and backs off when Earth Engine says 429.

    Concurrency is bounded by an AIMD window (starts at ``max_concurrent``; halves on a 429 at most once per
    second; grows by ``1/window`` per success, i.e. by one per window of successes). At most
    ``requests_per_second`` requests start in any one second (:func:`edown.plan.rate_window`), which is
    the quota as Earth Engine states it; the few requests of a small run all start at once rather than
    10 ms apart. A ``Retry-After`` or a burst of 429s pauses new requests for a while.
    """

    def __init__(self, max_concurrent: int = 40, requests_per_second: float = 100.0) -> None:
        self.max_concurrent = max_concurrent
        self.rate_starts, self.rate_span = rate_window(requests_per_second)
        #: When each request of the last ``rate_span`` seconds went on the wire: one mutable cell per
        #: request, first the moment its slot was granted, then (:meth:`sent`) the moment it was sent.
        self._sent: list[list[float]] = []
        self._granted = threading.local()
        self.window = float(max_concurrent)
        self.inflight = 0
        self.peak_inflight = 0
        self.throttled = 0
        self.started = 0
        self._paused_until = 0.0
        self._last_decrease = 0.0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event | None = None) -> None:
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    raise InterruptedError("stopping")
                now = time.monotonic()
                self._sent = [cell for cell in self._sent if now - cell[0] < self.rate_span]
                rated = 0.0
                if len(self._sent) >= self.rate_starts:
                    rated = min(cell[0] for cell in self._sent) + self.rate_span - now
                wait = max(self._paused_until - now, rated)
                if self.inflight < max(1, int(self.window)) and wait <= 0:
                    self.inflight += 1
                    self.started += 1
                    self.peak_inflight = max(self.peak_inflight, self.inflight)
                    cell = [now]
                    self._sent.append(cell)
                    self._granted.cell = cell
                    return
                self._cond.wait(timeout=min(0.5, wait) if wait > 0 else 0.5)

    def sent(self) -> None:
        """A request goes on the wire now (the transport says so for every request, paced or not).

        Earth Engine counts a request when it arrives: one granted a slot earlier but built slowly (the
        client's threads share a GIL) must count from now, or the next second's requests arrive while it
        still counts there (101 in a second, a 429 and a pause). A request that took no slot (``ee``'s
        own calls, such as initialisation) is counted too.
        """
        with self._cond:
            now = time.monotonic()
            cell = getattr(self._granted, "cell", None)
            if cell is not None:
                cell[0] = now
                self._granted.cell = None
            else:
                self._sent.append([now])

    def release(self, outcome: str) -> None:
        """``outcome``: ``ok``, ``throttled`` (a 429) or ``error``."""
        with self._cond:
            self.inflight -= 1
            now = time.monotonic()
            if outcome == "throttled":
                self.throttled += 1
                if now - self._last_decrease > 1.0:
                    self.window = max(1.0, self.window / 2)
                    self._last_decrease = now
            elif outcome == "ok":
                self.window = min(float(self.max_concurrent), self.window + 1.0 / max(1.0, self.window))
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        with self._cond:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "window": round(self.window, 2),
                "inflight": self.inflight,
                "peak_inflight": self.peak_inflight,
                "throttled": self.throttled,
                "requests": self.started,
            }


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_retries`` retries of transient failures, sleeping ``U(0, base * 2**n)`` (capped)."""

    max_retries: int = 4
    base_delay: float = 2.0
    max_delay: float = 60.0

    def delay(self, attempt: int, err: EarthEngineError) -> float:
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        hinted = retry_after(err)
        return max(backoff, hinted) if hinted is not None else backoff


def call(
    conn: Connection,
    fn: Callable[[], T],
    policy: RetryPolicy,
    stop: threading.Event | None = None,
    on_retry: Callable[[EarthEngineError], None] | None = None,
) -> T:
    """Run one Earth Engine call under the pacer, retrying what is transient by ``policy``."""
    attempt = 0
    while True:
        conn.pacer.acquire(stop)
        try:
            result = fn()
        except BaseException as exc:
            if is_disk_full(exc):  # our own disk, not Earth Engine: no retry can help
                conn.pacer.release("error")
                raise
            err = translate_error(exc)
            conn.pacer.release("throttled" if err.status == 429 else "error")
            if err.status == 429:
                conn.pacer.pause(retry_after(err) or min(1.0, policy.base_delay))
            if not err.transient or attempt >= policy.max_retries or isinstance(exc, KeyboardInterrupt):
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise err from None
            if on_retry is not None:
                on_retry(err)
            sleep = policy.delay(attempt, err)
            log.debug("retrying after %s (attempt %d, sleeping %.2fs)", err, attempt + 1, sleep)
            if stop is not None:
                if stop.wait(sleep):
                    raise InterruptedError("stopping") from None
            else:
                time.sleep(sleep)
            attempt += 1
            continue
        conn.pacer.release("ok")
        return result


# ---- calls ------------------------------------------------------------------------------------------


def list_images(
    conn: Connection,
    collection_id: str,
    filter_text: str,
    region: dict[str, Any] | None,
    properties: list[str],
    policy: RetryPolicy,
    page_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every image of a collection matching the filters, page by page (``listImages``/``listAssets``)."""
    import ee

    token: str | None = None
    while True:
        params: dict[str, Any] = {"parent": collection_id, "pageSize": page_size, "filter": filter_text}
        if region is not None:
            params["region"] = region
        if properties:
            params["properties"] = list(properties)
        if token:
            params["pageToken"] = token
        try:
            page: dict[str, Any] = call(conn, functools.partial(ee.data.listImages, params), policy)
        except EarthEngineError as err:
            if err.status == 404:
                raise CollectionNotFoundError(
                    f"collection_id: {collection_id!r} was not found in Earth Engine ({err.message})",
                    status=404,
                    hint="check the id in the Earth Engine catalog (e.g. COPERNICUS/S2_SR_HARMONIZED)",
                ) from None
            if err.status == 400 and "not a folder or collection" in err.message:
                raise CollectionNotFoundError(
                    f"collection_id: {collection_id!r} is an image, not an ImageCollection",
                    status=400,
                    hint="give the collection id (drop the image's last path component)",
                ) from None
            raise
        yield from page.get("images") or []
        token = page.get("nextPageToken")
        if not token:
            return


def compute_value(conn: Connection, obj: Any, policy: RetryPolicy) -> Any:
    """``getInfo`` of an ee object through the pacer and our retry policy."""
    return call(conn, obj.getInfo, policy)


def compute_pixels_npy(conn: Connection, expression: Any, grid: dict[str, Any]) -> bytes:
    """One ``computePixels`` call returning raw NPY bytes (the caller validates and retries)."""
    import ee

    return bytes(ee.data.computePixels({"expression": expression, "fileFormat": "NPY", "grid": grid}))


def compute_pixels_to(conn: Connection, expression: Any, grid: dict[str, Any], sink: BodySink) -> None:
    """One ``computePixels`` call whose NPY body is handed to ``sink`` piece by piece as it arrives.

    The body never sits in memory whole, so many large requests in flight cost little RAM. A retry needs
    a fresh sink. The sink may raise (e.g. :class:`EarthEngineError` for a body that is not what was
    asked); that ends the request.
    """
    import ee

    _body_sink.file = sink
    try:
        ee.data.computePixels({"expression": expression, "fileFormat": "NPY", "grid": grid})
    finally:
        _body_sink.file = None
