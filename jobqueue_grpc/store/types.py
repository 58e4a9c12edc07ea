"""Types shared by the store modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

Row: TypeAlias = asyncpg.Record  # a jobs row read with {job_columns}

# The application_name of a dispatcher's LISTEN connection: how replicas find one another.
LISTENER_APP = "jobqueue-grpc-listener"


@dataclass(slots=True)
class Peers:
    """Whether another replica's dispatcher listens on this database.

    An enqueue NOTIFYs only when one does (this replica wakes its own dispatcher in-process). A
    NOTIFY is not free: its commit takes PostgreSQL's notification queue lock and wakes every
    listening session, whose process then reads and ignores its own echo, all while the new job
    is on its way to a worker. The dispatcher keeps this up to date (dispatch/dispatcher.py,
    _listen_loop). While it does not know, it is True: a wake-up nobody needed costs a little
    CPU, a missing one costs another replica up to a second of latency.
    """

    listening: bool = True


if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection, whether taken straight or from the pool.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection
