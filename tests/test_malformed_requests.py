"""Request bodies that do not parse: INVALID_ARGUMENT (MALFORMED_REQUEST) with google.rpc details,
one log line and no traceback, counted in the RPC metrics; on unary calls and mid-stream on Lease.
Sent as raw bytes through a generic channel call, as a hostile client would."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
import pytest

from jobqueue_grpc import metrics
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.server import JobQueueServer
from tests.conftest import ServerFactory
from tests.support import error_info, wait_until

ENQUEUE = "/jobqueue.v1.JobService/Enqueue"
LEASE = "/jobqueue.v1.WorkerService/Lease"
HEALTH = "/grpc.health.v1.Health/Check"


def _deep_struct(depth: int) -> bytes:
    """An EnqueueRequest whose payload Struct nests `depth` levels (protobuf stops at 100)."""
    inner = b""
    for _ in range(depth):
        # Value{struct_value: Struct{fields: {"a": <inner>}}}
        entry = b"\x0a\x01a" + b"\x12" + _len(inner) + inner
        struct = b"\x0a" + _len(entry) + entry
        inner = b"\x2a" + _len(struct) + struct
    # EnqueueRequest{kind: "k", payload: Struct{fields: {"a": Value}}}
    entry = b"\x0a\x01a" + b"\x12" + _len(inner) + inner
    payload = b"\x0a" + _len(entry) + entry
    return b"\x12\x01k" + b"\x1a" + _len(payload) + payload


def _len(b: bytes) -> bytes:
    n, out = len(b), b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


BAD_BODIES = {
    "random bytes": b"\xff\xfe\xfd\xfc\x00\x01garbage\x99",
    "invalid utf-8 in kind": b"\x12\x02\xc3\x28",
    "truncated field": b"\x12\x10abc",
    "struct nested too deep": _deep_struct(150),
}


def _rpcs(method: str, code: str) -> float:
    value: float = metrics.RPCS.labels(method, code)._value.get()
    return value


async def _counted(method: str, n: float) -> None:
    async def reached() -> bool:
        return _rpcs(method, "INVALID_ARGUMENT") >= n

    await wait_until(reached, within=10)
    assert _rpcs(method, "INVALID_ARGUMENT") == n


async def _raw_unary(server: JobQueueServer, method: str, body: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method)(body, timeout=10)
    return err.value


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_unparsable_unary_request_is_invalid_argument(
    server: JobQueueServer,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
) -> None:
    before = _rpcs(ENQUEUE, "INVALID_ARGUMENT")
    with caplog.at_level(logging.INFO):
        err = await _raw_unary(server, ENQUEUE, body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info = error_info(err)
    assert (info.reason, info.domain) == ("MALFORMED_REQUEST", "jobqueue-grpc")
    assert "EnqueueRequest" in (err.details() or "")
    # The server counts and logs the call just after sending its status: wait for it.
    await _counted(ENQUEUE, before + 1)
    # One line, in the RPC log, and no traceback anywhere.
    assert [r for r in caplog.records if r.exc_info] == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [f"rpc {ENQUEUE} INVALID_ARGUMENT"]
    assert await db.fetchval("SELECT count(*) FROM jobqueue.jobs") == 0


async def test_unparsable_health_check_is_invalid_argument(server: JobQueueServer) -> None:
    err = await _raw_unary(server, HEALTH, b"\xff\xff\xff")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).reason == "MALFORMED_REQUEST"


async def test_without_a_token_garbage_is_still_unauthenticated(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(auth_tokens="producer:tok-123")
    err = await _raw_unary(srv, ENQUEUE, b"\xff\xff\xff")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("opened", [True, False], ids=["mid-stream", "first message"])
async def test_bad_message_on_a_lease_stream_ends_it_with_invalid_argument(
    server: JobQueueServer, caplog: pytest.LogCaptureFixture, opened: bool
) -> None:
    before = _rpcs(LEASE, "INVALID_ARGUMENT")
    opening = w.LeaseRequest(open=w.LeaseOpen(worker_id="raw", queues=["default"]))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with caplog.at_level(logging.INFO):
            call = ch.stream_stream(LEASE)()
            if opened:
                await call.write(opening.SerializeToString())
            await call.write(b"\x12\x05\xff")  # `complete`, truncated
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with asyncio.timeout(10):
                    async for _ in call:
                        pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert error_info(err.value).reason == "MALFORMED_REQUEST"
    await _counted(LEASE, before + 1)
    assert [r for r in caplog.records if r.exc_info] == []
    assert f"rpc {LEASE} INVALID_ARGUMENT" in [r.getMessage() for r in caplog.records]


async def test_internal_errors_log_the_method(
    server: JobQueueServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault in the server (here injected into the store) is INTERNAL, logged with the method
    it happened in."""

    async def broken() -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(server.store.queues, "list", broken)
    with caplog.at_level(logging.ERROR, logger="jobqueue_grpc.api.errors"):
        err = await _raw_unary(server, "/jobqueue.v1.QueueService/ListQueues", b"")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert error_info(err).reason == "INTERNAL"
    [record] = [r for r in caplog.records if r.name == "jobqueue_grpc.api.errors"]
    assert record.getMessage() == "internal error in /jobqueue.v1.QueueService/ListQueues"
