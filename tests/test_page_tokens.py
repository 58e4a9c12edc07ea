"""Page tokens end to end: signed with a key kept in the database, so every replica accepts
every other's tokens and nobody else can make one."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest

from jobqueue_grpc.domain import pagination
from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    dead_letter_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests import conftest
from tests.conftest import ServerFactory
from tests.test_job_service import fails

pb = job_service_pb2


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def _first_page(stub: job_service_pb2_grpc.JobServiceStub) -> str:
    await stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=[pb.EnqueueRequest(kind="k")] * 3))
    first = await stub.ListJobs(pb.ListJobsRequest(page_size=1))
    assert first.next_page_token
    return first.next_page_token


async def test_made_up_and_tampered_tokens_are_refused(channel: grpc.aio.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    genuine = await _first_page(stub)
    raw = base64.urlsafe_b64decode(genuine + "=" * (-len(genuine) % 4))
    body = json.loads(raw[: -pagination.MAC_BYTES])
    cursor = {"t": datetime.now(UTC).isoformat(), "k": str(uuid.uuid4()), "f": body["f"]}
    made_up = [
        # the pre-signing format, well formed, for the right filters
        _b64(json.dumps(cursor).encode()),
        # the genuine cursor moved on, old MAC kept
        _b64(json.dumps({**body, "k": str(uuid.uuid4())}).encode() + raw[-pagination.MAC_BYTES :]),
        # one bit of the MAC flipped
        _b64(raw[:-1] + bytes([raw[-1] ^ 1])),
        # signed with a key of our own
        pagination.encode(datetime.now(UTC), uuid.uuid4(), ("", "", 0), b"x" * 32),
        # what used to give INTERNAL
        _b64(json.dumps({"t": cursor["t"], "k": 5, "f": body["f"]}).encode()),
        _b64(b"[" * 300 + b"]" * 300),
        "A" * 100_000,
    ]
    for token in made_up:
        f = await fails(stub.ListJobs(pb.ListJobsRequest(page_token=token)))
        assert f.code == grpc.StatusCode.INVALID_ARGUMENT, token[:40]
        assert f.reason == "INVALID_PAGE_TOKEN"
    rest = await stub.ListJobs(pb.ListJobsRequest(page_size=5, page_token=genuine))
    assert len(rest.jobs) == 2


@pytest.fixture
async def second_store(db_url: str) -> AsyncIterator[Store]:
    """A store of its own: another replica shares nothing with the first but the database."""
    s = await Store.connect(db_url, min_size=1, max_size=2)
    yield s
    await s.close()


async def test_a_token_from_one_replica_is_accepted_by_another(
    make_server: ServerFactory, second_store: Store, db_url: str
) -> None:
    one = await make_server()
    two = JobQueueServer(conftest.test_settings(db_url), second_store)
    await two.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as ch1,
            grpc.aio.insecure_channel(f"127.0.0.1:{two.port}") as ch2,
        ):
            token = await _first_page(job_service_pb2_grpc.JobServiceStub(ch1))
            rest = await job_service_pb2_grpc.JobServiceStub(ch2).ListJobs(
                pb.ListJobsRequest(page_size=5, page_token=token)
            )
            assert len(rest.jobs) == 2
            # dead letters: the same key (an empty list has no token to pass on, so a made-up
            # one must be refused there too)
            dl = dead_letter_service_pb2_grpc.DeadLetterServiceStub(ch2)
            f = await fails(
                dl.ListDeadLetters(dead_letter_service_pb2.ListDeadLettersRequest(page_token=token))
            )
            assert f.reason == "INVALID_PAGE_TOKEN"  # issued for other filters
    finally:
        await two.stop()
    key = await second_store.page_token_key()
    assert len(key) == 32 and key == await one.store.page_token_key()


async def test_dead_letter_pages_are_signed_too(server: JobQueueServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        dl = dead_letter_service_pb2_grpc.DeadLetterServiceStub(ch)
        made_up = pagination.encode(
            datetime.now(UTC), uuid.uuid4(), ("dead_letters", None, None, None, None), b"y" * 32
        )
        f = await fails(
            dl.ListDeadLetters(dead_letter_service_pb2.ListDeadLettersRequest(page_token=made_up))
        )
        assert f.reason == "INVALID_PAGE_TOKEN"
