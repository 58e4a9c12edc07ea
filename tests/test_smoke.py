"""The harness itself: a migrated database and a serving gRPC server."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobqueue_grpc.store import Store
from jobqueue_grpc.store.migrate import current_version, latest_version, migration_files


async def test_database_is_migrated(store: Store) -> None:
    async with store.pool.acquire() as conn:
        assert await current_version(conn) == latest_version()


async def test_server_reports_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_schema_is_current_only_with_every_migration(store: Store) -> None:
    """Not just the newest: a migration numbered under it (a branch's, landed later) counts too."""
    assert await store.schema_current()
    versions = [v for v, _, _ in migration_files()]
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM jobqueue.schema_migrations WHERE version = $1", versions[1])
    assert not await store.schema_current()
