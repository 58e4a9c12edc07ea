"""Enqueue a few jobs and watch one finish: `python examples/producer.py [ADDRESS]`.

Start a server (`make serve`) and a worker (`jobqueue-grpc worker examples.worker:worker`) first.
Each run uses its own idempotency key, so a job from an earlier run is never mistaken for this
one; enqueuing twice with one key returns the job the first call made.
"""

from __future__ import annotations

import sys
import time
import uuid

from jobqueue_grpc import Client
from jobqueue_grpc.client import JobState

address = sys.argv[1] if len(sys.argv) > 1 else "localhost:50051"
key = f"welcome-ada-{uuid.uuid4().hex[:12]}"  # unique per run

with Client(address) as client:
    r = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key=key)
    print("enqueued", r.job.id, "created" if r.created else "already there")
    again = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key=key)
    print("same key again:", again.job.id, "created" if again.created else "already there")
    client.enqueue("send_email", {"to": "nobody"})  # the worker dead-letters this one
    client.enqueue("resize_image", {"path": "/tmp/cat.png"}, max_attempts=3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.get_job(r.job.id)
        if job.state == JobState.Value("JOB_STATE_SUCCEEDED"):
            print("done:", dict(job.result))
            break
        time.sleep(0.2)
    else:
        name = JobState.Name(job.state)
        sys.exit(f"job {r.job.id} is still {name} after 10 s: is a worker running?")
