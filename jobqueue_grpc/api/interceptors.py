"""The interceptor chain, outermost first: observe (log + count) -> auth -> limits -> errors.

Observe is outermost so that it sees every call's final code, refusals by auth and limits
included. Auth comes before anything that could run code or take a slot for the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from jobqueue_grpc import metrics
from jobqueue_grpc.api.auth import AuthInterceptor, load_credentials
from jobqueue_grpc.api.errors import ErrorInterceptor, to_status
from jobqueue_grpc.api.wrap import Ctx, WrapCache, wrap
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import errors as e
from jobqueue_grpc.logs import fields

log = logging.getLogger("jobqueue_grpc.rpc")


if TYPE_CHECKING:
    from jobqueue_grpc.api.wrap import Around, Continuation, Handler


def _code(context: Ctx, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        # grpc.aio reports an unset code as None or as a bare int 0.
        if isinstance(code, grpc.StatusCode):
            return code
        if code:
            return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class ObserveInterceptor(grpc.aio.ServerInterceptor):
    """Logs each call (method, code, duration, peer) and counts it by method and code."""

    def __init__(self) -> None:
        self._cache = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._cache.get(method, handler, lambda: wrap(handler, _observer(method)))


def _observer(method: str) -> Around:
    """The context manager that times, counts and logs each call of `method`."""

    @contextlib.asynccontextmanager
    async def observed(context: Ctx) -> AsyncIterator[None]:
        start = time.monotonic()
        exc: BaseException | None = None
        try:
            yield
        except BaseException as err:
            exc = err
            raise
        finally:
            took = time.monotonic() - start
            code = _code(context, exc)
            metrics.rpc_handled(method, code.name, took)
            level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                level = logging.WARNING
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "rpc %s %s",
                    method,
                    code.name,
                    extra=fields(
                        method=method,
                        code=code.name,
                        duration_ms=round(took * 1000, 3),
                        peer=context.peer(),
                    ),
                )

    return observed


class LeaseStreamLimit(grpc.aio.ServerInterceptor):
    """At most `limit` streaming WorkerService calls (Lease) at once; more: RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._cache = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not handler.stream_stream
            or not method.startswith("/jobqueue.v1.WorkerService/")
        ):
            return handler
        full = e.ResourceExhausted(
            f"this server already holds {self.limit} Lease streams; try another replica",
            reason="TOO_MANY_STREAMS",
        )
        status = to_status(full)

        @contextlib.asynccontextmanager
        async def slot(context: Ctx) -> AsyncIterator[None]:
            # Decided when the call starts, before any request is read or any row touched.
            if self.open >= self.limit:
                await context.abort(status.code, status.details, status.trailing_metadata)
            self.open += 1
            try:
                yield
            finally:
                self.open -= 1

        return self._cache.get(method, handler, lambda: wrap(handler, slot))


class DrainGate(grpc.aio.ServerInterceptor):
    """From the first moment of a graceful shutdown, new jobqueue calls get UNAVAILABLE
    (reason DRAINING) so clients retry on another replica; calls and streams already running
    carry on. Health and reflection stay open."""

    def __init__(self) -> None:
        self.draining = False
        closed = e.Unavailable("the server is shutting down; retry elsewhere", reason="DRAINING")
        self._status = to_status(closed)
        self._cache = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/jobqueue."):
            return handler
        status = self._status

        @contextlib.asynccontextmanager
        async def gate(context: Ctx) -> AsyncIterator[None]:
            if self.draining:
                await context.abort(status.code, status.details, status.trailing_metadata)
            yield

        method = handler_call_details.method
        return self._cache.get(method, handler, lambda: wrap(handler, gate))


def build(settings: Settings, drain: DrainGate | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors in order. Auth is left out when no token is configured."""
    chain: list[grpc.aio.ServerInterceptor] = [ObserveInterceptor()]
    creds = load_credentials(settings)
    if creds:
        chain.append(AuthInterceptor(creds))
    if drain is not None:
        chain.append(drain)
    chain += [LeaseStreamLimit(settings.max_lease_streams), ErrorInterceptor()]
    return chain
