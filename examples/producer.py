"""Enqueue a few jobs and wait for the first to finish: `python examples/producer.py`.

`wait` rides WatchJob: the server pushes the job's changes, nothing polls. Run
`python examples/worker.py` beside it, or the wait ends after its timeout.
"""

from __future__ import annotations

from jobqueue_grpc import Client
from jobqueue_grpc.client import JobState

with Client("localhost:50051") as client:
    r = client.enqueue("send_email", {"to": "ada@example.com"}, idempotency_key="welcome-ada")
    print("enqueued", r.job.id, "created" if r.created else "already there")
    client.enqueue("send_email", {"to": "nobody"})
    client.enqueue("resize_image", {"path": "/tmp/cat.png"}, max_attempts=3)
    job = client.wait(r.job.id, timeout=30)
    print(JobState.Name(job.state), dict(job.result))
