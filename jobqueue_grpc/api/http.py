"""The HTTP port: Connect (JSON or binary, curl-friendly) and gRPC-Web for every unary and
server-streaming RPC, and the dashboard at `/`. The Lease stream stays gRPC-only.

The protocols are the `connectrpc` package's (connect-python, the Connect project's own Python
implementation, held to its conformance suite), run as an ASGI application under uvicorn. No
second code path: each call goes through the very handler the gRPC server runs, as
`interceptors.Interceptor` built it (observe -> auth -> drain gate -> error mapping, the same
metrics and logs), with `HttpContext` standing in for grpc's ServicerContext. An error ends the
handler through `context.abort` with the status errors.py built, and leaves as a Connect error
carrying the same google.rpc details (ErrorInfo, BadRequest), base64 in the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import uvicorn
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_codecs
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor, message_factory
from google.rpc import status_pb2
from protobuf.wkt import Any as PyAny

from jobqueue_grpc.config import Settings

if TYPE_CHECKING:
    from jobqueue_grpc.api.interceptors import Interceptor
    from jobqueue_grpc.api.wrap import Handler

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

LEASE = "/jobqueue.v1.WorkerService/Lease"
# Request headers a cross-origin page may send (Connect, gRPC-Web, auth).
CORS_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, "
    "x-grpc-web, x-user-agent"
)
CORS_EXPOSE = "grpc-status, grpc-message, grpc-status-details-bin"
_CODES = {c: Code[c.name] for c in grpc.StatusCode if c.name in Code.__members__}
_CODES[grpc.StatusCode.CANCELLED] = Code.CANCELED


class _Capture:
    """Stands in for a grpc server while `add_*Servicer_to_server` registers its handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, _handlers: Iterable[object]) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for name, h in handlers.items():
            self.handlers[f"/{service}/{name}"] = h


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class HttpContext:
    """What the servicers and the interceptor chain use of grpc.aio.ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing_metadata)
        raise grpc.aio.AbortError(details)

    def error(self) -> ConnectError:
        """The status the call was aborted with, as a Connect error with the same details."""
        details: list[ErrorDetail] = []
        for key, value in self._trailing:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                details = [
                    ErrorDetail(PyAny(type_url=d.type_url, value=d.value)) for d in status.details
                ]
        code = _CODES.get(self._code or grpc.StatusCode.UNKNOWN, Code.UNKNOWN)
        return ConnectError(code, self._details, details)


def _message_class(desc: descriptor.Descriptor) -> type[Any]:
    return message_factory.GetMessageClass(desc)


class Calls:
    """The endpoints of every service the gRPC server runs, through its interceptor."""

    def __init__(
        self, interceptor: Interceptor, services: Iterable[tuple[Any, Callable[..., None]]]
    ):
        self.interceptor = interceptor
        capture = _Capture()
        for servicer, add in services:
            add(servicer, capture)
        self.raw = capture.handlers
        self.endpoints: dict[str, Any] = {}  # path -> connectrpc Endpoint

    def add_service(self, service: descriptor.ServiceDescriptor) -> None:
        for m in service.methods:
            path = f"/{service.full_name}/{m.name}"
            if path not in self.raw or m.client_streaming:
                continue  # Lease (bidirectional) stays on gRPC
            info: MethodInfo[Any, Any] = MethodInfo(
                name=m.name,
                service_name=service.full_name,
                input=_message_class(m.input_type),
                output=_message_class(m.output_type),
                idempotency_level=IdempotencyLevel.UNKNOWN,
                stream_type=StreamType.SERVER_STREAM if m.server_streaming else StreamType.UNARY,
            )
            if m.server_streaming:
                self.endpoints[path] = Endpoint.server_stream(info, self._stream(path))
            else:
                self.endpoints[path] = Endpoint.unary(info, self._unary(path))

    async def _handler(self, path: str, metadata: tuple[tuple[str, str], ...]) -> Handler:
        raw = self.raw[path]

        async def continuation(_details: Any) -> Handler:
            return raw

        handler = await self.interceptor.intercept_service(
            continuation,
            _CallDetails(path, metadata),  # type: ignore[arg-type]
        )
        assert handler is not None
        return handler

    def _unary(self, path: str) -> Callable[[Any, RequestContext[Any, Any]], Any]:
        async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            metadata = _metadata(ctx)
            context = HttpContext(metadata, _peer(ctx))
            handler = await self._handler(path, metadata)
            assert handler.unary_unary is not None
            try:
                return await handler.unary_unary(request, context)  # type: ignore[arg-type]
            except grpc.aio.AbortError:
                raise context.error() from None

        return call

    def _stream(self, path: str) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
        async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            metadata = _metadata(ctx)
            context = HttpContext(metadata, _peer(ctx))
            handler = await self._handler(path, metadata)
            assert handler.unary_stream is not None
            items: AsyncIterator[Any] = handler.unary_stream(request, context)  # type: ignore[arg-type,assignment]
            try:
                async for item in items:
                    yield item
            except grpc.aio.AbortError:
                raise context.error() from None

        return call


def _metadata(ctx: RequestContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in ctx.request_headers.items())


def _peer(ctx: RequestContext[Any, Any]) -> str:
    return f"http:{ctx.client_address or '?'}"


class _Connect(ConnectASGIApplication[object]):
    def __init__(self, endpoints: dict[str, Any], read_max_bytes: int) -> None:
        super().__init__(
            service=object(),
            endpoints=lambda _service: endpoints,
            read_max_bytes=read_max_bytes,
            codecs=google_protobuf_codecs(),
        )

    @property
    def path(self) -> str:
        return "/"


class Static:
    """The dashboard's built files (jobqueue_grpc/dashboard/, `make dashboard`), in memory."""

    TYPES = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".png": "image/png",
        ".svg": "image/svg+xml",
        ".map": "application/json",
    }

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        root = resources.files("jobqueue_grpc") / "dashboard"
        if root.is_dir():
            for entry in root.iterdir():
                suffix = "." + entry.name.rsplit(".", 1)[-1]
                if entry.is_file() and suffix in self.TYPES:
                    self.files["/" + entry.name] = (entry.read_bytes(), self.TYPES[suffix])
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]

    def get(self, path: str) -> tuple[bytes, str] | None:
        return self.files.get(path)


