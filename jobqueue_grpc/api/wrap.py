"""Rebuilding a gRPC method handler around a new behaviour, whatever the handler's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from jobqueue_grpc.domain.errors import MalformedRequest

Ctx = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    # A handler's behaviour: `(request or request iterator, context)` -> coroutine or async
    # generator.
    Behavior = Callable[..., Any]


class Malformed:
    """The request a unary method gets when its bytes do not parse: `error` says so. The call
    wrapper (interceptors.py) raises it before the method runs, so the error is mapped, logged
    and counted like any other."""

    __slots__ = ("error",)

    def __init__(self, error: MalformedRequest) -> None:
        self.error = error


def tolerant(
    deserialize: Callable[[bytes], Any] | None, streaming: bool
) -> Callable[[bytes], Any] | None:
    """`deserialize` that never lets a decoding error reach grpc, which would answer UNKNOWN
    with a traceback in the log. A unary request that does not parse becomes a `Malformed`; a
    streamed one raises MalformedRequest out of the request iterator, into the method and then
    the error mapping (a bad message mid-stream ends the stream with INVALID_ARGUMENT)."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = str(getattr(descriptor, "full_name", None) or getattr(owner, "__name__", "request"))

    def tolerant_deserialize(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:
            if streaming:
                raise MalformedRequest(name) from None
            return Malformed(MalformedRequest(name))

    return tolerant_deserialize


def rebuild(h: Handler, make: Callable[[Behavior], Behavior]) -> Handler:
    """A handler of `h`'s kind, with its serializer and a tolerant request deserializer, whose
    behaviour is `make(h's behaviour)`. Done once per method, never per call."""
    streaming = bool(h.request_streaming)
    kw = {
        "request_deserializer": tolerant(h.request_deserializer, streaming),
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
