"""examples/ as a newcomer runs them: `jobqueue-grpc worker examples.worker:worker` and
`python examples/producer.py` as real processes against a real server.

The worker logs one line when its stream is open and one per job outcome; the producer uses a
fresh idempotency key on every run, so a second run never reports an earlier run's job as done.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "jobqueue-grpc")
DEADLINE = 30.0


def read(path: Path) -> str:
    return path.read_text(errors="replace")


async def wait_for_text(path: Path, *needles: str, proc: asyncio.subprocess.Process) -> str:
    """Polls the file until every needle is in it; fails early if `proc` exits."""
    end = time.monotonic() + DEADLINE
    while True:
        text = read(path)
        if all(n in text for n in needles):
            return text
        if proc.returncode is not None:
            pytest.fail(f"exited ({proc.returncode}) before printing {needles}:\n{text}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {needles} in:\n{text}")
        await asyncio.sleep(0.1)


async def producer(port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/producer.py",
        f"127.0.0.1:{port}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


@pytest.mark.slow
async def test_example_worker_logs_and_producer_keys(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    srv = await make_server()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            CLI,
            "worker",
            "examples.worker:worker",
            "--address",
            f"127.0.0.1:{srv.port}",
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await wait_for_text(log_path, "connected to 127.0.0.1", proc=worker)
        connect = [line for line in read(log_path).splitlines() if "connected to" in line]
        assert len(connect) == 1, connect
        assert "queues default" in connect[0] and "concurrency 10" in connect[0]
        assert "resize_image, send_email" in connect[0]

        first = await producer(srv.port)
        out_b, _ = await asyncio.wait_for(first.communicate(), DEADLINE)
        out = out_b.decode()
        assert first.returncode == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("enqueued ") and lines[0].endswith(" created"), out
        job_id = lines[0].split()[1]
        assert lines[1] == f"same key again: {job_id} already there", out
        assert lines[2].startswith("done: {'sent_to': 'ada@example.com'}"), out

        # One INFO line per outcome: a success, a dead-letter, a retry, then its success.
        text = await wait_for_text(
            log_path,
            f"job {job_id} (send_email, attempt 1) succeeded",
            "(send_email, attempt 1) failed, not to be retried: not an address: 'nobody'",
            "(resize_image, attempt 1) failed, retry after 1s: the image store is warming up",
            "(resize_image, attempt 2) succeeded",
            proc=worker,
        )
        assert "Traceback" not in text, text

        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), DEADLINE) == 0, read(log_path)

        # A second run with no worker: its job is new, never an earlier run's finished one.
        second = await producer(srv.port)
        assert second.stdout is not None
        line = (await asyncio.wait_for(second.stdout.readline(), DEADLINE)).decode()
        assert line.startswith("enqueued ") and line.strip().endswith(" created"), line
        assert line.split()[1] != job_id
        second.kill()
        await second.wait()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
