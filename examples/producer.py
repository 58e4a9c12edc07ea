"""Enqueue a few jobs and wait for the first to finish: `python examples/producer.py [ADDRESS]`.

Start a server (`make serve`) and a worker (`jobqueue-grpc worker examples.worker:worker`) first.
Each run uses its own idempotency key, so a job from an earlier run is never mistaken for this
one; enqueuing twice with one key returns the job the first call made. `wait` rides WatchJob: the
server pushes the job's changes, nothing polls.
"""

from __future__ import annotations

import sys
import uuid

import grpc

from jobqueue_grpc import Client
from jobqueue_grpc.client import JobState

address = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
key = f"welcome-ada-{uuid.uuid4().hex[:12]}"  # unique per run

with Client(address) as client:
    r = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key=key)
    print("enqueued", r.job.id, "created" if r.created else "already there", flush=True)
    again = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key=key)
    print("same key again:", again.job.id, "created" if again.created else "already there")
    client.enqueue("send_email", {"to": "nobody"})  # the worker dead-letters this one
    client.enqueue("resize_image", {"path": "/tmp/cat.png"}, max_attempts=3)
    try:
        job = client.wait(r.job.id, timeout=10)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        sys.exit(f"job {r.job.id} has not finished after 10 s: is a worker running?")
    print(
        "done:" if job.state == JobState.Value("JOB_STATE_SUCCEEDED") else JobState.Name(job.state),
        dict(job.result),
    )
