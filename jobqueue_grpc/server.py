"""Assembles the gRPC server: services, health, reflection, interceptors, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from typing import Any

import asyncpg
import grpc
from google.protobuf.descriptor_pool import Default as default_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jobqueue_grpc import metrics_server, telemetry, tls
from jobqueue_grpc.api import interceptors
from jobqueue_grpc.api.dead_letters import DeadLetterService
from jobqueue_grpc.api.http import Calls, HttpApp, HttpServer
from jobqueue_grpc.api.jobs import JobService, limits_of
from jobqueue_grpc.api.lease import WorkerService
from jobqueue_grpc.api.queues import QueueService
from jobqueue_grpc.api.schedules import ScheduleService
from jobqueue_grpc.config import Settings
from jobqueue_grpc.embedded import EmbeddedPostgres
from jobqueue_grpc.engine.engine import Engine
from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    dead_letter_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from jobqueue_grpc.store import Store

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    dead_letter_service_pb2.DESCRIPTOR.services_by_name["DeadLetterService"].full_name,
    queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
]
DESCRIPTOR_POOL = default_pool()
HEALTH_INTERVAL = 2.0
# The health "service" a liveness probe asks for: SERVING while this process answers at all, and
# NOT_SERVING only once it shuts down. The overall health ("") and each service's follow the
# database too, which is what readiness wants; a liveness probe on them would restart every pod
# through a database outage, which restarting cannot fix.
LIVENESS = "jobqueue.liveness"


class JobQueueServer:
    """One replica: a gRPC server over a Store. `start`, then `stop` (graceful) when done."""

    def __init__(
        self, settings: Settings, store: Store, tracer_provider: Any | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = Engine(store, settings)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.http_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.metrics: metrics_server.MetricsServer | None = None
        self.drain_gate = interceptors.DrainGate()
        # Outermost first: observe (log + count) -> auth -> limits -> error mapping. The HTTP
        # port's calls go through the same one.
        # (a span per call first when tracing is on: `tracer_provider`, telemetry.py)
        self.interceptors = interceptors.build(settings, self.drain_gate, tracer_provider)
        self.server = grpc.aio.server(
            interceptors=self.interceptors,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                # Accept client keepalive pings every 10 s; drop peers silent for long.
                (
                    "grpc.http2.min_ping_interval_without_data_ms",
                    int(settings.keepalive_min_ping_interval * 1000),
                ),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
                # Any unanswered ping (not only keepalive's) ends a dead connection that soon.
                ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout * 1000)),
            ],
        )
        services: list[tuple[Any, Any]] = [
            (
                JobService(store, self.engine.enqueuer, settings, self.engine.watches),
                job_service_pb2_grpc.add_JobServiceServicer_to_server,
            ),
            (
                WorkerService(self.engine, settings),
                worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
            ),
            (
                DeadLetterService(store, settings),
                dead_letter_service_pb2_grpc.add_DeadLetterServiceServicer_to_server,
            ),
            (QueueService(store), queue_service_pb2_grpc.add_QueueServiceServicer_to_server),
            (
                ScheduleService(store, settings, self.engine.bus.schedules_changed),
                schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server,
            ),
        ]
        for servicer, add in services:
            add(servicer, self.server)
        self.http: HttpServer | None = None
        if settings.http_port:
            # ours is the last of the chain (a tracing interceptor may stand before it)
            calls = Calls(self.interceptors[-1], services)  # type: ignore[arg-type]
            for name in SERVICE_NAMES:
                calls.add_service(DESCRIPTOR_POOL.FindServiceByName(name))
            self.http = HttpServer(HttpApp(calls, settings), settings)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [
                    *SERVICE_NAMES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self.server,
            )

    async def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        creds = tls.server_credentials(self.settings)
        if creds is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, creds)
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await self.server.start()
        await self.engine.start()
        if self.http is not None:
            self.http_port = await self.http.start()
        await self._publish_enqueue_defaults()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._check_health()
        self._tasks.append(asyncio.create_task(self._health_loop(), name="health"))
        self.metrics = await metrics_server.start_for(self.settings, self.store)
        log.info("serving gRPC on %s:%d", self.settings.host, self.port)
        return self.port

    async def _publish_enqueue_defaults(self) -> None:
        """The SQL function jobqueue.enqueue applies this server's defaults and limits."""
        try:
            await self.store.jobs.publish_enqueue_defaults(limits_of(self.settings))
        except Exception as exc:  # not migrated yet (migrate_on_start off): the function waits too
            log.warning("could not publish enqueue defaults for jobqueue.enqueue(): %s", exc)

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, status)

    async def _check_health(self) -> None:
        try:
            ok = await self.store.schema_current()
        except Exception as exc:  # any failure to answer is "not serving"
            log.warning("health check: database not answering: %s", type(exc).__name__)
            ok = False
        if not self._stopping:
            await self._set_health(ok)

    async def _health_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(HEALTH_INTERVAL)
            await self._check_health()

    async def stop(self) -> None:
        """Graceful: NOT_SERVING at once, then in-flight calls get the grace period."""
        if self._stopping:
            return
        self._stopping = True
        self.drain_gate.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("shutting down (grace %.1fs)", self.settings.grace_period)
        # Streams get `draining`; outcomes are accepted for the grace period, then the rest is
        # released into the retry path before the RPCs are cut.
        await self.engine.drain(self.settings.grace_period)
        await self.engine.stop()
        for t in self._tasks:
            t.cancel()
        await self.server.stop(1.0)
        if self.http is not None:
            await self.http.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# Failures that only say the database is not reachable right now: a line says enough.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


