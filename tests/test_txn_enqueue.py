"""Transactional enqueue: jobqueue.enqueue() in the caller's transaction (and the txn.py helpers
for asyncpg and psycopg). A job exists iff the transaction commits; its commit wakes a waiting
worker; bad arguments are clear SQL errors; the function stores what the RPC stores."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psycopg
import pytest

from jobqueue_grpc import txn
from jobqueue_grpc.client import AsyncClient
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store.migrate import MIGRATIONS_DIR
from jobqueue_grpc.store.notify import JOBS_CHANNEL
from jobqueue_grpc.worker import JobContext, Worker
from tests.conftest import ServerFactory
from tests.test_sdk import running

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HOUR = timedelta(hours=1)
TIMESTAMPS = {"id", "run_at", "created_at", "updated_at", "started_at", "finished_at"}


def migration(version: str) -> str:
    [path] = sorted(Path(MIGRATIONS_DIR).glob(f"{version}_*.sql"))
    return path.read_text()


# 0041 replaces 0030's function, 0051 0041's
@pytest.mark.parametrize("version", ["0030", "0041", "0051"])
def test_the_function_notifies_on_the_channel_the_servers_listen_on(version: str) -> None:
    # The migration cannot use store/notify.py's placeholder: it writes the name as a literal.
    assert re.findall(r"pg_notify\('([a-z_]+)'", migration(version)) == [JOBS_CHANNEL]


class Heard:
    """The payloads of the NOTIFYs a connection hears on the jobs channel."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)
        self.event.set()

    async def until(self, payload: str) -> None:
        """Waits (10 s at most) until `payload` was heard. No await between the check and the
        clear: a callback (same event loop) cannot slip in between."""
        async with asyncio.timeout(10):
            while payload not in self.payloads:
                self.event.clear()
                await self.event.wait()


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM jobqueue.jobs"))


async def test_rollback_leaves_no_job_and_sends_no_wake_up(
    db: asyncpg.Connection, db_url: str
) -> None:
    heard = Heard()
    listener = await asyncpg.connect(db_url)
    await listener.add_listener(JOBS_CHANNEL, heard)
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction():
                made = await txn.enqueue(db, "send_email", {"to": "a"})
                assert made.created
                assert await count(db) == 1  # visible inside the transaction
                raise RuntimeError("the business change failed")
        assert await count(db) == 0
        # A NOTIFY after the rollback on the same connection arrives; the rolled-back one never
        # did (notifications are delivered in commit order).
        await db.execute(f"SELECT pg_notify('{JOBS_CHANNEL}', 'marker')")
        await heard.until("marker")
        assert heard.payloads == ["marker"]
    finally:
        await listener.close()


async def test_a_commit_hands_the_job_to_a_waiting_worker(
    server: JobQueueServer, db: asyncpg.Connection
) -> None:
    got = asyncio.Event()
    received: list[JobContext] = []
    worker = Worker(f"127.0.0.1:{server.port}", concurrency=1)

    @worker.handler("send_email")
    async def handle(ctx: JobContext) -> None:
        received.append(ctx)
        got.set()

    async with running(worker):
        async with db.transaction():
            made = await txn.enqueue(
                db, "send_email", {"to": "ada"}, metadata={"tenant": "t1"}, traceparent=TRACEPARENT
            )
            await db.execute("SELECT 1")  # the rest of the business transaction
        # Delivered from the commit's NOTIFY (not asserted: how soon; the 1 s poll is the floor).
        await asyncio.wait_for(got.wait(), 15)
    [ctx] = received
    assert ctx.id == str(made.id)
    assert ctx.payload == {"to": "ada"}
    assert ctx.metadata == {"tenant": "t1"}
    assert ctx.job.traceparent == TRACEPARENT


async def test_the_commit_notifies_the_jobs_channel_with_the_queue(
    db: asyncpg.Connection, db_url: str
) -> None:
    heard = Heard()
    listener = await asyncpg.connect(db_url)
    await listener.add_listener(JOBS_CHANNEL, heard)
    try:
        async with db.transaction():
            await txn.enqueue(db, "k", queue="mail")
            await txn.enqueue(db, "k", queue="later", run_at=datetime.now(UTC) + timedelta(days=1))
        await db.execute(f"SELECT pg_notify('{JOBS_CHANNEL}', 'marker')")
        await heard.until("marker")
        # a scheduled job waits for the scheduler, not a wake-up
        assert heard.payloads == ["mail", "marker"]
    finally:
        await listener.close()


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("queue", {"queue": "Mail"}, "queue 'Mail' must match"),
    ("kind", {"kind": ""}, "kind is required"),
    ("kind", {"kind": "Send Email"}, "must match [a-z0-9_.-]{1,128}"),
    ("payload", {"payload": "[1, 2]"}, "payload must be a JSON object"),
    ("payload", {"payload": '{"x": "' + "y" * 1_100_000 + '"}'}, "the limit is 1048576"),
    ("priority", {"priority": 1_000_001}, "priority must be within"),
    ("max_attempts", {"max_attempts": 1001}, "max_attempts must be 1..1000"),
    ("run_at", {"run_at": "1969-12-31T00:00:00Z"}, "run_at must be between"),
    ("idempotency_key", {"idempotency_key": "k" * 256}, "longer than 255"),
    ("lease_duration", {"lease_duration": "0.5 seconds"}, "between 1 s and 24 h"),
    ("retry_policy.backoff_cap", {"backoff_base": "10 s", "backoff_cap": "1 s"}, "below"),
    ("metadata", {"metadata": '{"bad key": "v"}'}, "metadata key 'bad key' must match"),
    ("metadata", {"metadata": '{"n": 1}'}, "metadata[n] must be a string"),
    ("traceparent", {"traceparent": "00-abc"}, "W3C traceparent"),
    ("tracestate", {"tracestate": "a=1"}, "tracestate needs a traceparent"),
    ("concurrency_key", {"concurrency_key": "a b"}, "must match [A-Za-z0-9_.:/@-]{1,128}"),
    ("concurrency_key", {"concurrency_key": "k" * 129}, "must match"),
    ("unique.key", {"unique_key": "k" * 256}, "longer than 255"),
    ("unique.key", {"unique_key": "derived:abc"}, "may not start with 'derived:'"),
    ("unique.key", {"unique_period": "1 hour"}, "unique.key is required"),
    ("unique.states", {"unique_key": "u", "unique_states": "{queued,done}"}, "unknown state"),
    ("unique.states", {"unique_key": "u", "unique_states": "{succeeded}"}, "every unfinished"),
    ("unique.period", {"unique_key": "u", "unique_period": "0.5 seconds"}, "between 1 s and 366"),
]


SQL_TYPES = {
    "payload": "jsonb",
    "metadata": "jsonb",
    "run_at": "timestamptz",
    "lease_duration": "interval",
    "backoff_base": "interval",
    "backoff_cap": "interval",
    "unique_states": "text[]",
    "unique_period": "interval",
}


