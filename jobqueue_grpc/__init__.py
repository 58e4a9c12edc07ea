"""jobqueue-grpc: a job queue served over gRPC, with PostgreSQL as its only state.

The Python SDK: `AsyncClient`/`Client` enqueue and inspect jobs; `Worker` runs handlers. It needs
only gRPC (`pip install jobqueue-grpc`); the server is `pip install 'jobqueue-grpc[server]'`.
"""

from jobqueue_grpc._channel import TLS
from jobqueue_grpc.client import AsyncClient, Client
from jobqueue_grpc.worker import DoNotRetry, JobCancelled, JobContext, RetryAfter, Worker

__version__ = "0.1.0"

__all__ = [
    "TLS",
    "AsyncClient",
    "Client",
    "DoNotRetry",
    "JobCancelled",
    "JobContext",
    "RetryAfter",
    "Worker",
]
