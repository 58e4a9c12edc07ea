"""Helpers for the hardening tests: generic calls to any method, a freezing TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

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


class Proxy:
    """A loopback TCP proxy in front of a server that counts the client's HTTP/2 PING frames
    (plaintext only) and can freeze: stop forwarding both ways, as a dead peer or a cut cable."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.client_pings = 0
        self.frozen = asyncio.Event()
        self.upstream_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        await self._server.wait_closed()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [cw, uw]
        for coro in (self._up(cr, uw), self._down(ur, cw)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        seen_preface = False
        while data := await reader.read(65536):
            if self.frozen.is_set():
                return  # stop reading the client: TCP backs up, nothing reaches the server
            buf += data
            if not seen_preface and len(buf) >= len(self.PREFACE):
                buf, seen_preface = buf[len(self.PREFACE) :], True
            while seen_preface and len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags = buf[3], buf[4]
                if ftype == 0x6 and not flags & 0x1:
                    self.client_pings += 1
                buf = buf[9 + length :]
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.frozen.is_set():
                writer.write(data)
                await writer.drain()
        self.upstream_closed.set()
        writer.close()
