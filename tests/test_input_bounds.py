"""Values out of bounds: huge invalid values are quoted short in errors, never echoed whole;
times PostgreSQL cannot hold are refused before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from jobqueue_grpc.domain.validation import quote, time_violation
from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    dead_letter_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
)
from tests.test_job_service import MiB, count, fails

pb = job_service_pb2


def trailer_bytes(err: grpc.aio.AioRpcError) -> int:
    return len(err.details() or "") + sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())


def test_quote_keeps_short_values_and_cuts_long_ones() -> None:
    assert quote("abc") == "'abc'"
    long = quote("x" * MiB)
    assert long == f"{'x' * 64!r}… ({MiB} chars)"


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


async def _raises(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_a_one_mib_queue_name_gets_a_small_invalid_argument(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    req = pb.EnqueueRequest(kind="k", queue="Q" * MiB)
    err = await _raises(stub.Enqueue(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert trailer_bytes(err) < 2048
    f = await fails(stub.Enqueue(req))
    assert f.reason == "INVALID_ARGUMENT"
    assert f"({MiB} chars)" in f.violations["queue"]
    assert await count(db) == 0


async def test_a_one_mib_kind_gets_a_small_invalid_argument(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    err = await _raises(stub.Enqueue(pb.EnqueueRequest(kind="K" * MiB)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer_bytes(err) < 2048


@pytest.mark.parametrize("method", ["GetJob", "CancelJob"])
async def test_a_ten_mib_id_is_not_echoed(
    stub: job_service_pb2_grpc.JobServiceStub, method: str
) -> None:
    req = (pb.GetJobRequest if method == "GetJob" else pb.CancelJobRequest)(id="x" * (10 * MiB))
    err = await _raises(getattr(stub, method)(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer_bytes(err) < 2048
    f = await fails(getattr(stub, method)(req))
    assert f.reason == "MALFORMED_ID"


async def test_other_services_quote_short(channel: grpc.aio.Channel) -> None:
    dl = dead_letter_service_pb2_grpc.DeadLetterServiceStub(channel)
    err = await _raises(
        dl.GetDeadLetter(dead_letter_service_pb2.GetDeadLetterRequest(job_id="x" * MiB))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer_bytes(err) < 2048
    f = dead_letter_service_pb2.DeadLetterFilter(queue="Q" * MiB, kind="K" * MiB)
    err = await _raises(
        dl.ListDeadLetters(dead_letter_service_pb2.ListDeadLettersRequest(filter=f))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer_bytes(err) < 2048
    qs = queue_service_pb2_grpc.QueueServiceStub(channel)
    err = await _raises(qs.PauseQueue(queue_service_pb2.PauseQueueRequest(name="Q" * MiB)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and trailer_bytes(err) < 2048


async def test_a_batch_of_bad_names_still_gets_invalid_argument(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    reqs = [pb.EnqueueRequest(kind="k", queue="Q" * 1000) for _ in range(1000)]
    err = await _raises(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert await count(db) == 0
    f = await fails(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs)))
    assert "1000 violations; the first 10 are listed" in f.message
    assert list(f.violations) == [f"jobs[{i}].queue" for i in range(10)]


# -- times --------------------------------------------------------------------------------------
def ts(text: str) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromJsonString(text)
    return t


BAD_TIMES = {
    "the smallest Timestamp": "0001-01-01T00:00:00Z",
    "the largest Timestamp": "9999-12-31T23:59:59.999999999Z",
    "datetime.max": "9999-12-31T23:59:59.999999Z",
    "before 1970": "1969-12-31T23:59:59Z",
}


def test_the_time_range_is_a_domain_rule() -> None:
    assert time_violation("t", datetime(1970, 1, 1, tzinfo=UTC)) is None
    assert time_violation("t", datetime(2030, 1, 1, tzinfo=UTC)) is None
    assert time_violation("t", datetime.min.replace(tzinfo=UTC)) is not None
    assert time_violation("t", datetime.max.replace(tzinfo=UTC)) is not None
    assert time_violation("t", None) is not None


@pytest.mark.parametrize("when", list(BAD_TIMES.values()), ids=list(BAD_TIMES))
async def test_enqueue_refuses_run_at_out_of_range(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection, when: str
) -> None:
    f = await fails(stub.Enqueue(pb.EnqueueRequest(kind="k", run_at=ts(when))))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(f.violations) == ["run_at"]
    assert await count(db) == 0


@pytest.mark.parametrize("when", list(BAD_TIMES.values()), ids=list(BAD_TIMES))
async def test_enqueue_batch_refuses_run_at_out_of_range(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection, when: str
) -> None:
    reqs = [pb.EnqueueRequest(kind="k") for _ in range(3)]
    reqs.insert(1, pb.EnqueueRequest(kind="k", run_at=ts(when)))
    f = await fails(stub.EnqueueBatch(pb.EnqueueBatchRequest(jobs=reqs)))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(f.violations) == ["jobs[1].run_at"]
    assert await count(db) == 0


async def test_run_at_at_the_edges_of_the_range_is_kept(
    stub: job_service_pb2_grpc.JobServiceStub, db: asyncpg.Connection
) -> None:
    for when in ("1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"):
        job = (await stub.Enqueue(pb.EnqueueRequest(kind="k", run_at=ts(when)))).job
        got = (await stub.GetJob(pb.GetJobRequest(id=job.id))).job
        assert got.run_at == ts(when)
    assert await count(db) == 2


@pytest.mark.parametrize("field", ["failed_before", "failed_after"])
async def test_dead_letter_filters_refuse_times_out_of_range(
    channel: grpc.aio.Channel, field: str
) -> None:
    dl = dead_letter_service_pb2_grpc.DeadLetterServiceStub(channel)
    f = dead_letter_service_pb2.DeadLetterFilter(**{field: ts("0001-01-01T00:00:00Z")})
    failure = await fails(
        dl.PurgeDeadLetters(dead_letter_service_pb2.PurgeDeadLettersRequest(filter=f))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(failure.violations) == [f"filter.{field}"]
