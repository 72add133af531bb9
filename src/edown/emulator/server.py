"""The HTTP face of the emulator: the Earth Engine REST subset the real ``ee`` client speaks.

Served on loopback over HTTP/1.1 with keep-alive and TCP_NODELAY (without it every response costs ~40 ms
of Nagle plus delayed ACK). Errors use Google's JSON error body, so the client raises the same
``EEException`` it would against Earth Engine; the emulator never answers 401 (the client would try to
refresh the token and fail outside ``EEException``).

No client can knock it over: bodies are capped (413) and need a valid ``Content-Length`` (400); a
connection must finish its headers and body within deadlines (not merely keep dribbling bytes), and at
most ``max_connections`` are held at once; every evaluation runs under a step and time budget
(:mod:`edown.emulator.budget`). It has no authentication, so it warns when bound beyond loopback and then
refuses its ``/_emulator/*`` control calls to other machines unless told otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from edown.crs import CRSError, resolve_crs
from edown.emulator import images as im
from edown.emulator.behaviour import (
    PIXEL_KINDS,
    Behaviour,
    FaultPlan,
    FaultRule,
    Latency,
    Limits,
    RequestRecord,
)
from edown.emulator.budget import BudgetExceededError, enforce
from edown.emulator.catalog import AssetNotFoundError, Catalog, CatalogError
from edown.emulator.discovery import algorithm_names, algorithms_document, discovery_document
from edown.emulator.encoding import encode_geotiff, encode_npy, encode_picture, encode_zip, valid_everywhere
from edown.emulator.expressions import Evaluator
from edown.emulator.images import EEImage, EvalContext, EvaluationError
from edown.emulator.listing import FilterSyntaxError, parse_filter
from edown.emulator.model import Grid
from edown.emulator.regions import region_grid
from edown.emulator.values import EECollection, geometry_from_geojson, to_info

log = logging.getLogger("edown.emulator")

PUBLIC_PREFIX = "projects/earthengine-public/assets/"
LEGACY_PREFIX = "projects/earthengine-legacy/assets/"
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000
SUPPORTED_FORMATS = ("NPY", "GEO_TIFF")
GET_PIXELS_FIELDS = {"fileFormat", "bandIds", "grid", "region", "visualizationOptions", "workloadTag"}
COMPUTE_PIXELS_FIELDS = {"expression", "fileFormat", "bandIds", "grid", "visualizationOptions", "workloadTag"}


class ApiError(Exception):
    """An error answered with Google's JSON error body."""

    STATUS_NAMES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        408: "DEADLINE_EXCEEDED",
        413: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        status = self.STATUS_NAMES.get(self.code, "UNKNOWN")
        return json.dumps({"error": {"code": self.code, "message": self.message, "status": status}}).encode()


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes an emulator instance; defaults are Earth Engine's limits, no latency, no faults."""

    host: str = "127.0.0.1"
    port: int = 0
    latency: Latency = field(default_factory=Latency)
    limits: Limits = field(default_factory=Limits)
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: Projects allowed to call the API (None: any). Others get 403 PERMISSION_DENIED.
    allowed_projects: tuple[str, ...] | None = None
    log_requests: bool = False
    #: Keep the JSON body of every pixel request in the statistics log (for replaying a workload).
    capture_bodies: bool = False
    #: Memoise pixel responses up to this many MiB (0: off). Latency and faults still apply; only the CPU
    #: of computing pixels is saved, so that a benchmark's repeated runs measure the client.
    response_cache_mb: int = 0
    #: Largest request body accepted (Earth Engine's own payload limit, 10 MiB); larger ones get 413.
    max_body_bytes: int = 10 * 1024 * 1024
    #: Seconds a kept-alive connection may wait for its next request before it is closed.
    idle_timeout_seconds: float = 60.0
    #: Seconds from a request's first byte to the end of its headers (a deadline, not a per-read timeout).
    header_timeout_seconds: float = 10.0
    #: Seconds to receive a request body once its headers are in (also bounds sending one response).
    body_timeout_seconds: float = 60.0
    #: Connections held at once; more are answered 503 and closed at once.
    max_connections: int = 256
    #: Accept ``/_emulator/*`` control calls from non-loopback clients (only relevant off loopback).
    allow_remote_control: bool = False

    @property
    def loopback_only(self) -> bool:
        """True when the listening address is reachable from this machine only."""
        return _is_loopback(self.host)


@dataclass
class _Outcome:
    """What a route produced: a body plus how (and whether) to misbehave while sending it."""

    body: bytes
    content_type: str = "application/json; charset=UTF-8"
    fault: FaultRule | None = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


_BUSY = json.dumps(
    {
        "error": {
            "code": 503,
            "message": "The edown emulator is at its connection limit.",
            "status": "UNAVAILABLE",
        }
    }
).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    # socketserver's default backlog of 5 drops bursts of connections (clients then wait 1 s to retry).
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self.connections = 0
        self._connections_lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is routine for a server (socketserver prints a traceback)."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            admitted = self.connections < self.emulator.config.max_connections
            if admitted:
                self.connections += 1
        if admitted:
            super().process_request(request, client_address)
            return
        # Answered from the accepting thread, so it must never block: a full send buffer just drops it.
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
                + f"Content-Length: {len(_BUSY)}\r\nConnection: close\r\n\r\n".encode()
                + _BUSY
            )
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self.connections -= 1


class _DeadlineReader(io.RawIOBase):
    """A socket reader with a deadline for a whole phase (headers, body), not just for each read.

    A per-read timeout is defeated by a client that sends one byte just before it expires; a deadline is
    not. ``arm(first, then)`` allows ``first`` seconds until any byte arrives, then ``then`` seconds more.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self.after_first_byte: float | None = None
        self.phase = "request"

    def arm(self, seconds: float, then: float | None = None, phase: str = "request") -> None:
        self.deadline = time.monotonic() + seconds
        self.after_first_byte = then
        self.phase = phase

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.phase} deadline passed")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer)
        if count and self.after_first_byte is not None:
            self.deadline = time.monotonic() + self.after_first_byte
            self.after_first_byte = None
        return count


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 65536)

    def handle_one_request(self) -> None:
        config = self.server.emulator.config
        self.reader.arm(config.idle_timeout_seconds, then=config.header_timeout_seconds)
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.config.log_requests:
            log.info("%s - %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        # Timeouts and malformed requests from clients are routine for a server; never a traceback.
        log.debug("%s - %s", self.address_string(), format % args)

    def read_body(self) -> bytes:
        """The request body, refusing what cannot be read safely: no or a bad length, too big, too slow."""
        config = self.server.emulator.config
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(
                400, "A request body needs a Content-Length header (chunked bodies are not accepted)."
            )
        declared = self.headers.get_all("Content-Length") or []
        if not declared:
            return b""
        if len(set(declared)) != 1 or not declared[0].strip().isdigit():
            self.close_connection = True
            raise ApiError(400, f"Invalid Content-Length header: {', '.join(declared)!r}.")
        length = int(declared[0])
        if length > config.max_body_bytes:
            self.close_connection = True
            raise ApiError(
                413,
                f"Request payload size exceeds the limit: {config.max_body_bytes} bytes "
                f"(the edown emulator's EmulatorConfig.max_body_bytes; this request declares {length}).",
            )
        if not length:
            return b""
        self.reader.arm(config.body_timeout_seconds, phase="body")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise ApiError(
                408,
                f"The request body did not arrive within {config.body_timeout_seconds:g} s "
                "(the edown emulator's EmulatorConfig.body_timeout_seconds).",
            ) from None
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, f"The request body ended after {len(body)} of {length} bytes.")
        return body

    def client_is_local(self) -> bool:
        return _is_loopback(str(self.client_address[0]))

    def do_GET(self) -> None:
        self.server.emulator.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.emulator.handle(self, "POST")

    def send_body(
        self,
        code: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        fault: FaultRule | None = None,
    ) -> None:
        if fault is not None and fault.kind == "short_body":
            body = body[: max(1, int(len(body) * fault.fraction))]
        # A reader that stops reading must not hold the thread forever either.
        self.connection.settimeout(self.server.emulator.config.body_timeout_seconds)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if fault is not None and fault.kind in ("reset", "truncate"):
            cut = max(1, int(len(body) * fault.fraction))
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if fault.kind == "reset":
                # SO_LINGER 0 makes close() send RST instead of FIN: a reset connection mid-body.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.wfile.write(body)


_ASSET_ROUTE = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/assets/(?P<asset>.+?)(?::(?P<verb>listAssets|getPixels))?$"
)
_PROJECT_ROUTE = re.compile(
    r"^/v1/projects/(?P<project>[^/:]+)"
    r"(?P<rest>/algorithms|/value:compute|/image:computePixels|/table:computeFeatures|:listAssets|/thumbnails"
    r"|/maps)$"
)
_TILE_ROUTE = re.compile(
    r"^/v1/projects/(?P<project>[^/:]+)/maps/(?P<map>[A-Za-z0-9_-]+)/tiles/(?P<z>\d+)/(?P<x>\d+)/(?P<y>\d+)$"
)
#: Half the side of the Web Mercator (EPSG:3857) world, in metres: map tiles divide it by powers of two.
WEB_MERCATOR_HALF = 20037508.342789244
TILE_SIZE = 256
_THUMBNAIL_ROUTE = re.compile(
    r"^/v1/projects/(?P<project>[^/:]+)/thumbnails/(?P<thumb>[A-Za-z0-9_-]+):getPixels$"
)
#: Download and thumbnail formats (``thumbnails.create``), and the content type each is served with.
THUMBNAIL_FORMATS = {
    "NPY": "application/octet-stream",
    "GEO_TIFF": "image/tiff",
    "ZIPPED_GEO_TIFF": "application/zip",
    "ZIPPED_GEO_TIFF_PER_BAND": "application/zip",
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "AUTO_JPEG_PNG": "image/png",
}
#: Thumbnail ids remembered (oldest forgotten first), as EE's ids expire.
MAX_THUMBNAILS = 1000
#: ...and at most this many bytes of their requests, so that stored ids cannot fill the memory.
MAX_THUMBNAIL_BYTES = 64 * 1024 * 1024


class Emulator:
    """A running (or startable) emulated Earth Engine. Use :func:`serve` for a context manager."""

    def __init__(self, config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.catalog = catalog or Catalog()
        self.behaviour = Behaviour(self.config.limits, self.config.latency, self.config.faults)
        self.evaluator = Evaluator(self.catalog, algorithm_names())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.issued_tokens: list[str] = []
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        self._thumbnails: OrderedDict[str, tuple[str, dict[str, Any], int]] = OrderedDict()
        self._thumbnail_bytes = 0

    # -- lifecycle --
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        host, port = self._server.server_address[:2]
        host = host if isinstance(host, str) else host.decode()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def open_connections(self) -> int:
        """Connections being served right now (kept-alive ones included)."""
        return self._server.connections if self._server is not None else 0

    def _bind(self) -> _Server:
        discovery_document()  # fail fast (and pay the parse once) if the ee package lacks the files
        server = _Server((self.config.host, self.config.port), self)
        if not self.config.loopback_only:
            port = server.server_address[1]
            log.warning(
                "the edown emulator listens on %s:%s, beyond loopback: anyone who can reach it can use it (it "
                "has no authentication). Control calls (/_emulator/*) are %s. Use --host 127.0.0.1 unless other "
                "machines must reach it.",
                self.config.host,
                port,
                "allowed from other machines"
                if self.config.allow_remote_control
                else "refused from other machines (--allow-remote-control allows them)",
            )
        return server

    def start(self) -> str:
        """Bind and serve on a background thread; ``OSError`` (e.g. ``EADDRINUSE``) if the port is taken."""
        self._server = self._bind()
        self._thread = threading.Thread(target=self._server.serve_forever, name="edown-emulator", daemon=True)
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        self._server = self._bind()
        try:
            self._server.serve_forever()
        finally:
            self._closing.set()
            self._server.server_close()

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control --
    def stats(self, include_log: bool = False) -> dict[str, Any]:
        return self.behaviour.stats(include_log)

    def reset_stats(self) -> None:
        self.behaviour.reset_stats()

    def set_faults(self, plan: FaultPlan) -> None:
        self.behaviour.set_faults(plan)

    def storm(self, seconds: float) -> None:
        self.behaviour.storm(seconds)

    # -- request handling --
    def handle(self, req: _Handler, method: str) -> None:
        started = time.monotonic()
        parts = urlsplit(req.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            raw_body = req.read_body()
        except ApiError as err:
            with contextlib.suppress(OSError):
                req.send_body(err.code, err.body(), "application/json; charset=UTF-8")
            return
        kind, project, asset = self._classify(method, path, req)
        admitted = False
        rec = RequestRecord(
            kind=kind,
            status=200,
            project=project,
            started=time.time(),
            finished=0.0,
            bytes_out=0,
            asset=asset,
        )
        if self.config.capture_bodies and kind in PIXEL_KINDS and raw_body:
            rec.path = path
            try:
                rec.body = json.loads(raw_body)
            except ValueError:
                rec.body = None
        internal = ApiError(500, "An internal error has occurred.")
        response: tuple[int, bytes, str, dict[str, str] | None, FaultRule | None] = (
            500,
            internal.body(),
            "application/json; charset=UTF-8",
            None,
            None,
        )
        try:
            if kind == "control" and not (self.config.allow_remote_control or req.client_is_local()):
                raise ApiError(
                    403,
                    "The edown emulator accepts /_emulator/ control calls from loopback clients only; start it "
                    f"with --allow-remote-control (EmulatorConfig.allow_remote_control=True) to accept them from "
                    f"{req.client_address[0]}.",
                )
            self._check_project(kind, project)
            refusal = self.behaviour.admit(kind, project or "")
            if refusal is not None:
                retry = self.config.limits.retry_after_seconds
                headers = {"Retry-After": f"{retry:g}"} if retry is not None else None
                raise ApiError(429, refusal, headers)
            admitted = True
            outcome = self._route(kind, method, path, query, raw_body, project, asset, rec)
            rec.fault = outcome.fault.kind if outcome.fault else None
            self._sleep(
                self.behaviour.service_seconds(kind, len(outcome.body)) - (time.monotonic() - started)
            )
            rec.bytes_out = len(outcome.body)
            response = (200, outcome.body, outcome.content_type, None, outcome.fault)
        except ApiError as err:
            rec.status = err.code
            if err.code != 429:
                self._sleep(self.behaviour.service_seconds(kind, 0) - (time.monotonic() - started))
            body = err.body()
            rec.bytes_out = len(body)
            response = (err.code, body, "application/json; charset=UTF-8", err.headers, None)
        # Counted before the reply leaves, so a client that reads the statistics right after its response
        # always finds its own request there.
        rec.finished = time.time()
        if kind not in ("discovery", "control"):
            self.behaviour.record(rec)
        try:
            req.send_body(*response)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            req.close_connection = True
        finally:
            if admitted:
                self.behaviour.release(kind, project or "")

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)

    def _classify(self, method: str, path: str, req: _Handler) -> tuple[str, str | None, str | None]:
        header_project = req.headers.get("X-Goog-User-Project")
        if path.startswith("/_emulator/"):
            return "control", None, None
        if path.rstrip("/").endswith("$discovery/rest") or path == "/discovery/v1/apis/earthengine/v1/rest":
            return "discovery", None, None
        if path.endswith("/token") and method == "POST":
            return "token", None, None
        m = _THUMBNAIL_ROUTE.match(path)
        if m:
            return "thumbnailPixels", header_project or m.group("project"), m.group("thumb")
        m = _TILE_ROUTE.match(path)
        if m:
            return "mapTile", header_project or m.group("project"), "/".join(m.group("map", "z", "x", "y"))
        m = _PROJECT_ROUTE.match(path)
        if m:
            rest = m.group("rest")
            kind = {
                "/algorithms": "algorithms",
                "/value:compute": "compute",
                "/image:computePixels": "computePixels",
                "/table:computeFeatures": "computeFeatures",
                ":listAssets": "listProjectAssets",
                "/thumbnails": "thumbnails",
                "/maps": "maps",
            }[rest]
            return kind, header_project or m.group("project"), None
        m = _ASSET_ROUTE.match(path)
        if m:
            verb = m.group("verb")
            kind = {"listAssets": "listAssets", "getPixels": "getPixels", None: "getAsset"}[verb]
            project = m.group("project")
            if project in ("earthengine-public", "earthengine-legacy"):
                project = header_project or project
            return kind, project, m.group("asset")
        return "unknown", header_project, None

    def _check_project(self, kind: str, project: str | None) -> None:
        allowed = self.config.allowed_projects
        if allowed is None or kind in ("discovery", "token", "control", "unknown") or project in allowed:
            return
        raise ApiError(
            403,
            f"Caller does not have required permission to use project {project}. Grant the caller the "
            "roles/serviceusage.serviceUsageConsumer role, or a custom role with the serviceusage.services.use "
            f"permission, by visiting https://console.developers.google.com/iam-admin/iam/admin?project={project} "
            "and then retry. Propagation of new permission may take a few minutes.",
        )

    def _route(
        self,
        kind: str,
        method: str,
        path: str,
        query: dict[str, str],
        raw: bytes,
        project: str | None,
        asset: str | None,
        rec: RequestRecord,
    ) -> _Outcome:
        try:
            if kind == "control":
                return self._control(method, path, raw)
            if kind == "discovery":
                return _Outcome(discovery_document())
            if kind == "algorithms":
                return _Outcome(algorithms_document())
            if kind == "token":
                access = "emulator-" + secrets.token_hex(16)
                self.issued_tokens.append(access)  # so tests can prove a token never leaks anywhere
                token = {"access_token": access, "expires_in": 3600, "token_type": "Bearer"}
                return _Outcome(json.dumps(token).encode())
            if kind == "listProjectAssets":
                return _Outcome(b'{"assets": []}')
            if kind == "unknown":
                raise ApiError(404, f"The requested URL {path} was not found on this server.")
            body = _json_body(raw) if method == "POST" else {}
            limits = self.config.limits
            with enforce(limits.max_evaluation_nodes, limits.max_evaluation_seconds):
                if kind == "compute":
                    return self._compute(body)
                if kind == "computePixels":
                    return self._pixels(kind, None, body, rec)
                if kind == "computeFeatures" and method == "POST":
                    return self._compute_features(body)
                if kind in ("thumbnails", "maps") and method == "POST":
                    return self._create_thumbnail(project or "", body, kind)
                if kind == "mapTile" and method == "GET":
                    assert asset is not None
                    return self._map_tile(project or "", asset, rec)
                if kind == "thumbnailPixels" and method == "GET":
                    assert asset is not None
                    return self._thumbnail_pixels(project or "", asset, rec)
                assert asset is not None
                asset_id = _asset_id(asset)
                if kind == "getAsset":
                    return self._get_asset(asset_id)
                if kind == "listAssets":
                    return self._list_assets(asset_id, query)
                if kind == "getPixels":
                    return self._pixels(kind, asset_id, body, rec)
        except AssetNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        except (CatalogError, EvaluationError, FilterSyntaxError, CRSError, BudgetExceededError) as exc:
            raise ApiError(400, str(exc)) from None
        except ApiError:
            raise
        except Exception:
            log.error("emulator internal error on %s:\n%s", path, traceback.format_exc())
            raise ApiError(500, "An internal error has occurred.") from None
        raise ApiError(404, f"The requested URL {path} was not found on this server.")

    # -- endpoints --
    def _control(self, method: str, path: str, raw: bytes) -> _Outcome:
        action = path[len("/_emulator/") :]
        if action == "stats":
            return _Outcome(json.dumps(self.stats(include_log=True)).encode())
        if action == "health":
            return _Outcome(b'{"ok": true}')
        if method == "POST" and action == "reset":
            self.reset_stats()
            return _Outcome(b'{"ok": true}')
        if method == "POST" and action == "faults":
            self.set_faults(FaultPlan.from_json(raw.decode() or "{}"))
            return _Outcome(b'{"ok": true}')
        if method == "POST" and action == "storm":
            self.storm(float(_json_body(raw).get("seconds", 5)))
            return _Outcome(b'{"ok": true}')
        raise ApiError(404, f"unknown emulator control {action!r}")

    def _compute(self, body: dict[str, Any]) -> _Outcome:
        if "expression" not in body:
            raise ApiError(400, "Invalid JSON payload: 'expression' is required.")
        value = self.evaluator.evaluate(body["expression"])
        return _Outcome(json.dumps({"result": to_info(value)}).encode())

    def _compute_features(self, body: dict[str, Any]) -> _Outcome:
        """``table.computeFeatures`` (``ee.data.computeFeatures``, geemap's ``ee_to_df``): a collection's
        features as GeoJSON, ``pageSize`` at a time; the page token is the next feature's position."""
        if "expression" not in body:
            raise ApiError(400, "Invalid JSON payload: 'expression' is required.")
        value = self.evaluator.evaluate(body["expression"])
        if not isinstance(value, EECollection):
            raise ApiError(
                400,
                f"table.computeFeatures: The expression must evaluate to a collection, not {_type_name(value)}.",
            )
        features = value.to_info()["features"]
        try:
            start = int(body.get("pageToken") or 0)
            size = int(body.get("pageSize") or len(features) or 1)
        except (TypeError, ValueError):
            raise ApiError(400, "Invalid JSON payload: 'pageSize' and 'pageToken' must be numbers.") from None
        if start < 0 or size <= 0:
            raise ApiError(400, "Invalid JSON payload: 'pageSize' must be positive and 'pageToken' valid.")
        page: dict[str, Any] = {"type": "FeatureCollection", "features": features[start : start + size]}
        if start + size < len(features):
            page["nextPageToken"] = str(start + size)
        return _Outcome(json.dumps(page).encode())

    def _create_thumbnail(self, project: str, body: dict[str, Any], kind: str = "thumbnails") -> _Outcome:
        """``thumbnails.create`` (getDownloadURL, getThumbURL) or ``maps.create`` (getMapId): check the
        request, remember it, name it."""
        unknown = sorted(set(body) - {"expression", "fileFormat", "filenamePrefix", "bandIds", "workloadTag"})
        if unknown:
            raise ApiError(
                400, f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
            )
        fmt = body.get("fileFormat") or "AUTO_JPEG_PNG"
        if fmt not in THUMBNAIL_FORMATS:
            raise ApiError(
                400,
                f"File format {fmt} is not supported by the edown emulator (use one of {', '.join(THUMBNAIL_FORMATS)}).",
            )
        if "expression" not in body:
            raise ApiError(400, "Invalid JSON payload: 'expression' is required.")
        value = self.evaluator.evaluate(body["expression"])
        if not isinstance(value, EEImage):
            raise ApiError(
                400, f"Thumbnails: The expression must evaluate to an Image, not {_type_name(value)}."
            )
        thumb = secrets.token_hex(16)
        size = len(json.dumps(body))
        with self._cache_lock:
            self._thumbnails[f"{kind}/{thumb}"] = (project, body, size)
            self._thumbnail_bytes += size
            while len(self._thumbnails) > MAX_THUMBNAILS or self._thumbnail_bytes > MAX_THUMBNAIL_BYTES:
                _, (_, _, dropped) = self._thumbnails.popitem(last=False)
                self._thumbnail_bytes -= dropped
        return _Outcome(json.dumps({"name": f"projects/{project}/{kind}/{thumb}"}).encode())

    def _map_tile(self, project: str, tile: str, rec: RequestRecord) -> _Outcome:
        """One 256 x 256 PNG of the Web Mercator tile pyramid (``getMapId`` layers, geemap's maps)."""
        map_id, z, x, y = tile.split("/")
        with self._cache_lock:
            stored = self._thumbnails.get(f"maps/{map_id}")
        if stored is None or stored[0] != project:
            raise ApiError(404, f"Map projects/{project}/maps/{map_id} does not exist or has expired.")
        zoom, col, row = int(z), int(x), int(y)
        if zoom > 30 or not (0 <= col < 2**zoom and 0 <= row < 2**zoom):
            raise ApiError(400, f"Tile {zoom}/{col}/{row} is outside the map.")
        side = 2 * WEB_MERCATOR_HALF / 2**zoom
        res = side / TILE_SIZE
        grid = Grid(
            "EPSG:3857",
            (res, 0.0, -WEB_MERCATOR_HALF + col * side, 0.0, -res, WEB_MERCATOR_HALF - row * side),
            TILE_SIZE,
            TILE_SIZE,
        )
        image = self.evaluator.evaluate(stored[1]["expression"])
        rec.grid = grid.to_log()
        fmt = stored[1].get("fileFormat") or "AUTO_JPEG_PNG"
        picture = "JPEG" if fmt == "JPEG" else "PNG"
        return _Outcome(encode_picture(image, EvalContext(grid), picture), THUMBNAIL_FORMATS[picture])

    def _thumbnail_pixels(self, project: str, thumb: str, rec: RequestRecord) -> _Outcome:
        with self._cache_lock:
            stored = self._thumbnails.get(f"thumbnails/{thumb}")
        if stored is None or stored[0] != project:
            raise ApiError(
                404, f"Thumbnail projects/{project}/thumbnails/{thumb} does not exist or has expired."
            )
        body = stored[1]
        fmt = body.get("fileFormat") or "AUTO_JPEG_PNG"
        image = self.evaluator.evaluate(body["expression"])
        rec.asset = image.image_id
        band_ids = body.get("bandIds")
        if band_ids:
            image = im.select(image, [re.escape(str(b)) for b in band_ids])
        grid = _request_grid(None, image)
        rec.grid = grid.to_log()
        self._check_limits(image, grid)
        ctx = EvalContext(grid)
        if fmt in ("PNG", "JPEG", "AUTO_JPEG_PNG"):
            payload = encode_picture(image, ctx, "JPEG" if fmt == "JPEG" else "PNG")
        else:
            rendered = im.render(image, ctx)
            prefix = body.get("filenamePrefix") or image.image_id or "download"
            prefix = re.sub(r"[^\w.-]+", "_", str(prefix))
            masks = [np.broadcast_to(b.evaluate(ctx).mask, ctx.shape) for b in image.bands]
            if fmt == "NPY":
                payload = encode_npy(rendered)
            elif fmt == "GEO_TIFF":
                payload = encode_geotiff(rendered, grid, valid_everywhere(image, ctx))
            else:
                per_band = fmt == "ZIPPED_GEO_TIFF_PER_BAND"
                payload = encode_zip(rendered, grid, prefix, per_band, masks)
        return _Outcome(payload, THUMBNAIL_FORMATS[fmt])

    def _get_asset(self, asset_id: str) -> _Outcome:
        if self.catalog.has_collection(asset_id):
            return _Outcome(json.dumps(self.catalog.collection(asset_id).to_rest()).encode())
        return _Outcome(json.dumps(self.catalog.image(asset_id).to_rest()).encode())

    def _list_assets(self, asset_id: str, query: dict[str, str]) -> _Outcome:
        if not self.catalog.has_collection(asset_id):
            self.catalog.image(asset_id)  # 404 for unknown ids
            raise ApiError(400, f"Asset '{asset_id}' is not a folder or collection.")
        predicate = parse_filter(query.get("filter"))
        page_size = _int_param(query, "pageSize", DEFAULT_PAGE_SIZE)
        if page_size <= 0:
            page_size = DEFAULT_PAGE_SIZE
        page_size = min(page_size, MAX_PAGE_SIZE)
        offset = _page_token(query.get("pageToken"))
        view = query.get("view", "FULL")
        matches = self.catalog.query(
            asset_id, predicate.start, predicate.end, predicate.region, predicate.test
        )
        page: list[dict[str, Any]] = []
        more = False
        for i, asset in enumerate(matches):
            if i < offset:
                continue
            if len(page) == page_size:
                more = True
                break
            page.append(asset.to_rest(view))
        out: dict[str, Any] = {"assets": page}
        if more:
            out["nextPageToken"] = f"p{offset + page_size}"
        return _Outcome(json.dumps(out).encode())

    def _pixels(self, kind: str, asset_id: str | None, body: dict[str, Any], rec: RequestRecord) -> _Outcome:
        allowed = GET_PIXELS_FIELDS if kind == "getPixels" else COMPUTE_PIXELS_FIELDS
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(
                400, f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
            )
        fmt = body.get("fileFormat", "AUTO_JPEG_PNG")
        if fmt not in SUPPORTED_FORMATS:
            raise ApiError(
                400, f"File format {fmt} is not supported by the edown emulator (use NPY or GEO_TIFF)."
            )
        if body.get("visualizationOptions"):
            raise ApiError(400, "visualizationOptions are not supported by the edown emulator.")
        if asset_id is not None:
            if self.catalog.has_collection(asset_id):
                raise ApiError(400, f"Asset '{asset_id}' is not an image.")
            image = im.load_image(self.catalog.image(asset_id))
        else:
            if "expression" not in body:
                raise ApiError(400, "Invalid JSON payload: 'expression' is required.")
            value = self.evaluator.evaluate(body["expression"])
            if not isinstance(value, EEImage):
                raise ApiError(
                    400, f"computePixels: The expression must evaluate to an Image, not {_type_name(value)}."
                )
            image = value
            rec.asset = image.image_id
        band_ids = body.get("bandIds")
        if band_ids:
            image = im.select(image, [re.escape(str(b)) for b in band_ids])
        grid = _request_grid(body.get("grid"), image)
        rec.grid = grid.to_log()
        self._check_limits(image, grid)
        fault = self.behaviour.pick_fault(kind, grid.width * grid.height)
        if fault is not None:
            self._apply_early_fault(fault)
        key = self._cache_key(kind, asset_id, body)
        cached = self._cache_get(key)
        if cached is not None:
            return _Outcome(cached, "application/octet-stream", fault)
        ctx = EvalContext(grid)
        rendered = im.render(image, ctx)
        if body.get("region"):
            inside = im.inside_mask(ctx, geometry_from_geojson(body["region"]))
            rendered = [(n, np.where(inside, v, np.zeros((), v.dtype))) for n, v in rendered]
        if fmt == "NPY":
            payload = encode_npy(rendered)
        else:
            valid = valid_everywhere(image, ctx)
            if body.get("region"):
                valid = valid & inside
            payload = encode_geotiff(rendered, grid, valid)
        self._cache_put(key, payload)
        return _Outcome(payload, "application/octet-stream", fault)

    def _cache_key(self, kind: str, asset_id: str | None, body: dict[str, Any]) -> str | None:
        if not self.config.response_cache_mb:
            return None
        canonical = {k: v for k, v in body.items() if k != "workloadTag"}
        text = json.dumps([kind, asset_id, canonical], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _cache_get(self, key: str | None) -> bytes | None:
        if key is None:
            return None
        with self._cache_lock:
            payload = self._cache.get(key)
            if payload is not None:
                self._cache.move_to_end(key)
            return payload

    def _cache_put(self, key: str | None, payload: bytes) -> None:
        if key is None:
            return
        limit = self.config.response_cache_mb * 1024 * 1024
        with self._cache_lock:
            if key in self._cache or len(payload) > limit:
                return
            self._cache[key] = payload
            self._cache_bytes += len(payload)
            while self._cache_bytes > limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def _apply_early_fault(self, fault: FaultRule) -> None:
        if fault.kind == "error":
            raise ApiError(
                fault.status, "An internal error has occurred." if fault.status >= 500 else "Injected error."
            )
        if fault.kind == "throttle":
            raise ApiError(429, "Too many requests (injected).")
        if fault.kind == "memory":
            raise ApiError(400, "User memory limit exceeded.")
        if fault.kind == "size":
            raise ApiError(
                400, "Total request size (50331649 bytes) must be less than or equal to 50331648 bytes."
            )
        if fault.kind == "stall":
            self._closing.wait(fault.stall_seconds)

    def _check_limits(self, image: EEImage, grid: Grid) -> None:
        limits = self.config.limits
        if len(image.bands) > limits.max_bands:
            raise ApiError(
                400, f"Number of bands ({len(image.bands)}) must be less than or equal to {limits.max_bands}."
            )
        if grid.width > limits.max_dimension or grid.height > limits.max_dimension:
            raise ApiError(
                400,
                f"Grid dimensions ({grid.width}x{grid.height}) must be less than or equal to {limits.max_dimension} "
                "in each dimension.",
            )
        per_pixel = sum(
            b.pixel_type.numpy_dtype.itemsize + (1 if limits.count_mask_byte else 0) for b in image.bands
        )
        total = grid.width * grid.height * per_pixel
        if total > limits.max_request_bytes:
            raise ApiError(
                400,
                f"Total request size ({total} bytes) must be less than or equal to {limits.max_request_bytes} bytes.",
            )


def _type_name(value: Any) -> str:
    if isinstance(value, EECollection):
        return "ImageCollection"
    return type(value).__name__.removeprefix("EE")


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Invalid JSON payload received.") from None
    except RecursionError:
        raise ApiError(400, "Invalid JSON payload received: nested too deeply.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received: expected an object.")
    return body


def _asset_id(asset: str) -> str:
    for prefix in (PUBLIC_PREFIX, LEGACY_PREFIX):
        if ("projects/" + asset).startswith(prefix):
            return ("projects/" + asset)[len(prefix) :]
    return asset


def _int_param(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ApiError(400, f"Invalid value for {name}: {query[name]!r}.") from None


def _page_token(token: str | None) -> int:
    if not token:
        return 0
    if not re.fullmatch(r"p\d+", token):
        raise ApiError(400, "Invalid page token.")
    return int(token[1:])


def _request_grid(raw: Any, image: EEImage) -> Grid:
    """The request's PixelGrid; without one, the first band's full native grid (as EE does)."""
    if not image.bands:
        raise ApiError(400, "The image has no bands.")
    if raw is None:
        native = image.bands[0].grid
        if native is not None and native.width:
            return native
        if native is not None and image.footprint is not None and not native.has_shear:
            # A bounded image in a projection (``reproject`` then ``clip``): the pixels covering its bounds.
            return region_grid(image.footprint, native.crs, native.transform)
        raise ApiError(
            400,
            "A grid is required for images without a fixed native grid (give a region, or clip the image).",
        )
    if not isinstance(raw, dict):
        raise ApiError(400, "grid must be an object.")
    dims = raw.get("dimensions") or {}
    affine = raw.get("affineTransform") or {}
    crs = raw.get("crsCode") or raw.get("crsWkt")
    if not crs:
        native = image.bands[0].grid or im.DEFAULT_GRID
        crs = native.crs
    try:
        resolve_crs(crs)
    except CRSError as exc:
        raise ApiError(400, f"Invalid grid CRS: {exc}") from None
    try:
        width, height = int(dims.get("width", 0)), int(dims.get("height", 0))
        transform = tuple(
            float(affine.get(k, 0.0))
            for k in ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
        )
    except (TypeError, ValueError):
        raise ApiError(400, "Invalid grid: dimensions and affineTransform must be numbers.") from None
    if width <= 0 or height <= 0:
        raise ApiError(400, "Invalid grid: dimensions must be positive.")
    if (transform[0] == 0 and transform[1] == 0) or (transform[4] == 0 and transform[3] == 0):
        raise ApiError(400, "Invalid grid: the affine transform is degenerate.")
    return Grid(crs=crs, transform=transform, width=width, height=height)  # type: ignore[arg-type]


@contextmanager
def serve(config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> Iterator[Emulator]:
    """Run an emulator on a background thread for the duration of a ``with`` block.

    >>> with serve() as emu:
    ...     ee.Initialize(credentials=None, project="demo", opt_url=emu.url)
    """
    emulator = Emulator(config, catalog)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
