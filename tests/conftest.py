"""Shared fixtures: a throwaway PostgreSQL per test session, a fresh database per test,
and a real gRPC server on an ephemeral port.

Set JOBQUEUE_TEST_DATABASE_URL to use an existing PostgreSQL instead of starting one; each test
still gets its own database, created from a migrated template.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from jobqueue_grpc.config import Settings
from jobqueue_grpc.embedded import EmbeddedPostgres
from jobqueue_grpc.server import JobQueueServer
from jobqueue_grpc.store import Store
from tests.support import recreate_database, scratch_database

TEMPLATE = "jobqueue_test_template"


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the session's PostgreSQL."""
    given = os.environ.get("JOBQUEUE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # A throwaway cluster: durability settings off, it is deleted at the end anyway.
    pg = EmbeddedPostgres(
        Path(tmp_path_factory.mktemp("pg")) / "data",
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    url = pg.start()
    try:
        yield url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
async def template_db(pg_url: str) -> str:
    """A database with every migration applied; each test's database is a copy of it."""
    url = await recreate_database(pg_url, TEMPLATE)
    store = await Store.connect(url, min_size=1, max_size=1)
    try:
        await store.migrate()
    finally:
        await store.close()
    return TEMPLATE


@pytest.fixture
async def db_url(pg_url: str, template_db: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database for this test alone."""
    async with scratch_database(pg_url, template=template_db) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(db_url, min_size=1, max_size=10)
    yield s
    await s.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for assertions against the rows themselves."""
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


def test_settings(db_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": db_url,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "http_port": 0,
        "grace_period": 2.0,
        "migrate_on_start": False,
    }
    base.update(overrides)
    return Settings(**base)


ServerFactory = Callable[..., Awaitable[JobQueueServer]]


@pytest.fixture
async def make_server(store: Store, db_url: str) -> AsyncIterator[ServerFactory]:
    """Starts real gRPC servers (in this process) over the test's database; stops them after."""
    started: list[JobQueueServer] = []

    async def make(**overrides: Any) -> JobQueueServer:
        srv = JobQueueServer(test_settings(db_url, **overrides), store)
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> JobQueueServer:
    return await make_server()


@pytest.fixture
async def channel(server: JobQueueServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch
