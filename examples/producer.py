"""Enqueue a few jobs and watch them finish: `python examples/producer.py`."""

from __future__ import annotations

import time

from jobqueue_grpc import Client
from jobqueue_grpc.client import JobState

with Client("localhost:50051") as client:
    r = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key="welcome-ada")
    print("enqueued", r.job.id, "created" if r.created else "already there")
    client.enqueue("send_email", {"to": "nobody"})
    client.enqueue("resize_image", {"path": "/tmp/cat.png"}, max_attempts=3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.get_job(r.job.id)
        if job.state == JobState.Value("JOB_STATE_SUCCEEDED"):
            print("done:", dict(job.result))
            break
        time.sleep(0.2)
