"""Other languages and operators' tools against a real server.

The Go and TypeScript clients' own test suites (clients/go, clients/typescript) run against an
in-process server, with its address in JOBQUEUE_ADDRESS; grpcurl drives the API by reflection;
grpc-health-probe watches health through a graceful shutdown.

Each test skips, saying why, when its toolchain is missing: `go` for the Go suite, `node`/`npm`
and `npm ci` for the TypeScript suite, and the pinned Go tools in .tools/bin (`make tools`; built
here on first use when `go` is present) for grpcurl and grpc-health-probe. CI sets
JOBQUEUE_REQUIRE_CLIENTS=1, which turns each of those skips into a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import grpc
import pytest

from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from tests.conftest import ServerFactory
from tests.lease_helpers import RawWorker, enqueue, get_job
from tests.support import wait_for_value

ROOT = Path(__file__).resolve().parent.parent
GO_CLIENT = ROOT / "clients" / "go"
TS_CLIENT = ROOT / "clients" / "typescript"
TOOLS_BIN = ROOT / ".tools" / "bin"
TOOLS = ("grpcurl", "grpc-health-probe")
# Long enough for a cold `go test` (compiling grpc-go) or a first `make tools` on two cores.
BUILD_TIMEOUT = 900
DEADLINE = 20.0

# grpc-health-probe's exit codes (see its README).
PROBE_SERVING = 0
PROBE_UNHEALTHY = 4


async def run(
    *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None, limit: float = 60
) -> tuple[int, str]:
    """Runs a program without blocking the event loop (the server under test lives on it)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail where the client suites must run (CI sets JOBQUEUE_REQUIRE_CLIENTS=1)."""
    if os.environ.get("JOBQUEUE_REQUIRE_CLIENTS"):
        pytest.fail(f"JOBQUEUE_REQUIRE_CLIENTS is set but {reason}")
    pytest.skip(reason)


def queue_name() -> str:
    return "clients-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def go_tools() -> Path:
    """.tools/bin with grpcurl and grpc-health-probe, built by scripts/tools.sh if missing."""
    if all((TOOLS_BIN / t).exists() for t in TOOLS):
        return TOOLS_BIN
    if shutil.which("go") is None:
        unavailable("go is not installed, so grpcurl and grpc-health-probe cannot be built")
    r = subprocess.run(
        [ROOT / "scripts" / "tools.sh"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    missing = [t for t in TOOLS if not (TOOLS_BIN / t).exists()]
    if r.returncode != 0 or missing:
        tail = (r.stdout + r.stderr).strip().splitlines()[-5:]
        unavailable(f"could not build the pinned Go tools (scripts/tools.sh): {tail}")
    return TOOLS_BIN


# -- the client suites -------------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_go_client_suite(make_server: ServerFactory) -> None:
    if shutil.which("go") is None:
        unavailable("go is not installed: Go client suite (clients/go) skipped")
    srv = await make_server()
    code, out = await run(
        "go",
        "test",
        "-count=1",
        "-v",
        "./...",
        cwd=GO_CLIENT,
        env={"JOBQUEUE_ADDRESS": f"127.0.0.1:{srv.port}"},
        limit=BUILD_TIMEOUT - 30,
    )
    assert code == 0, out
    # The suite skips itself without an address; make sure it really ran.
    assert "--- SKIP" not in out, out
    for name in (
        "TestEnqueueGetCancel",
        "TestLeaseProtocol",
        "TestWorkerHelper",
        "TestWaitReturnsTheTerminalJob",
        "TestWorkerBatchesOutcomes",
        "TestOutcomesGroupCommit",
        "TestDrainReportsBeforeHalfClose",
        "TestServerDrainingReportsBeforeHalfClose",
        "TestSharedExtender",
    ):
        assert f"--- PASS: {name}" in out, out


@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_typescript_client_suite(make_server: ServerFactory) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("node/npm not installed: TypeScript client suite (clients/typescript) skipped")
    if not (TS_CLIENT / "node_modules").is_dir():
        unavailable(
            "clients/typescript/node_modules missing (run `npm ci` there): "
            "TypeScript client suite skipped"
        )
    srv = await make_server()
    code, out = await run(
        "npm",
        "test",
        cwd=TS_CLIENT,
        env={"JOBQUEUE_ADDRESS": f"127.0.0.1:{srv.port}", "NO_COLOR": "1"},
        limit=BUILD_TIMEOUT - 30,
    )
    assert code == 0, out
    # node:test's summary lines: every test ran and passed.
    for line in ("pass 4", "fail 0", "skipped 0"):
        assert re.search(rf"\b{line}$", out, re.MULTILINE), out


# -- grpcurl -----------------------------------------------------------------------------------


async def grpcurl(tools: Path, port: int, *args: str, data: dict[str, Any] | None = None) -> Any:
    """grpcurl -plaintext against the server; parses the JSON answer of a call.

    grpcurl prints proto field names (`dead_letters`), not JSON camelCase, and int64 as strings.
    """
    cmd: list[str | Path] = [tools / "grpcurl", "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    code, out = await run(*cmd, f"127.0.0.1:{port}", *args)
    assert code == 0, f"grpcurl {' '.join(args)}: exit {code}\n{out}"
    return out if data is None else json.loads(out)


async def test_grpcurl_by_reflection(go_tools: Path, make_server: ServerFactory) -> None:
    srv = await make_server()
    services = (await grpcurl(go_tools, srv.port, "list")).split()
    for name in (
        "jobqueue.v1.JobService",
        "jobqueue.v1.WorkerService",
        "jobqueue.v1.DeadLetterService",
        "jobqueue.v1.QueueService",
        "jobqueue.v1.ScheduleService",
        "grpc.health.v1.Health",
    ):
        assert name in services

    q = queue_name()
    enq = await grpcurl(
        go_tools,
        srv.port,
        "jobqueue.v1.JobService/Enqueue",
        data={
            "queue": q,
            "kind": "send_email",
            "payload": {"to": "ada@example.com"},
            "max_attempts": 1,
        },
    )
    assert enq["created"] is True
    job_id = enq["job"]["id"]
    got = await grpcurl(go_tools, srv.port, "jobqueue.v1.JobService/GetJob", data={"id": job_id})
    assert got["job"]["state"] == "JOB_STATE_QUEUED"
    assert got["job"]["payload"] == {"to": "ada@example.com"}

    # A worker fails it for good, so there is a dead letter to list.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        worker = await RawWorker(ch).open(queues=(q,))
        leased = await worker.next_job()
        await worker.fail(
            leased, message="no such mailbox", failure_class=w.FAILURE_CLASS_DO_NOT_RETRY
        )
        await wait_for_value(
            lambda: get_job(ch, job_id),
            lambda j: j.state == job_pb2.JOB_STATE_FAILED,
            within=DEADLINE,
            what="the job to be dead-lettered",
        )
        await worker.close()

    dead = await grpcurl(
        go_tools,
        srv.port,
        "jobqueue.v1.DeadLetterService/ListDeadLetters",
        data={"filter": {"queue": q}},
    )
    assert [d["job_id"] for d in dead["dead_letters"]] == [job_id]

    queues = await grpcurl(go_tools, srv.port, "jobqueue.v1.QueueService/ListQueues", data={})
    ours = [x for x in queues["queues"] if x["name"] == q]
    assert len(ours) == 1 and ours[0]["counts"]["failed"] == "1"  # int64 is a JSON string
    await grpcurl(go_tools, srv.port, "jobqueue.v1.QueueService/PauseQueue", data={"name": q})
    got_q = await grpcurl(go_tools, srv.port, "jobqueue.v1.QueueService/GetQueue", data={"name": q})
    assert got_q["queue"]["paused"] is True


# -- grpc-health-probe -------------------------------------------------------------------------


async def test_health_probe_through_graceful_shutdown(
    go_tools: Path, make_server: ServerFactory, db: asyncpg.Connection
) -> None:
    # A long grace period and a job held on an open Lease stream keep the server draining.
    srv = await make_server(grace_period=120.0)
    probe = go_tools / "grpc-health-probe"
    addr = f"-addr=127.0.0.1:{srv.port}"
    code, out = await run(probe, addr)
    assert code == PROBE_SERVING, out
    assert "SERVING" in out
    code, out = await run(probe, addr, "-service=jobqueue.v1.WorkerService")
    assert code == PROBE_SERVING, out

    q = queue_name()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        job_id = (await enqueue(ch, "hold", queue=q)).job.id
        worker = await RawWorker(ch).open(queues=(q,))
        leased = await worker.next_job()

        stopping = asyncio.create_task(srv.stop())
        end = time.monotonic() + DEADLINE
        while True:
            code, out = await run(probe, addr)
            if code == PROBE_UNHEALTHY:
                break
            assert code == PROBE_SERVING, out
            assert time.monotonic() < end, "health never went NOT_SERVING"
        assert "NOT_SERVING" in out
        # The server is still up and draining: the stream is told, and the held job is still ours.
        await worker.next_of("draining")
        assert not stopping.done()
        await worker.complete(leased, result={"ok": True})
        # Nothing is held any more, so the drain ends well before the grace period.
        await asyncio.wait_for(stopping, DEADLINE)
    # The server is gone now; the database shows the outcome sent while draining was kept.
    state = await db.fetchval("SELECT state FROM jobqueue.jobs WHERE id = $1", uuid.UUID(job_id))
    assert state == "succeeded"
