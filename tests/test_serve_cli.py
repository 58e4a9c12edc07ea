"""The real CLI as a subprocess: `serve` on its embedded PostgreSQL, SIGTERM, restart; `migrate`."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.store.migrate import migration_files
from tests.support import CLI, free_port, run_cli, scratch_database, wait_until

START_DEADLINE = 90.0  # initdb on a slow, shared machine


def clean_env() -> dict[str, str]:
    """Our environment without any JOBQUEUE_* setting, so only the flags given count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}


def postgres_pids(pgdata: Path) -> list[int]:
    """Live processes whose command line names this data directory (the postmaster)."""
    needle = str(pgdata.resolve()).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if needle in cmdline and "\nState:\tZ" not in status:
            pids.append(int(proc.name))
    return pids


class Serve:
    """One `jobqueue-grpc serve` process on an embedded PostgreSQL in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(CLI),
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--metrics-port",
            "0",
            "--http-port",
            "0",
            "--grace-period",
            "5",
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with grpc.aio.insecure_channel(self.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def serving() -> bool:
                assert self.proc is not None
                if self.proc.returncode is not None:  # fail early: it will never serve
                    out = await self.proc.stdout.read() if self.proc.stdout else b""
                    pytest.fail(f"server exited ({self.proc.returncode}) first:\n{out.decode()}")
                try:
                    resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.aio.AioRpcError:
                    return False
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

            await wait_until(serving, within=START_DEADLINE, interval=0.1, what="health SERVING")

    async def terminate(self) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout=60)
        code = await asyncio.wait_for(self.proc.wait(), timeout=60)
        return code, out.decode()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def data_dir(tmp_path: Path) -> AsyncIterator[Path]:
    d = tmp_path / "jq"
    yield d
    # A failed test must not leave a postgres running: stop it the way serve would have.
    pgdata = d / "pgdata"
    if postgres_pids(pgdata):
        from jobqueue_grpc.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(pgdata)
        pg._started = True
        await asyncio.to_thread(pg.stop)


async def list_services(target: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names: list[str] = []
        async for resp in call:
            names.extend(s.name for s in resp.list_services_response.service)
        return names


@pytest.mark.slow
async def test_serve_on_embedded_postgres_survives_a_restart(data_dir: Path) -> None:
    first = Serve(data_dir)
    try:
        await first.start()
        services = await list_services(first.target)
        for name in ("JobService", "WorkerService", "DeadLetterService", "QueueService"):
            assert f"jobqueue.v1.{name}" in services
        assert "grpc.health.v1.Health" in services

        async with grpc.aio.insecure_channel(first.target) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            resp = await stub.Enqueue(
                job_service_pb2.EnqueueRequest(kind="survive_restart", idempotency_key="k-restart")
            )
        assert resp.created

        assert postgres_pids(data_dir / "pgdata"), "the embedded postgres should be running"
        code, out = await first.terminate()
        assert code == 0, out
        assert "Traceback" not in out
    finally:
        await first.kill()
    # serve stopped what it started
    assert postgres_pids(data_dir / "pgdata") == []
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()

    second = Serve(data_dir)
    try:
        await second.start()
        async with grpc.aio.insecure_channel(second.target) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            got = await stub.GetJob(job_service_pb2.GetJobRequest(id=resp.job.id))
            assert got.job.kind == "survive_restart"
            assert got.job.state == job_pb2.JOB_STATE_QUEUED
            again = await stub.Enqueue(
                job_service_pb2.EnqueueRequest(kind="survive_restart", idempotency_key="k-restart")
            )
            assert not again.created and again.job.id == resp.job.id
        code, out = await second.terminate()
        assert code == 0, out
    finally:
        await second.kill()
    assert postgres_pids(data_dir / "pgdata") == []


# -- migrate --------------------------------------------------------------------------------------
@pytest.fixture
async def empty_db_url(pg_url: str) -> AsyncIterator[str]:
    """A database with no schema at all (not a copy of the migrated template)."""
    async with scratch_database(pg_url, prefix="m_") as url:
        yield url


async def migrate(url: str) -> tuple[int, str]:
    """Runs `jobqueue-grpc migrate`; returns its exit code and what it printed on stdout."""
    code, out, err = await run_cli("migrate", "--database-url", url, env=clean_env())
    assert code == 0 or not out, err
    return code, out


async def applied_versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version FROM jobqueue.schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def test_migrate_applies_then_is_idempotent(empty_db_url: str) -> None:
    versions = [v for v, _, _ in migration_files()]
    code, out = await migrate(empty_db_url)
    assert code == 0, out
    assert f"applied {len(versions)} migration(s)" in out
    code, out = await migrate(empty_db_url)
    assert code == 0, out
    assert "schema is current" in out
    assert await applied_versions(empty_db_url) == versions


async def test_concurrent_migrates_all_succeed(empty_db_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_db_url) for _ in range(4)))
    assert [code for code, _ in results] == [0] * 4, results
    assert sorted(out.split(":")[0] for _, out in results) == [
        f"applied {len(migration_files())} migration(s)",
        *["schema is current\n"] * 3,
    ]
    assert await applied_versions(empty_db_url) == [v for v, _, _ in migration_files()]


async def test_migrate_without_a_database_url_fails_clearly() -> None:
    code, _, err = await run_cli("migrate", env=clean_env())
    assert code != 0
    assert "--database-url" in err
