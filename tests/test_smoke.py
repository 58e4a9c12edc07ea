"""The harness itself: a migrated database and a serving gRPC server."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobqueue_grpc.store import Store
from jobqueue_grpc.store.migrate import current_version, latest_version


async def test_database_is_migrated(store: Store) -> None:
    async with store.pool.acquire() as conn:
        assert await current_version(conn) == latest_version()


async def test_server_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