class _ConnectionErrorsInOneLine(logging.Filter):
    """Turns a log record's traceback into its last line when the error is a lost database
    connection: asyncpg's pool logs one with a full traceback at each try to reconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _CONNECTION_ERRORS):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_connection_tracebacks() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _ConnectionErrorsInOneLine) for f in pool_log.filters):
        pool_log.addFilter(_ConnectionErrorsInOneLine())


def _child(settings: Settings) -> None:
    """An extra server process of `serve --processes N` (multiprocessing's spawn target)."""
    from jobqueue_grpc.logs import setup_logging

    setup_logging(settings)
    raise SystemExit(asyncio.run(run(settings, child=True)))


class Children:
    """The extra processes of `serve --processes N`: replicas on the same port and database.

    Each is a whole replica (its own engine, pools and LISTEN connection), so they share work
    the way replicas on several hosts do: through PostgreSQL. The kernel spreads new
    connections over the processes (SO_REUSEPORT); a Lease stream stays where it connected.
    """

    def __init__(self, settings: Settings, url: str, port: int) -> None:
        import multiprocessing

        child = settings.model_copy(
            update={
                "database_url": url,
                "port": port,
                "processes": 1,
                "reuse_port": True,
                "migrate_on_start": False,  # the first process has migrated
                "http_port": 0,  # HTTP and /metrics stay with the first process
                "metrics_port": 0,
            }
        )
        ctx = multiprocessing.get_context("spawn")  # no forked event loop or gRPC state
        self.procs = [
            ctx.Process(target=_child, args=(child,), name=f"jobqueue-grpc-{i}", daemon=False)
            for i in range(1, settings.processes)
        ]
        self.grace = settings.grace_period
        for p in self.procs:
            p.start()

    async def first_exit(self) -> None:
        """Returns when any of them has exited."""
        waits = [asyncio.ensure_future(asyncio.to_thread(p.join)) for p in self.procs]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def stop(self) -> bool:
        """SIGTERM to each, then waits (their grace period and then some); True if all exited
        0."""
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            await asyncio.to_thread(p.join, self.grace + 15)
            if p.is_alive():
                log.error("server process %s did not stop in time; killing it", p.pid)
                p.kill()
                await asyncio.to_thread(p.join)
        return all(p.exitcode == 0 for p in self.procs)


async def run(settings: Settings, *, child: bool = False) -> int:
    """`jobqueue-grpc serve`: runs until SIGTERM or SIGINT, then shuts down gracefully.

    The signal handlers go in first, so a SIGTERM during start-up (while the embedded
    PostgreSQL starts or migrations run) still stops everything this process started. With
    `processes` > 1 the extra processes start once this one listens (`Children`); should one
    of them die, the server stops (exit 1) so that its supervisor restarts it whole.
    """
    _quiet_connection_tracebacks()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    embedded: EmbeddedPostgres | None = None
    stopped = True  # the embedded PostgreSQL, if any, stopped cleanly
    tracer_provider = None
    try:
        tracer_provider = telemetry.provider_from_env()  # None unless OTEL_* asks for an exporter
        if tracer_provider is not None:
            from opentelemetry import trace

            trace.set_tracer_provider(tracer_provider)
        url = settings.database_url
        if url is None:
            embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
            url = await asyncio.to_thread(embedded.start)
        if stop.is_set():
            return 0
        store = await Store.connect(
            url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        try:
            if settings.migrate_on_start and not stop.is_set():
                await store.migrate()
            if stop.is_set():
                return 0
            if settings.processes > 1:
                settings = settings.model_copy(update={"reuse_port": True})
            srv = JobQueueServer(settings, store, tracer_provider)
            await srv.start()
            if child:
                await stop.wait()
                await srv.stop()
                return 0
            children = Children(settings, url, srv.port) if settings.processes > 1 else None
            print(f"jobqueue-grpc listening on {settings.host}:{srv.port}", flush=True)
            if children is not None:
                print(f"  in {settings.processes} processes", flush=True)
            if srv.http is not None:
                print(
                    f"HTTP (Connect, gRPC-Web, dashboard) on http://{settings.host}:{srv.http_port}/",
                    flush=True,
                )
            if children is None:
                await stop.wait()
            else:
                stopping = asyncio.ensure_future(stop.wait())
                died = asyncio.ensure_future(children.first_exit())
                await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if died.done():
                    log.error("a server process exited; stopping the others")
                    stopped = False
                died.cancel()
            if children is not None:
                _, all_exited = await asyncio.gather(srv.stop(), children.stop())
                stopped = all_exited and stopped
            else:
                await srv.stop()
        finally:
            await store.close()
    except (OSError, RuntimeError, asyncpg.PostgresError) as exc:
        # Start-up failures a user can act on (port taken, database unreachable): one line.
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if embedded is not None:
            try:
                await asyncio.to_thread(embedded.stop)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                log.error("could not stop the embedded PostgreSQL: %s", exc)
                stopped = False
        if tracer_provider is not None:  # export what is still buffered
            await asyncio.to_thread(tracer_provider.shutdown)
    return 0 if stopped else 1
