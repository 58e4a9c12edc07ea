"""The HTTP port with real curl: every unary RPC as Connect JSON, errors with their google.rpc
details, auth, CORS, gRPC-Web, a server stream over Connect, metrics, and Lease refused."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from typing import Any

import pytest
from google.rpc import error_details_pb2

from jobqueue_grpc import AsyncClient, DoNotRetry, JobContext, Worker, metrics
from jobqueue_grpc.gen.jobqueue.v1 import (
    dead_letter_service_pb2,
    job_service_pb2,
    queue_service_pb2,
    schedule_service_pb2,
)
from jobqueue_grpc.server import JobQueueServer
from tests import conftest
from tests.support import running, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def curl(*args: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """Runs curl; (HTTP status, response headers, body)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--max-time", "20", *args,
        *(["--data-binary", "@-"] if data is not None else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(data)
    assert proc.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def call(
    port: int, method: str, body: dict[str, Any], token: str | None = None
) -> tuple[int, Any]:
    """A unary RPC the way a user would: curl, JSON in, JSON out."""
    args = ["-H", "Content-Type: application/json"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    status, _, out = await curl(
        *args, f"http://127.0.0.1:{port}/jobqueue.v1.{method}", data=json.dumps(body).encode()
    )
    return status, json.loads(out) if out else None


def details(error: dict[str, Any]) -> dict[str, Any]:
    """The google.rpc details of a Connect error body, decoded."""
    out: dict[str, Any] = {}
    for d in error.get("details", []):
        raw = base64.b64decode(d["value"] + "=" * (-len(d["value"]) % 4))
        if d["type"] == "google.rpc.ErrorInfo":
            out["ErrorInfo"] = error_details_pb2.ErrorInfo.FromString(raw)
        elif d["type"] == "google.rpc.BadRequest":
            out["BadRequest"] = error_details_pb2.BadRequest.FromString(raw)
    return out


@pytest.fixture
async def http(make_server: conftest.ServerFactory) -> JobQueueServer:
    return await make_server(http_port=free_port())


UNARY = {
    f"{s.name}/{m.name}"
    for mod in (job_service_pb2, dead_letter_service_pb2, queue_service_pb2, schedule_service_pb2)
    for s in mod.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if not m.server_streaming and not m.client_streaming
}


async def test_every_unary_rpc_over_curl_and_json(http: JobQueueServer) -> None:
    port = http.http_port
    called: set[str] = set()

    async def ok(method: str, body: dict[str, Any]) -> Any:
        status, out = await call(port, method, body)
        assert status == 200, (method, out)
        called.add(method)
        return out

    job = (await ok("JobService/Enqueue", {"kind": "x", "queue": "web", "payload": {"a": 1}}))[
        "job"
    ]
    assert job["state"] == "JOB_STATE_QUEUED" and job["payload"] == {"a": 1}
    batch = await ok("JobService/EnqueueBatch", {"jobs": [{"kind": "y", "queue": "web"}] * 2})
    assert len(batch["results"]) == 2
    assert (await ok("JobService/GetJob", {"id": job["id"]}))["job"]["id"] == job["id"]
    listed = await ok("JobService/ListJobs", {"queue": "web", "kind": "x"})
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    cancelled = await ok("JobService/CancelJob", {"id": job["id"]})
    assert cancelled["outcome"] == "CANCEL_OUTCOME_CANCELLED"
    dry = await ok("JobService/CancelJobs", {"queue": "web", "kind": "y", "dryRun": True})
    assert dry == {"matched": "2"}  # int64 is a string in JSON; zeros are left out

    every = {"id": "hourly", "every": "3600s", "job": {"kind": "tick", "queue": "sched"}}
    made = (await ok("ScheduleService/CreateSchedule", {"schedule": every}))["schedule"]
    assert made["id"] == "hourly" and made["job"]["kind"] == "tick"
    got = await ok("ScheduleService/GetSchedule", {"id": "hourly"})
    assert got["schedule"]["every"] == "3600s"
    listed_s = await ok("ScheduleService/ListSchedules", {})
    assert [s["id"] for s in listed_s["schedules"]] == ["hourly"]
    cron = {**every, "every": None, "cron": "0 3 * * *"}
    updated = await ok("ScheduleService/UpdateSchedule", {"schedule": cron})
    assert updated["schedule"]["cron"] == "0 3 * * *"
    assert (await ok("ScheduleService/PauseSchedule", {"id": "hourly"}))["schedule"]["paused"]
    assert (
        "paused" not in (await ok("ScheduleService/ResumeSchedule", {"id": "hourly"}))["schedule"]
    )
    fired = await ok("ScheduleService/TriggerSchedule", {"id": "hourly"})
    assert fired["created"] is True and fired["job"]["queue"] == "sched"
    await ok("ScheduleService/DeleteSchedule", {"id": "hourly"})

    queues = await ok("QueueService/ListQueues", {})
    assert [q["name"] for q in queues["queues"]] == ["sched", "web"]
    assert queues["queues"][1]["counts"]["queued"] == "2"  # int64 is a string in JSON
    assert (await ok("QueueService/GetQueue", {"name": "web"}))["queue"]["name"] == "web"
    assert (await ok("QueueService/PauseQueue", {"name": "dead"}))["queue"]["paused"] is True
    assert "paused" not in (await ok("QueueService/ResumeQueue", {"name": "dead"}))["queue"]
    limited = await ok("QueueService/SetQueueLimits", {"name": "web", "limits": {"maxRunning": 2}})
    assert limited["queue"]["limits"] == {"maxRunning": 2}
    assert "limits" not in (await ok("QueueService/SetQueueLimits", {"name": "web"}))["queue"]
    per_kind = await ok(
        "QueueService/SetQueueLimits", {"name": "web", "kind": "pdf", "limits": {"rate": 5}}
    )
    assert per_kind["queue"]["kindLimits"] == [{"kind": "pdf", "limits": {"rate": 5, "burst": 5}}]
    assert (
        "kindLimits"
        not in (await ok("QueueService/SetQueueLimits", {"name": "web", "kind": "pdf"}))["queue"]
    )

    # two dead letters, made by a real worker
    worker = Worker(f"127.0.0.1:{http.port}", queues=["dead"])

    @worker.handler("boom")
    async def boom(ctx: JobContext) -> None:
        raise DoNotRetry("no")

    async with AsyncClient(f"127.0.0.1:{http.port}") as client:
        dead = [(await client.enqueue("boom", queue="dead")).job.id for _ in range(3)]

        async def all_dead() -> bool:
            status, out = await call(port, "DeadLetterService/GetDeadLetterStats", {})
            return status == 200 and out.get("total") == "3"

        async with running(worker):
            await wait_until(all_dead, within=15)
    called.add("DeadLetterService/GetDeadLetterStats")
    stats = await ok("DeadLetterService/GetDeadLetterStats", {"filter": {"queue": "dead"}})
    assert stats["byKind"] == [{"name": "boom", "count": "3"}]
    listed_dl = await ok("DeadLetterService/ListDeadLetters", {"filter": {"kind": "boom"}})
    assert {d["jobId"] for d in listed_dl["deadLetters"]} == set(dead)
    one = await ok("DeadLetterService/GetDeadLetter", {"jobId": dead[0]})
    assert one["deadLetter"]["lastError"]["message"].endswith("no")
    requeued = await ok("DeadLetterService/RequeueDeadLetter", {"jobId": dead[0]})
    assert requeued["job"]["state"] == "JOB_STATE_QUEUED"
    await ok("DeadLetterService/DeleteDeadLetter", {"jobId": dead[1]})
    dry = await ok("DeadLetterService/RequeueDeadLetters", {"dryRun": True})
    assert dry == {"count": "1", "dryRun": True}
    purge = await ok("DeadLetterService/PurgeDeadLetters", {"filter": {"queue": "dead"}})
    assert purge["count"] == "1"

    assert called == UNARY  # every unary RPC of every service


async def test_an_error_is_connect_json_with_its_details(http: JobQueueServer) -> None:
    status, out = await call(http.http_port, "JobService/GetJob", {"id": "nope"})
    assert status == 400
    assert out["code"] == "invalid_argument"
    d = details(out)
    assert d["ErrorInfo"].reason == "MALFORMED_ID"
    assert d["ErrorInfo"].domain == "jobqueue-grpc"
    assert [v.field for v in d["BadRequest"].field_violations] == ["id"]

    status, out = await call(http.http_port, "JobService/Enqueue", {"kind": "Bad Kind!"})
    assert status == 400 and details(out)["BadRequest"].field_violations[0].field == "kind"

    missing = "0190f1e2-0000-7000-8000-000000000000"
    status, out = await call(http.http_port, "JobService/GetJob", {"id": missing})
    assert status == 404 and out["code"] == "not_found"
    assert details(out)["ErrorInfo"].reason == "JOB_NOT_FOUND"


async def test_auth_roles_and_refusals(make_server: conftest.ServerFactory) -> None:
    srv = await make_server(http_port=free_port(), auth_tokens="producer:p-secret admin:a-secret")
    port = srv.http_port
    status, out = await call(port, "QueueService/ListQueues", {})
    assert status == 401 and out["code"] == "unauthenticated"
    assert details(out)["ErrorInfo"].reason == "UNAUTHENTICATED"
    status, out = await call(port, "QueueService/ListQueues", {}, token="wrong")
    assert status == 401
    status, out = await call(port, "QueueService/ListQueues", {}, token="p-secret")
    assert status == 403 and out["code"] == "permission_denied"
    assert details(out)["ErrorInfo"].reason == "PERMISSION_DENIED"
    status, out = await call(port, "JobService/Enqueue", {"kind": "k"}, token="p-secret")
    assert status == 200
    status, out = await call(port, "QueueService/ListQueues", {}, token="a-secret")
    assert status == 200 and out["queues"][0]["name"] == "default"


async def test_calls_are_counted_with_the_grpc_ones(http: JobQueueServer) -> None:
    series = metrics.RPCS.labels("/jobqueue.v1.QueueService/ListQueues", "OK")
    before = series._value.get()
    assert (await call(http.http_port, "QueueService/ListQueues", {}))[0] == 200
    assert series._value.get() == before + 1


async def test_cors_is_off_unless_configured(make_server: conftest.ServerFactory) -> None:
    plain = await make_server(http_port=free_port())
    origin = "http://app.example"
    pre = ["-X", "OPTIONS", "-H", f"Origin: {origin}", "-H", "Access-Control-Request-Method: POST"]
    path = "/jobqueue.v1.QueueService/ListQueues"
    _, headers, _ = await curl(*pre, f"http://127.0.0.1:{plain.http_port}{path}")
    assert "access-control-allow-origin" not in headers

    srv = await make_server(http_port=free_port(), http_cors_origins=origin)
    status, headers, _ = await curl(*pre, f"http://127.0.0.1:{srv.http_port}{path}")
    assert status == 204
    assert headers["access-control-allow-origin"] == origin
    assert "authorization" in headers["access-control-allow-headers"]
    _, headers, _ = await curl(
        "-H", f"Origin: {origin}", "-H", "Content-Type: application/json",
        f"http://127.0.0.1:{srv.http_port}{path}", data=b"{}",
    )  # fmt: skip
    assert headers["access-control-allow-origin"] == origin
    _, headers, _ = await curl(
        "-X", "OPTIONS", "-H", "Origin: http://evil.example",
        "-H", "Access-Control-Request-Method: POST", f"http://127.0.0.1:{srv.http_port}{path}",
    )  # fmt: skip
    assert "access-control-allow-origin" not in headers


def envelope(flags: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def envelopes(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        flags, n = struct.unpack(">BI", data[:5])
        out.append((flags, data[5 : 5 + n]))
        data = data[5 + n :]
    return out


async def test_grpc_web_call(http: JobQueueServer) -> None:
    req = queue_service_pb2.ListQueuesRequest().SerializeToString()
    status, headers, body = await curl(
        "-H", "Content-Type: application/grpc-web+proto", "-H", "X-Grpc-Web: 1",
        f"http://127.0.0.1:{http.http_port}/jobqueue.v1.QueueService/ListQueues",
        data=envelope(0, req),
    )  # fmt: skip
    assert status == 200 and headers["content-type"].startswith("application/grpc-web")
    frames = envelopes(body)
    assert queue_service_pb2.ListQueuesResponse.FromString(frames[0][1]).queues == []
    assert frames[-1][0] & 0x80 and b"grpc-status: 0" in frames[-1][1].lower()


async def test_watch_job_streams_over_connect(http: JobQueueServer) -> None:
    _, out = await call(http.http_port, "JobService/Enqueue", {"kind": "k"})
    job_id = out["job"]["id"]
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-N", "--max-time", "20",
        "-H", "Content-Type: application/connect+json",
        f"http://127.0.0.1:{http.http_port}/jobqueue.v1.JobService/WatchJob",
        "--data-binary", "@-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(envelope(0, json.dumps({"id": job_id}).encode()))
    proc.stdin.close()
    head = await asyncio.wait_for(proc.stdout.readexactly(5), 10)
    first = json.loads(await proc.stdout.readexactly(struct.unpack(">BI", head)[1]))
    assert first["job"]["state"] == "JOB_STATE_QUEUED"
    assert (await call(http.http_port, "JobService/CancelJob", {"id": job_id}))[0] == 200
    rest, _ = await asyncio.wait_for(proc.communicate(), 10)
    frames = envelopes(rest)
    assert json.loads(frames[0][1])["job"]["state"] == "JOB_STATE_CANCELLED"
    assert frames[-1][0] & 0x02 and json.loads(frames[-1][1]) == {}  # end of stream, no error


async def test_lease_is_grpc_only_and_unknown_paths_404(http: JobQueueServer) -> None:
    status, out = await call(http.http_port, "WorkerService/Lease", {})
    assert status == 501 and out["code"] == "unimplemented"
    status, _, _ = await curl(f"http://127.0.0.1:{http.http_port}/nothing-here")
    assert status == 404


async def test_http_port_zero_is_off(server: JobQueueServer) -> None:
    assert server.http is None and server.http_port == 0
