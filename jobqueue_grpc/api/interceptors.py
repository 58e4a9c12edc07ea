"""The interceptor chain, as one interceptor. Per call, outermost first:

[trace span] -> observe (log + count) -> auth -> drain gate -> Lease stream limit -> error mapping.

The span (OpenTelemetry's gRPC instrumentation, telemetry.py) is there only when tracing is
configured; otherwise the chain is this one interceptor.

Observe is outermost so that it sees every call's final code, refusals by auth, the drain gate
and the stream limit included. Auth comes before anything that could run code or take a slot
for the caller.

Every layer used to be its own interceptor wrapping the handler in an async context manager:
five interceptor coroutines and four generator-based context managers a call, ~125 us of CPU on
a small machine. Now `intercept_service` looks the method up in a dict of handlers built on its
first call, decides auth and draining right there (answering with a refusing handler, also
built once), and the handler it returns runs the method inside one plain try/except.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from time import monotonic
from typing import TYPE_CHECKING, Any

import grpc

from jobqueue_grpc import metrics
from jobqueue_grpc.api import auth
from jobqueue_grpc.api.errors import PASSTHROUGH, abort, to_status
from jobqueue_grpc.api.wrap import Ctx, Malformed, rebuild
from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import errors as e
from jobqueue_grpc.logs import fields

if TYPE_CHECKING:
    from jobqueue_grpc.api.wrap import Behavior, Continuation, Handler

log = logging.getLogger("jobqueue_grpc.rpc")

_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN
# What context.code() may say -> the code: grpc.aio reports an unset code as None or as a bare
# int 0, and sometimes a set one as its int.
_CODES: dict[Any, grpc.StatusCode] = {None: _OK, 0: _OK}
for _c in grpc.StatusCode:
    _CODES[_c] = _c
    _CODES[_c.value[0]] = _c
_NAMES = {c: c.name for c in grpc.StatusCode}
_LEVELS = {c: logging.INFO for c in grpc.StatusCode}
_LEVELS[_OK] = logging.DEBUG
_LEVELS[grpc.StatusCode.INTERNAL] = _LEVELS[_UNKNOWN] = logging.WARNING


def _code(context: Ctx, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        return _CODES.get(context.code(), _UNKNOWN)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # GeneratorExit: a server stream closed because its client went away (WatchJob)
        return grpc.StatusCode.CANCELLED
    return _UNKNOWN


class DrainGate:
    """From the first moment of a graceful shutdown, new jobqueue calls get UNAVAILABLE
    (reason DRAINING) so clients retry on another replica; calls and streams already running
    carry on. Health and reflection stay open. Set `draining`; the interceptor reads it."""

    def __init__(self) -> None:
        self.draining = False
        closed = e.Unavailable("the server is shutting down; retry elsewhere", reason="DRAINING")
        self.status = to_status(closed)


class LeaseStreamLimit:
    """At most `limit` streaming WorkerService calls (Lease) at once; more: RESOURCE_EXHAUSTED
    (reason TOO_MANY_STREAMS), decided when the call starts, before any request is read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        full = e.ResourceExhausted(
            f"this server already holds {limit} Lease streams; try another replica",
            reason="TOO_MANY_STREAMS",
        )
        self.status = to_status(full)

    def around(self, fn: Behavior) -> Behavior:
        """`fn` holding a slot while it runs."""
        status = self.status
        if inspect.isasyncgenfunction(fn):

            async def gen(request: Any, context: Ctx) -> AsyncIterator[Any]:
                if self.open >= self.limit:
                    await context.abort(status.code, status.details, status.trailing_metadata)
                self.open += 1
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    self.open -= 1

            return gen

        async def call(request: Any, context: Ctx) -> Any:
            if self.open >= self.limit:
                await context.abort(status.code, status.details, status.trailing_metadata)
            self.open += 1
            try:
                return await fn(request, context)
            finally:
                self.open -= 1

        return call


