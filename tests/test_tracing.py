"""OpenTelemetry: one trace from the producer's span through Enqueue to the worker's handler, on
every attempt; the trace context stored with the job; tracing off unless OTEL_* configures it.

The spans go to the SDK's in-memory exporter through a TracerProvider handed to the server and
the worker (not the global one, which a process can set only once)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobqueue_grpc import telemetry
from jobqueue_grpc.api import interceptors
from jobqueue_grpc.client import AsyncClient
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from jobqueue_grpc.worker import JobContext, Worker
from tests import conftest
from tests.support import running, wait_until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
async def traced_server(
    store: Store, db_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> AsyncIterator[JobQueueServer]:
    settings = conftest.test_settings(db_url, reaper_interval=0.1)
    srv = JobQueueServer(settings, store, tracer_provider=spans[0])
    await srv.start()
    yield srv
    await srv.stop()


def _hex(span_id: int | None) -> str:
    return "-" if span_id is None else f"{span_id:016x}"


def describe(finished: list[ReadableSpan]) -> list[str]:
    """One line per span: name, span id, parent id (what the report shows)."""
    out = []
    for s in finished:
        assert s.context is not None
        parent = s.parent.span_id if s.parent is not None else None
        out.append(
            f"{s.name:40} trace={s.context.trace_id:032x} span={_hex(s.context.span_id)}"
            f" parent={_hex(parent)}"
        )
    return out


async def test_one_trace_from_the_producer_through_enqueue_to_every_attempt_of_the_handler(
    traced_server: JobQueueServer, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    address = f"127.0.0.1:{traced_server.port}"
    seen: dict[str, list[int]] = {"flaky": [], "sync": []}
    threads: list[str] = []

    worker = Worker(address, concurrency=2, tracer_provider=provider)

    @worker.handler("flaky")
    async def flaky(ctx: JobContext) -> None:
        seen["flaky"].append(trace.get_current_span().get_span_context().span_id)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    @worker.handler("sync")
    def sync(ctx: JobContext) -> None:  # runs in a thread: the span must be current there too
        seen["sync"].append(trace.get_current_span().get_span_context().span_id)
        threads.append(threading.current_thread().name)

    tracer = provider.get_tracer("producer")
    async with AsyncClient(address) as client, running(worker):
        with tracer.start_as_current_span("signup") as producer:
            flaky_job = (
                await client.enqueue("flaky", {}, max_attempts=3, backoff_base=0, backoff_cap=0)
            ).job
            sync_job = (await client.enqueue("sync", {})).job
        succeeded = job_pb2.JOB_STATE_SUCCEEDED

        async def done() -> bool:
            jobs = [await client.get_job(j.id) for j in (flaky_job, sync_job)]
            return all(j.state == succeeded for j in jobs)

        await wait_until(done, within=15)

    producer_ctx = producer.get_span_context()
    # The job stored the producer's context (from the call's traceparent metadata).
    ids = f"00-{producer_ctx.trace_id:032x}-{producer_ctx.span_id:016x}-"
    assert flaky_job.traceparent.startswith(ids)  # then the flags

    finished = exporter.get_finished_spans()
    in_trace = [s for s in finished if s.context and s.context.trace_id == producer_ctx.trace_id]
    print("\n" + "\n".join(describe(in_trace)))  # the trace, for the note
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in in_trace:
        by_name.setdefault(s.name, []).append(s)

    def parent_of(s: ReadableSpan) -> int | None:
        return s.parent.span_id if s.parent is not None else None

    [enqueue_a, enqueue_b] = by_name["/jobqueue.v1.JobService/Enqueue"]
    assert {parent_of(enqueue_a), parent_of(enqueue_b)} == {producer_ctx.span_id}
    assert enqueue_a.kind is trace.SpanKind.SERVER
    attempts = by_name["process flaky"]
    assert len(attempts) == 2  # the failed attempt and the retry, both in the producer's trace
    assert {parent_of(s) for s in attempts} == {producer_ctx.span_id}
    assert sorted(s.attributes["jobqueue.job.attempt"] for s in attempts if s.attributes) == [1, 2]
    failed = next(s for s in attempts if s.attributes and s.attributes["jobqueue.job.attempt"] == 1)
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert all(s.kind is trace.SpanKind.CONSUMER for s in attempts)
    [sync_span] = by_name["process sync"]
    assert parent_of(sync_span) == producer_ctx.span_id
    # The handlers ran inside their spans (the thread one too).
    assert seen["flaky"] == [s.context.span_id for s in attempts if s.context]
    assert sync_span.context is not None and seen["sync"] == [sync_span.context.span_id]
    assert threads and threads[0].startswith("jobqueue-handler")


async def test_the_job_keeps_an_explicit_trace_context_and_ignores_a_broken_header(
    server: JobQueueServer,
) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        explicit = await client.enqueue("k", traceparent=TRACEPARENT, tracestate="vendor=1")
        assert (explicit.job.traceparent, explicit.job.tracestate) == (TRACEPARENT, "vendor=1")
        stored = await client.get_job(explicit.job.id)
        assert (stored.traceparent, stored.tracestate) == (TRACEPARENT, "vendor=1")
        # No span, no header: nothing stored.
        plain = await client.enqueue("k")
        assert plain.job.traceparent == ""
        # A header that is not a traceparent is ignored (W3C), not an error.
        stub = client._stub
        req = client_request("k")
        resp = await stub.Enqueue(req, metadata=(("traceparent", "00-nonsense"),))
        assert resp.job.traceparent == ""
        resp = await stub.Enqueue(req, metadata=(("traceparent", TRACEPARENT),))
        assert resp.job.traceparent == TRACEPARENT
        batch = await stub.EnqueueBatch(
            batch_request(["k", "k"]), metadata=(("traceparent", TRACEPARENT),)
        )
        assert [r.job.traceparent for r in batch.results] == [TRACEPARENT] * 2
        # An explicit one that is not is INVALID_ARGUMENT naming the field.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.enqueue("k", traceparent="00-" + "0" * 32 + "-b7ad6b7169203331-01")
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
        assert status is not None and "traceparent" in str(status.details)


def client_request(kind: str) -> Any:
    from jobqueue_grpc.client import enqueue_request

    return enqueue_request(kind)


def batch_request(kinds: list[str]) -> Any:
    from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2

    return job_service_pb2.EnqueueBatchRequest(
        jobs=[job_service_pb2.EnqueueRequest(kind=k) for k in kinds]
    )


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks_for_an_exporter(
    environ: dict[str, str], names: list[str]
) -> None:
    assert telemetry.exporter_names(environ) == names
    provider = telemetry.provider_from_env(environ)
    assert (provider is not None) == bool(names)
    if provider is not None:
        provider.shutdown()


def test_without_a_provider_the_chain_has_no_span_interceptor(db_url: str) -> None:
    settings = conftest.test_settings(db_url)
    assert [type(i).__name__ for i in interceptors.build(settings)] == ["Interceptor"]
    from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor

    first, ours = interceptors.build(settings, tracer_provider=TracerProvider())
    assert isinstance(first, OpenTelemetryAioServerInterceptor)
    assert isinstance(ours, interceptors.Interceptor)


def test_an_unknown_exporter_stops_the_start() -> None:
    with pytest.raises(RuntimeError, match="no span exporter named 'nope'"):
        telemetry.provider_from_env({"OTEL_TRACES_EXPORTER": "nope"})


def test_a_worker_without_an_sdk_makes_no_span() -> None:
    from jobqueue_grpc import _trace

    # Nothing set the global provider in this process: the API's default, so no spans at all.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert _trace.job_tracer(None) is None
    assert _trace.job_tracer(TracerProvider()) is not None
