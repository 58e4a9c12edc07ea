"""Types shared by the store modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

Row: TypeAlias = asyncpg.Record  # a jobs row read with {job_columns}

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection, whether taken straight or from the pool.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Conn = asyncpg.Connection
