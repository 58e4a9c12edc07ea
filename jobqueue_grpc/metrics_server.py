"""`/metrics` over plain HTTP on the event loop: no thread, no web framework.

At every scrape the queue-depth gauges are read from the database first, so they are as fresh as
the scrape; if the database does not answer, the scrape still succeeds with the last values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from jobqueue_grpc import metrics
from jobqueue_grpc._aio import wait, within
from jobqueue_grpc.config import Settings
from jobqueue_grpc.store import Store, stats

log = logging.getLogger(__name__)

_MAX_HEADER = 16 * 1024
_TIMEOUT = 10.0


class MetricsServer:
    def __init__(
        self, host: str, port: int, refresh: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.refresh = refresh
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await wait(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await within(reader.readuntil(b"\r\n\r\n"), _TIMEOUT)
            if len(head) > _MAX_HEADER:
                raise ValueError("header too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, b"method not allowed\n", "text/plain")
            elif path != "/metrics":
                await self._reply(writer, 404, b"see /metrics\n", "text/plain")
            else:
                if self.refresh is not None:
                    try:
                        await within(self.refresh(), _TIMEOUT)
                    except Exception as exc:
                        log.warning("metrics: queue depth not refreshed: %s", type(exc).__name__)
                body = generate_latest(REGISTRY)
                await self._reply(
                    writer, 200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST
                )
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()


async def start_for(settings: Settings, store: Store) -> MetricsServer | None:
    """The server's /metrics, with queue depth read from `store` at each scrape; None when off."""
    if settings.metrics_port == 0:
        return None

    async def refresh() -> None:
        depth, dead, named = await stats.queue_depth(store.pool)
        metrics.set_queue_depth(depth, dead, named)

    srv = MetricsServer(settings.metrics_host, settings.metrics_port, refresh)
    await srv.start()
    return srv
