"""What /metrics exports: no `*_created` series, attempts counted under an attempts name, and
queue gauges that read 0 at zero instead of vanishing."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from jobqueue_grpc import AsyncClient
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2, queue_service_pb2_grpc
from jobqueue_grpc.server import JobQueueServer
from tests.test_metrics import http_get, metered, scrape, total

__all__ = ["metered"]  # the fixture, imported for these tests

STATES = ("queued", "scheduled", "running", "retrying")


async def test_no_created_series_and_failures_are_named_attempts(
    metered: JobQueueServer,
) -> None:
    assert metered.metrics is not None
    async with AsyncClient(f"127.0.0.1:{metered.port}") as client:
        await client.enqueue("k", {}, queue="m" + uuid.uuid4().hex[:12])
    status, body = await http_get(metered.metrics.port, "/metrics")
    assert status == 200
    assert "jobqueue_jobs_enqueued_total{" in body
    assert "_created" not in body
    families = {f.name for f in text_string_to_metric_families(body)}
    assert "jobqueue_attempts_failed" in families
    assert "jobqueue_jobs_failed" not in families


async def test_queue_gauges_read_zero_instead_of_vanishing(metered: JobQueueServer) -> None:
    assert metered.metrics is not None
    port = metered.metrics.port
    q = "m" + uuid.uuid4().hex[:12]
    paused = "p" + uuid.uuid4().hex[:12]
    async with AsyncClient(f"127.0.0.1:{metered.port}") as client:
        ids = [(await client.enqueue("k", {}, queue=q)).job.id for _ in range(2)]
        s = await scrape(port)
        assert total(s, "jobqueue_queue_depth", queue=q, state="queued") == 2
        for state in STATES:  # every state of a known queue is there, 0 or not
            assert ("jobqueue_queue_depth", frozenset({("queue", q), ("state", state)})) in s
        assert ("jobqueue_dead_letters", frozenset({("queue", q)})) in s

        for job_id in ids:
            await client.cancel_job(job_id)
        # a queue known only by its settings row (paused before its first job)
        admin = queue_service_pb2_grpc.QueueServiceStub(client.channel)
        await admin.PauseQueue(queue_service_pb2.PauseQueueRequest(name=paused))
    s = await scrape(port)
    for queue in (q, paused):
        for state in STATES:
            key = ("jobqueue_queue_depth", frozenset({("queue", queue), ("state", state)}))
            assert s.get(key) == 0, (queue, state)
        assert s.get(("jobqueue_dead_letters", frozenset({("queue", queue)}))) == 0
