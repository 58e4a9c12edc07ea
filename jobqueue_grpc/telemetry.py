"""OpenTelemetry tracing for the server: a span per RPC when tracing is configured, and nothing at
all when it is not.

Configured means the standard environment variables ask for an exporter: OTEL_TRACES_EXPORTER
(`otlp`, `console`, ...; `none` turns tracing off) or any OTEL_EXPORTER_OTLP_* (which implies
`otlp`), and OTEL_SDK_DISABLED is not `true`. Then `provider_from_env` builds the SDK's
TracerProvider (sampler, resource and exporter options from the same OTEL_* variables; service
name `jobqueue-grpc` unless OTEL_SERVICE_NAME says otherwise), and the interceptor chain
(api/interceptors.py) starts with the maintained gRPC instrumentation's grpc.aio server
interceptor (opentelemetry-instrumentation-grpc): one SERVER span per call, named after the
method, a child of the caller's `traceparent` metadata. Health checks are left out.

Not configured, none of this is imported and the chain is what it was: no span, no context
attach, no wrapper per call. Jobs still store the producer's trace context either way
(api/jobs.py reads it from the call's metadata without OpenTelemetry).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

SERVICE_NAME = "jobqueue-grpc"


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for; empty: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        if not any(k.startswith("OTEL_EXPORTER_OTLP_") for k in environ):
            return []
        names = "otlp"
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def provider_from_env(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The SDK TracerProvider the environment configures, or None when it configures none.

    Exporters are found by their `opentelemetry_traces_exporter` entry point names, as the SDK's
    own auto-configuration does: `otlp` (the [server] extra installs the OTLP/gRPC exporter),
    `console`, or any other installed one. An unknown name is a start-up error."""
    names = exporter_names(environ)
    if not names:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {}
    if "OTEL_SERVICE_NAME" not in environ:
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "otlp":  # as the SDK's auto-configuration reads it: by the OTLP protocol
            protocol = environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            )
            name = "otlp_proto_http" if protocol == "http/protobuf" else "otlp_proto_grpc"
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise RuntimeError(f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} installed")
        exporter_class = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    log.info("tracing on: exporting spans with %s", ", ".join(names))
    return provider


def server_interceptor(provider: TracerProvider | Any) -> grpc.aio.ServerInterceptor:
    """The maintained grpc.aio server instrumentation, spans from `provider`, health checks out.

    Its streaming wrapper expects an async-generator handler; WorkerService.Lease writes with
    `context.write` and is a plain coroutine, which the instrumentation's unary wrapper (await the
    behaviour inside the span) fits as is: the subclass picks that one for it. Pinned version:
    the two methods it chooses between are the instrumentation's own (tests/test_tracing.py
    runs a Lease stream through it)."""
    import inspect

    from opentelemetry.instrumentation.grpc import _aio_server, filters

    class Interceptor(_aio_server.OpenTelemetryAioServerInterceptor):
        def _intercept_aio_server_stream(self, behavior: Any, details: Any) -> Any:
            if inspect.isasyncgenfunction(behavior):
                return super()._intercept_aio_server_stream(behavior, details)  # type: ignore[no-untyped-call]
            return self._intercept_aio_server_unary(behavior, details)  # type: ignore[no-untyped-call]

    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc.version import __version__

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.grpc",
        __version__,
        provider,
        schema_url="https://opentelemetry.io/schemas/1.11.0",
    )
    interceptor: grpc.aio.ServerInterceptor = Interceptor(  # type: ignore[no-untyped-call]
        tracer, filter_=filters.negate(filters.health_check())
    )
    return interceptor