@pytest.mark.parametrize(
    ("field", "args", "says"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
async def test_a_bad_argument_is_sqlstate_22023_naming_the_field(
    db: asyncpg.Connection, field: str, args: dict[str, Any], says: str
) -> None:
    call = {"kind": "k", **args}

    # Integers as integers; everything else as text, converted by PostgreSQL as any driver's
    # literal would be.
    def arg(i: int, name: str, value: Any) -> str:
        if isinstance(value, int):
            return f"{name} => ${i + 1}::int"
        return f"{name} => ${i + 1}::text::{SQL_TYPES.get(name, 'text')}"

    sql = ", ".join(arg(i, k, v) for i, (k, v) in enumerate(call.items()))
    with pytest.raises(asyncpg.InvalidParameterValueError) as err:
        await db.fetchrow(f"SELECT * FROM jobqueue.enqueue({sql})", *call.values())
    assert err.value.sqlstate == "22023"
    assert err.value.column_name == field
    message = str(err.value)
    assert message.startswith(f"jobqueue.enqueue: {field}: "), message
    assert says in message, message
    assert await count(db) == 0


async def _row(db: asyncpg.Connection, job_id: Any) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM jobqueue.jobs WHERE id = $1::uuid", str(job_id))
    assert row is not None
    return {k: v for k, v in dict(row).items() if k not in TIMESTAMPS}


@pytest.mark.parametrize("full", [True, False], ids=["every-field", "defaults"])
async def test_the_function_and_the_rpc_store_the_same_row(
    make_server: ServerFactory, db: asyncpg.Connection, full: bool
) -> None:
    # Non-default server settings: the function follows what the server published at start.
    srv = await make_server(default_max_attempts=7, lease_duration=45)
    run_at = datetime.now(UTC) + timedelta(hours=1)
    options: dict[str, Any] = (
        {
            "queue": "mail",
            "priority": -3,
            "max_attempts": 4,
            "run_at": run_at,
            "lease_duration": 90.5,
            "backoff_base": 2.0,
            "backoff_cap": 60.0,
            "metadata": {"tenant": "t1", "region": "eu"},
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=1",
            "concurrency_key": "tenant-1",
        }
        if full
        else {}
    )
    # (numbers as floats: a Struct has no integers, so the RPC stores 1 as 1.0)
    payload = {"to": "ada@example.com", "n": [1.5, 2.5, None, True], "nested": {"a": "b"}}
    async with AsyncClient(f"127.0.0.1:{srv.port}") as client:
        by_rpc = (await client.enqueue("send_email", payload, idempotency_key="a", **options)).job
    async with db.transaction():
        by_sql = await txn.enqueue(db, "send_email", payload, idempotency_key="b", **options)
    rpc_row, sql_row = await _row(db, by_rpc.id), await _row(db, by_sql.id)
    assert rpc_row.pop("idempotency_key") == "a"
    assert sql_row.pop("idempotency_key") == "b"
    assert sql_row == rpc_row
    assert sql_row["max_attempts"] == (4 if full else 7)
    assert sql_row["lease_seconds"] == (90.5 if full else 45)
    assert sql_row["concurrency_key"] == ("tenant-1" if full else None)
    assert by_sql.state == ("scheduled" if full else "queued")


async def test_an_idempotency_key_returns_the_existing_job_to_the_function_and_the_rpc(
    server: JobQueueServer, db: asyncpg.Connection
) -> None:
    first = await txn.enqueue(db, "k", idempotency_key="order-1")
    again = await txn.enqueue(db, "k", {"other": 1}, idempotency_key="order-1")
    assert (again.id, again.created, first.created) == (first.id, False, True)
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        r = await client.enqueue("k", idempotency_key="order-1")
    assert (r.job.id, r.created) == (str(first.id), False)
    assert await count(db) == 1


UNFINISHED = ["queued", "scheduled", "running", "retrying"]
ALL_STATES = [*UNFINISHED, "succeeded", "failed", "cancelled"]


async def test_unique_keys_refuse_duplicates_across_the_function_and_the_rpc(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(channel)
    first = await txn.enqueue(db, "report", unique_key="nightly")
    again = await txn.enqueue(db, "report", {"other": 1}, unique_key="nightly")
    assert (first.created, again.created, again.id) == (True, False, first.id)
    rpc = await stub.Enqueue(
        js.EnqueueRequest(kind="report", unique=js.UniqueOptions(key="nightly"))
    )
    assert (rpc.created, rpc.job.id, rpc.job.unique_key) == (False, str(first.id), "nightly")
    # finished: out of the default (unfinished) states, so a new one may come
    await stub.CancelJob(js.CancelJobRequest(id=str(first.id)))
    assert (await txn.enqueue(db, "report", unique_key="nightly")).created

    # a period: the RPC's job holds the window (10:00-11:00) that the function's run_at falls in
    by_rpc = js.EnqueueRequest(kind="hourly", unique=js.UniqueOptions(key="h"))
    by_rpc.run_at.FromJsonString("2030-01-01T10:20:00Z")
    by_rpc.unique.period.FromSeconds(3600)
    made = (await stub.Enqueue(by_rpc)).job
    at = datetime(2030, 1, 1, 10, 40, tzinfo=UTC)
    dup = await txn.enqueue(db, "hourly", unique_key="h", unique_period=3600, run_at=at)
    assert (dup.created, str(dup.id)) == (False, made.id)
    nxt = await txn.enqueue(db, "hourly", unique_key="h", unique_period=3600, run_at=at + HOUR)
    assert nxt.created
    rows = await db.fetch(
        "SELECT unique_key, unique_states FROM jobqueue.jobs WHERE kind = 'hourly' ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("h@1893492000", ALL_STATES), ("h@1893495600", ALL_STATES)]

    # states given: a cancelled job keeps refusing; the RPC stores the same states
    kept = await txn.enqueue(db, "k", unique_key="kept", unique_states=[*UNFINISHED, "CANCELLED"])
    await stub.CancelJob(js.CancelJobRequest(id=str(kept.id)))
    assert (await txn.enqueue(db, "k", unique_key="kept")).id == kept.id
    states = await db.fetchval("SELECT unique_states FROM jobqueue.jobs WHERE id = $1", kept.id)
    assert states == [*UNFINISHED, "cancelled"]
    # an idempotency key wins over a unique key, as in the RPC
    keyed = await txn.enqueue(db, "k", idempotency_key="idem", unique_key="other")
    both = await txn.enqueue(db, "k", idempotency_key="idem", unique_key="kept")
    assert (both.created, both.id) == (False, keyed.id)


async def test_psycopg_connections_sync_and_async(db_url: str, db: asyncpg.Connection) -> None:
    with psycopg.connect(db_url) as conn:
        with conn.transaction():
            made = txn.enqueue_sync(conn, "k", {"x": 1}, metadata={"via": "psycopg"})
        assert made.created
        with pytest.raises(RuntimeError), conn.transaction():
            txn.enqueue_sync(conn, "k")
            raise RuntimeError("rolled back")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="queue"):
            txn.enqueue_sync(conn, "k", queue="Bad")
    async with await psycopg.AsyncConnection.connect(db_url) as aconn, aconn.transaction():
        amade = await txn.enqueue(aconn, "k", idempotency_key="p")
    assert amade.created
    rows = await db.fetch("SELECT id, metadata FROM jobqueue.jobs ORDER BY id")
    assert [r["id"] for r in rows] == [made.id, amade.id]
    assert rows[0]["metadata"] == '{"via": "psycopg"}'
