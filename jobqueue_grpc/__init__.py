"""jobqueue-grpc: a job queue served over gRPC, with PostgreSQL as its only state."""

__version__ = "0.1.0"
