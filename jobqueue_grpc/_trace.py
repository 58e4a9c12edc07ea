"""OpenTelemetry for the SDK (client and worker), on the OpenTelemetry API alone.

- The client sends the caller's trace context with every JobService call (`with_trace`): the
  W3C `traceparent`/`tracestate` metadata, through the globally configured propagator. The server
  stores it with each job it enqueues.
- The worker runs each handler in a CONSUMER span (`job_span`) whose parent is the trace context
  the job was enqueued with, on every attempt: producer -> (server) -> worker is one trace.

With no SDK configured (the API's default, no-op provider) the worker makes no span at all and the
client adds nothing: one check of the current span per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2

INSTRUMENTATION = "jobqueue_grpc"
_W3C = TraceContextTextMapPropagator()

Metadata = tuple[tuple[str, str], ...]


def with_trace(md: Metadata) -> Metadata:
    """`md` plus the current trace context's headers, when there is a current span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return md
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return md
    return (*md, *carrier.items())


def current_traceparent() -> tuple[str, str]:
    """The current span's (traceparent, tracestate) in W3C form; ("", "") without one."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


def job_tracer(provider: Any | None = None) -> trace.Tracer | None:
    """A tracer for job spans, or None when no SDK is configured (`provider` None and the
    global one the API's default): the worker then skips spans altogether."""
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
    return trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)


@contextmanager
def job_span(tracer: trace.Tracer, job: job_pb2.Job) -> Iterator[trace.Span]:
    """The span a handler runs in: `process <kind>`, a child of the job's producer (if it had a
    trace context). An exception that escapes marks it as an error."""
    parent = None
    if job.traceparent:
        carrier = {"traceparent": job.traceparent}
        if job.tracestate:
            carrier["tracestate"] = job.tracestate
        parent = _W3C.extract(carrier)
    with tracer.start_as_current_span(
        f"process {job.kind}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "jobqueue",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.id,
            "jobqueue.job.kind": job.kind,
            "jobqueue.job.attempt": job.attempt,
        },
    ) as span:
        yield span
