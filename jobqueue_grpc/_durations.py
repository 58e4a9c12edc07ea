"""Duration <-> seconds, for the SDK and the server alike (no server dependency)."""

from __future__ import annotations

from google.protobuf import duration_pb2


def seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def duration(secs: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(secs * 1e9))
    return d
