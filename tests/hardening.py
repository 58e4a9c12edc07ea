"""Helpers for the hardening tests: generic calls to any method, ErrorInfo, polling, free ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.rpc import error_details_pb2, status_pb2

from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    job_service_pb2,
    queue_service_pb2,
    worker_service_pb2,
)

SERVICES: dict[str, descriptor.ServiceDescriptor] = {
    d.full_name: d
    for d in (
        job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
        worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
        dead_letter_service_pb2.DESCRIPTOR.services_by_name["DeadLetterService"],
        queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"],
    )
}


def all_methods() -> list[tuple[str, descriptor.MethodDescriptor]]:
    return [(name, m) for name, s in SERVICES.items() for m in s.methods]


async def call_empty(
    channel: grpc.aio.Channel,
    m: descriptor.MethodDescriptor,
    metadata: list[tuple[str, str]] | None = None,
) -> grpc.StatusCode:
    """Calls `m` with an empty request (streams: no messages) and returns the final code."""
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    path = f"/{m.containing_service.full_name}/{m.name}"
    kw: dict[str, Any] = {
        "request_serializer": req_cls.SerializeToString,
        "response_deserializer": resp_cls.FromString,
    }
    md = tuple(metadata or ())
    try:
        if m.client_streaming and m.server_streaming:
            call = channel.stream_stream(path, **kw)(iter(()), metadata=md, timeout=10)
            async for _ in call:
                pass
        elif m.client_streaming:
            await channel.stream_unary(path, **kw)(iter(()), metadata=md, timeout=10)
        elif m.server_streaming:
            async for _ in channel.unary_stream(path, **kw)(req_cls(), metadata=md, timeout=10):
                pass
        else:
            await channel.unary_unary(path, **kw)(req_cls(), metadata=md, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo inside the rich status of a failed call (AssertionError if absent)."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for d in status.details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in {err.code()} {err.details()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 15.0, interval: float = 0.05
) -> None:
    """Polls `check` until it is true; fails the test at the deadline."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)