class _Observer:
    """Counts, times and logs the calls of one method. `done` runs once at the end of each."""

    __slots__ = ("_counts", "_seconds", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        # The series metrics.rpc_handled writes, with their children kept: labels() costs
        # microseconds a call.
        self._seconds = metrics.RPC_SECONDS.labels(method)
        self._counts: dict[grpc.StatusCode, Any] = {}

    def done(self, context: Ctx, exc: BaseException | None, start: float) -> None:
        took = monotonic() - start
        code = _code(context, exc)
        count = self._counts.get(code)
        if count is None:
            count = self._counts[code] = metrics.RPCS.labels(self.method, _NAMES[code])
        count.inc()
        self._seconds.observe(took if took > 0.0 else 0.0)
        level = _LEVELS[code]
        if log.isEnabledFor(level):
            name = _NAMES[code]
            log.log(
                level,
                "rpc %s %s",
                self.method,
                name,
                extra=fields(
                    method=self.method,
                    code=name,
                    duration_ms=round(took * 1000, 3),
                    peer=context.peer(),
                ),
            )


def _observed(fn: Behavior, observer: _Observer, mapped: bool, parsed: bool = True) -> Behavior:
    """`fn` observed by `observer`; with `mapped`, exceptions escaping it end the call with the
    status errors.py maps them to (errors.abort). With `parsed`, a request that did not parse
    (wrap.Malformed, or MalformedRequest out of a request stream) is refused that way, whatever
    the method; refusals (auth, draining) keep their own status and leave it unread."""
    done = observer.done
    method = observer.method

    if inspect.isasyncgenfunction(fn):

        async def gen(request: Any, context: Ctx) -> AsyncIterator[Any]:
            start = monotonic()
            try:
                if parsed and request.__class__ is Malformed:
                    raise request.error
                async for item in fn(request, context):
                    yield item
            except BaseException as exc:
                if _maps(exc, mapped):
                    try:
                        await abort(context, exc, method)  # always raises
                    except BaseException as aborted:
                        done(context, aborted, start)
                        raise
                done(context, exc, start)
                raise
            done(context, None, start)

        return gen

    async def call(request: Any, context: Ctx) -> Any:
        start = monotonic()
        try:
            if parsed and request.__class__ is Malformed:
                raise request.error
            response = await fn(request, context)
        except BaseException as exc:
            if _maps(exc, mapped):
                try:
                    await abort(context, exc, method)  # always raises
                except BaseException as aborted:
                    done(context, aborted, start)
                    raise
            done(context, exc, start)
            raise
        done(context, None, start)
        return response

    return call


def _maps(exc: BaseException, mapped: bool) -> bool:
    """Whether `exc` ends the call through errors.abort."""
    if exc.__class__ is e.MalformedRequest:
        return True
    return mapped and isinstance(exc, Exception) and not isinstance(exc, PASSTHROUGH)


def _refusing(fn: Behavior, status: grpc.Status) -> Behavior:
    """A behaviour of `fn`'s kind that ends the call with `status` and runs nothing."""

    async def deny(request: Any, context: Ctx) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def deny_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # pragma: no cover - makes this an async generator

    return deny_stream if inspect.isasyncgenfunction(fn) else deny


class _Method:
    """What the interceptor built for one method: its handler and, made on first need, the
    handlers that refuse it (same observer: refusals are logged and counted too)."""

    __slots__ = ("_refusals", "allowed", "gated", "handler", "inner", "observer")

    def __init__(self, method: str, inner: Handler, limit: LeaseStreamLimit, gated: bool) -> None:
        self.inner = inner
        self.observer = _Observer(method)
        self.gated = gated  # the drain gate applies
        self.allowed = auth.rule(method)
        self._refusals: dict[str, Handler] = {}
        ours = method.startswith("/jobqueue.")
        lease = inner.stream_stream is not None and method.startswith("/jobqueue.v1.WorkerService/")

        def make(fn: Behavior) -> Behavior:
            return _observed(limit.around(fn) if lease else fn, self.observer, ours)

        self.handler = rebuild(inner, make)

    def refused(self, status: grpc.Status) -> Handler:
        """The handler that answers every call with `status` (cached by its message)."""
        key = f"{status.code.name}\n{status.details}"
        handler = self._refusals.get(key)
        if handler is None:
            observer = self.observer

            def make(fn: Behavior) -> Behavior:
                return _observed(_refusing(fn, status), observer, False, parsed=False)

            handler = self._refusals[key] = rebuild(self.inner, make)
        return handler


class Interceptor(grpc.aio.ServerInterceptor):
    """The whole chain (see the module doc). `creds` empty: auth is off."""

    def __init__(
        self,
        creds: list[auth.Credential],
        drain: DrainGate | None,
        limit: LeaseStreamLimit,
    ) -> None:
        self.creds = creds
        self.drain = drain
        self.limit = limit
        self._methods: dict[str, _Method] = {}
        self._refusal_status: dict[str, grpc.Status] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        m = self._methods.get(method)
        if m is None:
            # Services are all added before the server starts: a method's handler never
            # changes, so it is looked up and wrapped once. Unknown methods are not kept.
            inner = await continuation(handler_call_details)
            if inner is None:
                return None
            gated = self.drain is not None and method.startswith("/jobqueue.")
            m = self._methods[method] = _Method(method, inner, self.limit, gated)
        if self.creds:
            err = auth.refusal(
                method, m.allowed, handler_call_details.invocation_metadata, self.creds
            )
            if err is not None:
                return m.refused(self._status_of(err))
        drain = self.drain
        if m.gated and drain is not None and drain.draining:
            return m.refused(drain.status)
        return m.handler

    def _status_of(self, err: e.JobQueueError) -> grpc.Status:
        """to_status(err), kept by message: auth's refusals are a handful of fixed texts."""
        key = f"{err.reason}\n{err.message}"
        status = self._refusal_status.get(key)
        if status is None:
            status = self._refusal_status[key] = to_status(err)
        return status


def build(
    settings: Settings, drain: DrainGate | None = None, tracer_provider: Any | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors in order: ours (one), and only with a `tracer_provider` (an
    OpenTelemetry SDK TracerProvider; telemetry.py), before it the gRPC instrumentation's span
    per call, outermost so that refusals are traced too. Auth is off when no token is
    configured."""
    creds = auth.load_credentials(settings)
    chain: list[grpc.aio.ServerInterceptor] = [
        Interceptor(creds, drain, LeaseStreamLimit(settings.max_lease_streams))
    ]
    if tracer_provider is not None:
        from jobqueue_grpc import telemetry  # OpenTelemetry is imported only when tracing

        chain.insert(0, telemetry.server_interceptor(tracer_provider))
    return chain
