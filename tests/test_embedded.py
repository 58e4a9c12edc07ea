"""The embedded PostgreSQL's data directory is used by one server at a time.

A second `serve` on the same data directory (a second `make serve`, from any clone: the default
data directory is per user) must refuse with one line naming the running cluster, and leave the
first server's database alone; a pid file left by a postmaster that died is cleaned up.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobqueue_grpc.embedded import AlreadyRunning, EmbeddedPostgres
from tests.test_serve_cli import CLI, Serve, clean_env, free_port, postgres_pids


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory outside pytest's per-user tmp root, whose permissions concurrent pytest runs
    of the same user reset (the cluster's unprivileged user must traverse the path)."""
    d = Path(tempfile.mkdtemp(prefix="jq-embedded-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def data_dir(scratch: Path) -> AsyncIterator[Path]:
    d = scratch / "jq"
    yield d
    pgdata = d / "pgdata"
    if postgres_pids(pgdata):  # a failed test must not leave a postgres running
        pg = EmbeddedPostgres(pgdata)
        pg.user = "pgserver" if os.geteuid() == 0 else None  # as start() would have
        pg._started = True
        await asyncio.to_thread(pg.stop)


async def health_status(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(resp.status)


@pytest.mark.slow
async def test_a_second_serve_on_the_same_data_dir_refuses_and_spares_the_first(
    data_dir: Path,
) -> None:
    first = Serve(data_dir)
    try:
        await first.start()
        pgdata = data_dir / "pgdata"
        postmaster = int((pgdata / "postmaster.pid").read_text().splitlines()[0])

        second = await asyncio.create_subprocess_exec(
            str(CLI),
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            "--metrics-port",
            "0",
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out_b, _ = await asyncio.wait_for(second.communicate(), timeout=60)
        out = out_b.decode()
        assert second.returncode not in (0, None), out
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1, out
        assert "already running" in lines[0]
        assert str(pgdata.resolve()) in lines[0]
        assert f"pid {postmaster}" in lines[0]
        assert "port 5432" in lines[0]

        # The first server's database was not touched: same postmaster, still serving.
        assert postgres_pids(pgdata) and postmaster in postgres_pids(pgdata)
        assert await health_status(first.target) == health_pb2.HealthCheckResponse.SERVING
        code, out = await first.terminate()
        assert code == 0, out
        assert "Traceback" not in out
    finally:
        await first.kill()


@pytest.mark.slow
def test_a_stale_pid_file_is_cleaned_up_and_its_pid_left_alone(scratch: Path) -> None:
    pgdata = scratch / "pgdata"
    pg = EmbeddedPostgres(pgdata)
    pg.start()
    pidfile = (pgdata / "postmaster.pid").read_text().splitlines()
    pg.stop()
    # A postmaster that died (kill -9, a reboot) left its pid file, and its PID now belongs to
    # an unrelated program: starting must neither signal that program nor refuse.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        pidfile[0] = str(bystander.pid)
        (pgdata / "postmaster.pid").write_text("\n".join(pidfile) + "\n")
        if os.geteuid() == 0:
            os.chown(pgdata / "postmaster.pid", pgdata.stat().st_uid, pgdata.stat().st_gid)
        pg = EmbeddedPostgres(pgdata)
        pg.start()
        try:
            assert bystander.poll() is None, "the unrelated process was signalled"
            live = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
            assert live != bystander.pid
            # While it runs, another launcher on the same directory refuses.
            with pytest.raises(AlreadyRunning, match=f"pid {live}"):
                EmbeddedPostgres(pgdata).start()
            assert live in postgres_pids(pgdata)
        finally:
            pg.stop()
    finally:
        bystander.kill()
        bystander.wait()


def tracebacks_outside_dispatch(out: str) -> list[str]:
    """The log line before each traceback, unless it comes from the dispatcher (whose outage
    logging is handled with the engine)."""
    lines = out.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            before = next((b for b in reversed(lines[:i]) if b[:1].isdigit()), "")
            if "jobqueue_grpc.dispatch" not in before:
                found.append(before or "(none)")
    return found


@pytest.mark.slow
async def test_a_database_outage_logs_lines_not_tracebacks(data_dir: Path) -> None:
    srv = Serve(data_dir)
    try:
        await srv.start()
        assert srv.proc is not None and srv.proc.stdout is not None
        pgdata = data_dir / "pgdata"
        postmaster = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        os.kill(postmaster, signal.SIGKILL)  # the database dies under the server

        seen = ""
        end = time.monotonic() + 30
        while seen.count("health check: database not answering") < 2 or "asyncpg.pool" not in seen:
            assert time.monotonic() < end, f"no outage lines within 30 s:\n{seen}"
            line = await asyncio.wait_for(srv.proc.stdout.readline(), timeout=30)
            assert line, f"server exited:\n{seen}"
            seen += line.decode(errors="replace")
        assert await health_status(srv.target) == health_pb2.HealthCheckResponse.NOT_SERVING

        code, rest = await srv.terminate()
        out = seen + rest
        # It stopped as asked; the dead database is one line, and a stale pid file is gone.
        assert code == 0, out
        assert f"embedded PostgreSQL in {pgdata.resolve()} was no longer running" in out
        assert not (pgdata / "postmaster.pid").exists()
        assert [
            line for line in out.splitlines() if "asyncpg.pool" in line and "Error: " not in line
        ] == [], out
        assert tracebacks_outside_dispatch(out) == [], out
    finally:
        await srv.kill()
