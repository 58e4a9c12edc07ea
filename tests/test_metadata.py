"""Job metadata: labels given at enqueue (unary and batch), returned on the Job and with every
lease, validated, filterable in ListJobs (pages included, with created_before too), shown by the
CLI."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from grpc_status import rpc_status

from jobqueue_grpc.client import AsyncClient, enqueue_request
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.worker import JobContext, Worker
from tests.test_admin_cli import Cli
from tests.test_sdk import running


async def test_metadata_is_stored_returned_and_leased(server: JobQueueServer) -> None:
    got: list[dict[str, str]] = []
    done = asyncio.Event()
    worker = Worker(f"127.0.0.1:{server.port}")

    @worker.handler("k")
    async def handle(ctx: JobContext) -> None:
        got.append(ctx.metadata)
        done.set()

    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        r = await client.enqueue("k", metadata={"tenant": "t1", "team/owner": "ops"})
        assert dict(r.job.metadata) == {"tenant": "t1", "team/owner": "ops"}
        assert dict((await client.get_job(r.job.id)).metadata) == dict(r.job.metadata)
        [b1, b2] = await client.enqueue_batch(
            [{"kind": "k", "metadata": {"tenant": "t2"}}, {"kind": "k"}]
        )
        assert dict(b1.job.metadata) == {"tenant": "t2"} and not b2.job.metadata
        assert dict((await client.get_job(b1.job.id)).metadata) == {"tenant": "t2"}
        async with running(worker):
            await asyncio.wait_for(done.wait(), 15)
    assert got[0] in ({"tenant": "t1", "team/owner": "ops"}, {"tenant": "t2"}, {})


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({"bad key": "v"}, "metadata key 'bad key' must match"),
        ({"k": "v" * 513}, "metadata[k] is longer than 512 characters"),
        ({f"k{i}": "v" for i in range(33)}, "more than 32 pairs"),
        ({"k": "a\x00b"}, "metadata[k] contains NUL"),
    ],
)
async def test_bad_metadata_is_invalid_argument_naming_the_field(
    server: JobQueueServer, metadata: dict[str, str], says: str
) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        for call in (
            client.enqueue("k", metadata=metadata),
            client.enqueue_batch([{"kind": "k"}, {"kind": "k", "metadata": metadata}]),
            client.list_jobs(metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert says in (err.value.details() or "")
            status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
            assert status is not None and "metadata" in str(status.details[1].value)


async def test_list_jobs_filters_on_every_given_pair_across_pages(server: JobQueueServer) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        for i in range(5):
            await client.enqueue("k", metadata={"tenant": "t1", "n": str(i % 2)})
        await client.enqueue("k", metadata={"tenant": "t2", "n": "0"})
        await client.enqueue("k")

        async def ids(**filters: object) -> list[str]:
            out, token = [], ""
            while True:
                page = await client.list_jobs(page_size=2, page_token=token, **filters)  # type: ignore[arg-type]
                out += [j.id for j in page.jobs]
                token = page.next_page_token
                if not token:
                    return out

        t1 = await ids(metadata={"tenant": "t1"})
        assert len(t1) == 5
        even = await ids(metadata={"tenant": "t1", "n": "0"})
        assert len(even) == 3 and set(even) <= set(t1)
        assert len(await ids()) == 7
        assert await ids(metadata={"tenant": "nobody"}) == []
        # A token is bound to its filter: another filter refuses it.
        page = await client.list_jobs(page_size=2, metadata={"tenant": "t1"})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.list_jobs(page_token=page.next_page_token, metadata={"tenant": "t2"})
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_the_cli_sets_shows_and_filters_metadata(server: JobQueueServer) -> None:
    cli = Cli(server.port)
    made = await cli.json("jobs", "enqueue", "k", "--label", "tenant=t1", "--label", "env=prod")
    assert made["job"]["metadata"] == {"tenant": "t1", "env": "prod"}
    await cli.json("jobs", "enqueue", "k", "--label", "tenant=t2")
    listed = await cli.json("jobs", "list", "--label", "tenant=t1")
    assert [j["id"] for j in listed] == [made["job"]["id"]]
    code, out, _ = await cli("jobs", "get", made["job"]["id"])
    assert code == 0 and "env=prod tenant=t1" in out
    code, out, _ = await cli("jobs", "list")
    assert code == 0 and "METADATA" in out and "tenant=t2" in out


def test_enqueue_request_carries_metadata_and_trace_fields() -> None:
    req = enqueue_request("k", metadata={"a": "b"}, traceparent="tp", tracestate="ts")
    assert (dict(req.metadata), req.traceparent, req.tracestate) == ({"a": "b"}, "tp", "ts")


async def test_list_jobs_combines_metadata_and_created_before_across_pages(
    channel: grpc.aio.Channel, db: asyncpg.Connection
) -> None:
    stub = jsg.JobServiceStub(channel)
    made = []
    for tenant in ("t1", "t1", "t1", "t2"):
        job = (await stub.Enqueue(js.EnqueueRequest(kind="k", metadata={"tenant": tenant}))).job
        made.append(job.id)
    old = made[:2] + made[3:]  # two of t1's and t2's are two days old
    await db.execute(
        "UPDATE jobqueue.jobs SET created_at = now() - interval '2 days'"
        " WHERE id = ANY($1::uuid[])",
        old,
    )
    query = js.ListJobsRequest(page_size=1, metadata={"tenant": "t1"})
    query.created_before.GetCurrentTime()
    query.created_before.seconds -= 86_400
    seen: list[str] = []
    while True:
        page = await stub.ListJobs(query)
        seen += [j.id for j in page.jobs]
        if not page.next_page_token:
            break
        query.page_token = page.next_page_token
    assert seen == [made[1], made[0]]  # newest first
    # the token is bound to both filters
    query.ClearField("created_before")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListJobs(query)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
