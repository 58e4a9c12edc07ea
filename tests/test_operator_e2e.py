"""Operators and the Python SDK together: a real Worker, the AsyncClient, and the admin CLI as a
subprocess, all against one real server."""

from __future__ import annotations

from jobqueue_grpc import AsyncClient, JobContext, Worker
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.server import JobQueueServer
from tests.support import running, wait_until
from tests.test_admin_cli import Cli


async def test_dead_lettered_by_a_worker_requeued_from_the_cli_then_succeeds(
    server: JobQueueServer,
) -> None:
    address = f"127.0.0.1:{server.port}"
    cli = Cli(server.port)
    broken = True
    runs: list[int] = []
    worker = Worker(address, queues=["mail"])

    @worker.handler("send")
    async def send(ctx: JobContext) -> dict[str, bool]:
        runs.append(ctx.attempt)
        if broken:
            raise RuntimeError(f"smtp down (attempt {ctx.attempt})")
        return {"sent": True}

    async with AsyncClient(address) as client, running(worker):
        r = await client.enqueue(
            "send", {"to": "a@b.c"}, queue="mail", max_attempts=2, backoff_base=0.01,
            backoff_cap=0.05,
        )  # fmt: skip
        job_id = r.job.id

        async def failed() -> bool:
            return bool((await client.get_job(job_id)).state == job_pb2.JOB_STATE_FAILED)

        await wait_until(failed, what="the job to use up its attempts")
        shown = await cli.json("dlq", "show", job_id)
        assert shown["attempts"] == 2 and shown["payload"] == {"to": "a@b.c"}
        assert [e["message"] for e in shown["errors"]] == [
            "RuntimeError: smtp down (attempt 1)",
            "RuntimeError: smtp down (attempt 2)",
        ]
        assert (await cli.json("dlq", "stats"))["total"] == 1

        broken = False
        code, out, err = await cli("dlq", "requeue", "--queue", "mail", "--yes")
        assert (code, out.strip()) == (0, "requeued 1 dead letter(s) (queue=mail)"), err

        async def succeeded() -> bool:
            return bool((await client.get_job(job_id)).state == job_pb2.JOB_STATE_SUCCEEDED)

        await wait_until(succeeded, what="the requeued job to succeed")
        job = await client.get_job(job_id)
        assert job.attempt == 1 and dict(job.result) == {"sent": True}
        assert runs == [1, 2, 1]
        assert (await cli.json("dlq", "stats"))["total"] == 0


async def test_cli_pause_holds_a_live_worker_and_resume_delivers_the_backlog(
    server: JobQueueServer,
) -> None:
    address = f"127.0.0.1:{server.port}"
    cli = Cli(server.port)
    done: list[str] = []
    worker = Worker(address, queues=["mail", "other"])

    @worker.handler("send")
    async def send(ctx: JobContext) -> None:
        done.append(ctx.job.id)

    async with AsyncClient(address) as client, running(worker):
        code, _, err = await cli("queues", "pause", "mail")
        assert code == 0, err
        backlog = {(await client.enqueue("send", queue="mail")).job.id for _ in range(4)}
        marker = (await client.enqueue("send", queue="other")).job.id

        async def marker_done() -> bool:
            return marker in done

        # The worker is live (it ran the marker, enqueued after the backlog) yet ran no mail job.
        await wait_until(marker_done, what="the job on the open queue")
        assert done == [marker]
        shown = await cli.json("queues", "show", "mail")
        assert shown["paused"] is True and shown["counts"]["queued"] == 4

        code, _, err = await cli("queues", "resume", "mail")
        assert code == 0, err

        async def backlog_done() -> bool:
            return backlog <= set(done)

        await wait_until(backlog_done, what="the backlog after resume")
        shown = await cli.json("queues", "show", "mail")
        assert shown["counts"]["succeeded"] == 4 and shown["counts"]["queued"] == 0
