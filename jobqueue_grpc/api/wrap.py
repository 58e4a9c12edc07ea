"""Wrapping a gRPC method handler, whatever its shape, so interceptors stay short."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    # Wraps a call: an async context manager around the handler's whole run.
    Around = Callable[[Ctx], contextlib.AbstractAsyncContextManager[None]]


def wrap(h: Handler, around: Around) -> Handler:
    """`h` with every call run inside `around(context)`, whatever the handler's shape."""

    def unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: Ctx) -> Any:
            async with around(context):
                return await fn(request, context)

        return behavior

    def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(fn):
            return unary(fn)

        async def gen(request: Any, context: Ctx) -> AsyncIterator[Any]:
            async with around(context):
                async for item in fn(request, context):
                    yield item

        return gen

    kw = {
        "request_deserializer": h.request_deserializer,
        "response_serializer": h.response_serializer,
    }
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(h.unary_unary), **kw)
    if h.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(h.unary_stream), **kw)
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(h.stream_unary), **kw)
    assert h.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(h.stream_stream), **kw)


class WrapCache:
    """Wrapping a handler builds closures and a new handler; done once per method, not per call.

    An entry is reused while the inner handler is the same object (the interceptors further in
    cache theirs too, so after the first call every layer hands back what it built then).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, inner: Handler, make: Callable[[], Handler]) -> Handler:
        hit = self._entries.get(method)
        if hit is not None and hit[0] is inner:
            return hit[1]
        wrapped = make()
        self._entries[method] = (inner, wrapped)
        return wrapped
