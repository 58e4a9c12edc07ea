"""Structured logs: the real `serve` process writes JSON lines, never payloads or tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2, job_service_pb2_grpc
from jobqueue_grpc.logs import JsonFormatter, TextFormatter, fields, job_logger
from tests.support import CLI, free_port

TOKEN = "tok-very-secret-5f1e0c"
PAYLOAD_SECRET = "payload-secret-8d2a41"


async def _read_line(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), 60)).decode()


async def test_serve_writes_json_lines_without_secrets(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "JOBQUEUE_AUTH_TOKENS": f"producer:{TOKEN}"}
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "serve",
        "--database-url",
        db_url,
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--grace-period",
        "1",
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    try:
        line = await _read_line(proc.stdout)
        assert "listening" in line, line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            payload = struct_pb2.Struct()
            payload.update({"password": PAYLOAD_SECRET})
            req = job_service_pb2.EnqueueRequest(kind="send_email", payload=payload)
            md = [("authorization", f"Bearer {TOKEN}")]
            resp = await stub.Enqueue(req, metadata=md, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Enqueue(req, metadata=[("authorization", f"Bearer {TOKEN}x")])
            with pytest.raises(grpc.aio.AioRpcError):  # payload too large: still not logged
                big = struct_pb2.Struct()
                big.update({"secret": PAYLOAD_SECRET * 100_000})
                await stub.Enqueue(
                    job_service_pb2.EnqueueRequest(kind="k", payload=big), metadata=md
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        err = (await stderr_task).decode()
    assert code == 0, err

    records: list[dict[str, Any]] = []
    for raw in err.splitlines():
        if raw.strip():
            records.append(json.loads(raw))  # every stderr line is one JSON object
    assert records
    for r in records:
        assert {"time", "level", "logger", "message"} <= r.keys(), r
    rpcs = [r for r in records if r.get("method") == "/jobqueue.v1.JobService/Enqueue"]
    assert {r["code"] for r in rpcs} == {"OK", "UNAUTHENTICATED", "INVALID_ARGUMENT"}
    for r in rpcs:
        assert r["peer"] and isinstance(r["duration_ms"], int | float)
    assert any("shutting down" in r["message"] for r in records)
    assert resp.job.id
    assert TOKEN not in err
    assert PAYLOAD_SECRET not in err


def _record(**extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("jobqueue_grpc.test", logging.INFO, __file__, 1, "job %s", ("x",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_only_known_fields() -> None:
    rec = _record(**fields(job_id="j1", queue="q", kind="k", worker_id="w1"), payload={"a": 1})
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "job x"
    assert out["level"] == "INFO" and out["logger"] == "jobqueue_grpc.test"
    assert (out["job_id"], out["queue"], out["kind"], out["worker_id"]) == ("j1", "q", "k", "w1")
    assert "payload" not in out


def test_text_lines_append_fields() -> None:
    line = TextFormatter().format(_record(**fields(job_id="j1", queue="q")))
    assert line.endswith("job x job_id=j1 queue=q")


def test_fields_refuses_payloads_and_tokens() -> None:
    for bad in ("payload", "token", "authorization"):
        with pytest.raises(ValueError):
            fields(**{bad: "x"})


def test_job_logger_adds_fields(caplog: pytest.LogCaptureFixture) -> None:
    log = job_logger(logging.getLogger("jobqueue_grpc.test"), job_id="j9", kind="k")
    with caplog.at_level(logging.INFO, logger="jobqueue_grpc.test"):
        log.info("leased", extra=fields(worker_id="w"))
    rec = caplog.records[-1]
    assert (rec.job_id, rec.kind, rec.worker_id) == ("j9", "k", "w")  # type: ignore[attr-defined]