class HttpApp:
    """The ASGI application: RPCs under /jobqueue.v1.*, the dashboard elsewhere, CORS if set."""

    def __init__(self, calls: Calls, settings: Settings) -> None:
        self.connect = _Connect(calls.endpoints, settings.max_message_bytes)
        self.static = Static()
        origins = [o.strip() for o in settings.http_cors_origins.split(",") if o.strip()]
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def _allowed(self, scope: Scope) -> str | None:
        origin = _header(scope, b"origin")
        if origin is None or not (self.any_origin or origin in self.origins):
            return None
        return origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        origin = self._allowed(scope)
        if method == "OPTIONS" and origin is not None:
            await _reply(send, 204, b"", "text/plain", _preflight(origin))
            return
        cors = _cors(origin) if origin is not None else []
        if path.startswith("/jobqueue."):
            if path == LEASE:
                body = b'{"code":"unimplemented","message":"Lease is gRPC-only: use the gRPC port"}'
                await _reply(send, 501, body, "application/json", cors)
                return

            async def send_cors(msg: dict[str, Any]) -> None:
                if cors and msg["type"] == "http.response.start":
                    msg = {**msg, "headers": [*msg.get("headers", []), *cors]}
                await send(msg)

            await self.connect(scope, receive, send_cors)
            return
        found = self.static.get(path) if method in ("GET", "HEAD") else None
        if found is None:
            await _reply(send, 404, b"not found\n", "text/plain", cors)
            return
        body, ctype = found
        headers = [(b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")]
        await _reply(send, 200, body if method == "GET" else b"", ctype, headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v).decode("latin-1")
    return None


def _cors(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-expose-headers", CORS_EXPOSE.encode()),
        (b"vary", b"origin"),
    ]


def _preflight(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        *_cors(origin),
        (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
        (b"access-control-allow-headers", CORS_HEADERS.encode()),
        (b"access-control-max-age", b"7200"),
    ]


async def _reply(
    send: Send, status: int, body: bytes, ctype: str, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Uvicorn(uvicorn.Server):
    """uvicorn, minus its signal handlers: `serve` (server.run) owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving `app` on settings.host:http_port (TLS as the gRPC port has it)."""

    def __init__(self, app: HttpApp, settings: Settings) -> None:
        self.settings = settings
        kw: dict[str, Any] = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            kw = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca is not None:
                kw |= {
                    "ssl_ca_certs": str(settings.tls_client_ca),
                    "ssl_cert_reqs": ssl.CERT_REQUIRED,
                }
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=settings.max_concurrent_rpcs,
            timeout_graceful_shutdown=1,
            **kw,
        )
        self.server = _Uvicorn(config)
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.http_port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name="http")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on port {self.port} stopped at start")
            if loop.time() > deadline:
                raise OSError(f"the HTTP server on port {self.port} did not start")
            await asyncio.sleep(0.01)
        log.info(
            "serving HTTP (Connect, gRPC-Web, dashboard) on %s:%d", self.settings.host, self.port
        )
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)
        self._task = None
