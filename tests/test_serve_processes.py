"""`serve --processes N`: N server processes on one port (SO_REUSEPORT), each a replica.

Real subprocesses and a real database: both processes listen, calls over many connections all
land, jobs are worked through either process, SIGTERM stops them all with exit 0, and the death
of an extra process stops the server with exit 1 (its supervisor restarts it whole).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import grpc

from jobqueue_grpc import JobContext, Worker
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from tests.support import CLI, exit_code, free_port, running, wait_until


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (one per process that shares it)."""
    needle = f"0100007F:{port:04X}"
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if local.endswith(needle) and state == "0A":  # 0A: LISTEN
                n += 1
    return n


def extra_processes(pid: int) -> list[int]:
    """The server's extra processes: its children that run multiprocessing's spawn_main."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            out.append(int(proc.name))
    return out


def serve(db_url: str, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    with (tmp_path / "serve.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [
                str(CLI),
                "serve",
                "--database-url",
                db_url,
                "--port",
                str(port),
                "--processes",
                "2",
                "--metrics-port",
                "0",
                "--http-port",
                "0",
                "--grace-period",
                "5",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_two_processes_share_the_port_and_the_work(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = serve(db_url, port, tmp_path)
    try:
        await wait_until(lambda: _true(listeners(port) == 2), within=60, what="two listeners")
        assert len(extra_processes(server.pid)) == 1
        # Many connections, so that the kernel gives both processes some.
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
        try:
            done: set[str] = set()
            worker = Worker(f"127.0.0.1:{port}", queues=["procs"], concurrency=50)

            @worker.handler("noop")
            async def noop(ctx: JobContext) -> None:
                done.add(ctx.job.id)

            async with running(worker):
                calls = [
                    job_service_pb2_grpc.JobServiceStub(ch).Enqueue(
                        job_service_pb2.EnqueueRequest(queue="procs", kind="noop"), timeout=30
                    )
                    for ch in channels
                    for _ in range(10)
                ]
                ids = {r.job.id for r in await asyncio.gather(*calls)}
                assert len(ids) == 80
                await wait_until(lambda: _true(done >= ids), within=60, what="all jobs run")
            stub = job_service_pb2_grpc.JobServiceStub(channels[0])
            for job_id in ids:
                got = await stub.GetJob(job_service_pb2.GetJobRequest(id=job_id), timeout=10)
                assert got.job.state == job_pb2.JOB_STATE_SUCCEEDED
        finally:
            for ch in channels:
                await ch.close()
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, within=60) == 0
        assert listeners(port) == 0
        assert extra_processes(server.pid) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_an_extra_process_dying_stops_the_server(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = serve(db_url, port, tmp_path)
    try:
        await wait_until(lambda: _true(listeners(port) == 2), within=60, what="two listeners")
        [extra] = extra_processes(server.pid)
        os.kill(extra, signal.SIGKILL)
        assert await exit_code(server, within=60) == 1
        assert listeners(port) == 0
        assert "a server process exited" in (tmp_path / "serve.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def _true(value: bool) -> bool:
    return value
