"""Rebuilding a gRPC method handler around a new behaviour, whatever the handler's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    # A handler's behaviour: `(request or request iterator, context)` -> coroutine or async
    # generator.
    Behavior = Callable[..., Any]


def rebuild(h: Handler, make: Callable[[Behavior], Behavior]) -> Handler:
    """A handler of `h`'s kind, with its (de)serializers, whose behaviour is
    `make(h's behaviour)`. Done once per method, never per call."""
    kw = {
        "request_deserializer": h.request_deserializer,
        "response_serializer": h.response_serializer,
    }
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(make(h.unary_unary), **kw)
    if h.unary_stream:
        return grpc.unary_stream_rpc_method_handler(make(h.unary_stream), **kw)
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(make(h.stream_unary), **kw)
    assert h.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(make(h.stream_stream), **kw)
