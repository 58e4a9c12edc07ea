"""What passes between a worker's stream and the engine, as plain values (api/lease.py turns
them into and out of the wire's LeaseRequest/LeaseResponse). A new Lease message gets its value
here, its decoding or encoding in api/lease.py, and its handling in the engine room it concerns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from jobqueue_grpc.domain.retry import FailureClass

if TYPE_CHECKING:
    from jobqueue_grpc.engine.streams import Lease


# -- from the worker ------------------------------------------------------------------------------
class Completion(NamedTuple):
    job_id: str
    token: str
    result: str | None  # JSON text
    problem: str | None = None  # why the result cannot be taken (refused as INVALID)


class WorkerFailure(NamedTuple):
    job_id: str
    token: str
    failure_class: FailureClass
    retry_after: float | None
    message: str
    details: dict[str, object] | None


class Held(NamedTuple):
    """A job named with its lease (a cancel acknowledged)."""

    job_id: str
    token: str


class Extension(NamedTuple):
    job_id: str
    token: str
    seconds: float | None  # None: by the job's lease duration


class Progress(NamedTuple):
    job_id: str
    token: str
    progress: str | None  # JSON text
    problem: str | None = None


# -- to the worker --------------------------------------------------------------------------------
class RejectCode(enum.Enum):
    STALE = "stale"  # the lease ended (expired, moved on): the outcome changed nothing
    UNKNOWN = "unknown"  # no such job is leased on this stream
    INVALID = "invalid"  # the message itself is unusable
    UNRECORDED = "unrecorded"  # the server could not record it (the lease still runs its course)


@dataclass(frozen=True, slots=True)
class Delivered:
    """Jobs leased to the stream, sent in one message."""

    leases: list[Lease]


@dataclass(frozen=True, slots=True)
class Rejected:
    job_id: str
    code: RejectCode
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseExtended:
    job_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class CancelNotice:
    job_id: str


@dataclass(frozen=True, slots=True)
class Draining:
    grace: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


HEARTBEAT = Heartbeat()

Outgoing = Delivered | Rejected | LeaseExtended | CancelNotice | Draining | Heartbeat
