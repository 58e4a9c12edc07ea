"""The one home of the helpers every kind of test shares: waiting on a condition with a deadline,
free loopback ports, scratch databases, reading a refusal's google.rpc details, running the CLI,
SDK workers in-process, and worker/server subprocesses.

Waits are conditions polled until a deadline, never sleeps standing in for synchronisation; a
deadline is a bound on how long a test may hang, not a timed assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobqueue_grpc import Worker

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# The console script of the package, installed beside the interpreter running the tests.
CLI = Path(sys.executable).with_name("jobqueue-grpc")


# -- waiting --------------------------------------------------------------------------------------
async def wait_for_value(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Polls `probe` until `done(value)` holds and returns that value; fails the test with the
    last value seen after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)  # poll interval


async def wait_until(
    check: Callable[[], Awaitable[object]],
    *,
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Polls the async `check` until it returns something truthy; fails after `within` s."""
    await wait_for_value(check, bool, within=within, interval=interval, what=what)


def wait_until_sync(
    check: Callable[[], object],
    *,
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """`wait_until` for plain (blocking) code: polls `check` until truthy or the deadline."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(interval)  # poll interval


# -- ports and databases --------------------------------------------------------------------------
def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def with_database(url: str, name: str) -> str:
    """`url` pointed at database `name` (works for unix-socket URLs too)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(pg_url: str, *statements: str) -> None:
    admin = await asyncpg.connect(pg_url)
    try:
        for sql in statements:
            await admin.execute(sql)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def scratch_database(
    pg_url: str, *, prefix: str = "t_", template: str | None = None
) -> AsyncIterator[str]:
    """A new database on the cluster at `pg_url` (a copy of `template`, else empty); yields its
    URL and drops it afterwards."""
    name = prefix + uuid.uuid4().hex[:16]
    copy = f' TEMPLATE "{template}"' if template else ""
    await _admin(pg_url, f'CREATE DATABASE "{name}"{copy}')
    try:
        yield with_database(pg_url, name)
    finally:
        await _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def recreate_database(pg_url: str, name: str) -> str:
    """Drops database `name` if it exists, creates it empty, and returns its URL."""
    await _admin(
        pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    return with_database(pg_url, name)


# -- refusals -------------------------------------------------------------------------------------
def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc Status a failed call carried (AssertionError if it carried none)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"{err.code()} without rich details: {err.details()}"
    return status


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo inside the rich status of a failed call (AssertionError if absent)."""
    for detail in rich_status(err).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {err.code()} {err.details()}")


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, field -> description."""
    out: dict[str, str] = {}
    for detail in rich_status(err).details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out.update({v.field: v.description for v in br.field_violations})
    return out


# -- the CLI and SDK workers ----------------------------------------------------------------------
async def run_cli(
    *args: str, stdin: str = "", env: Mapping[str, str] | None = None, within: float = 60
) -> tuple[int, str, str]:
    """Runs `jobqueue-grpc ARGS` to its end; returns (exit code, stdout, stderr). `env` replaces
    the environment when given."""
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def running(worker: Worker, *, connect_within: float = 30) -> AsyncIterator[Worker]:
    """Runs an SDK `worker` in this process until the block ends (connected on entry)."""
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.connected.wait(), connect_within)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


# -- subprocesses ---------------------------------------------------------------------------------
class Processes:
    """Worker (tests/workers_app.py) and server subprocesses of one test, each with its output in
    a file; every execution the workers run is one JSON line in `log`. Whatever is still running
    is killed by `cleanup`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "executions.jsonl"
        self.log.touch()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[int, Path] = {}
        self._files: list[IO[bytes]] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out_path = self.tmp / f"{name}-{len(self.procs)}.log"
        out = out_path.open("wb")
        self._files.append(out)
        p = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        self.procs.append(p)
        self.outputs[p.pid] = out_path
        return p

    def worker(self, address: str, concurrency: int = 10, **env: str) -> subprocess.Popen[bytes]:
        return self._spawn(
            "worker",
            [str(CLI), "worker", "tests.workers_app:worker", "--address", address],
            {"JQ_LOG": str(self.log), "JQ_CONCURRENCY": str(concurrency), **env},
        )

    def server(self, db_url: str, port: int, grace: float, **env: str) -> subprocess.Popen[bytes]:
        argv = [str(CLI), "serve", "--database-url", db_url, "--port", str(port)]
        argv += ["--metrics-port", "0", "--http-port", "0", "--grace-period", str(grace)]
        return self._spawn("server", argv, env)

    def output(self, p: subprocess.Popen[bytes]) -> str:
        return self.outputs[p.pid].read_text(errors="replace")

    def executions(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line]

    def of(self, job_id: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self.executions() if e["job"] == job_id and e["event"] == event]

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self._files:
            f.close()


async def exit_code(p: subprocess.Popen[bytes], within: float = 30) -> int:
    """Waits for subprocess `p` to exit and returns its code."""

    async def poll() -> int | None:
        return p.poll()

    code = await wait_for_value(
        poll, lambda c: c is not None, within=within, interval=0.05, what=f"pid {p.pid} to exit"
    )
    assert code is not None
    return code
