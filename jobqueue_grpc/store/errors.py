"""Driver errors as domain errors: what leaves the store is a JobQueueError or a real fault.

Every store area is wrapped with `translated` (each public coroutine method), so the api's one
error table (api/errors.py) never needs to know the driver.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import asyncpg

from jobqueue_grpc.domain.errors import FailedPrecondition, Unavailable

# Failures of the database connection itself: the client may retry elsewhere or later.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_CONFLICT = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)
UNIQUE_INDEX = "jobs_unique_key"  # migration 0020: unique jobs (domain/unique.py)


def database_unavailable() -> Unavailable:
    return Unavailable("the database is unavailable", reason="DATABASE_UNAVAILABLE")


def conflict() -> Unavailable:
    return Unavailable("a concurrent change conflicted; retry", reason="CONFLICT")


def unique_conflict() -> FailedPrecondition:
    return FailedPrecondition(
        "a job with the same unique key is unfinished (or in another of its unique states)",
        reason="UNIQUE_CONFLICT",
    )


def translate(exc: BaseException) -> BaseException:
    """The domain error for a driver error; anything else unchanged."""
    if (
        isinstance(exc, asyncpg.exceptions.UniqueViolationError)
        and exc.constraint_name == UNIQUE_INDEX
    ):  # a job moving back into a unique state (a requeue) meets its duplicate
        return unique_conflict()
    if isinstance(exc, _UNAVAILABLE):
        return database_unavailable()
    if isinstance(exc, _CONFLICT):
        return conflict()
    return exc


P = ParamSpec("P")
R = TypeVar("R")


def _wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (*_UNAVAILABLE, *_CONFLICT, asyncpg.exceptions.UniqueViolationError) as exc:
            raise translate(exc) from exc

    return call


T = TypeVar("T", bound=type[Any])


def translated(cls: T) -> T:
    """Wraps every public coroutine method of a store class with the translation."""
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(fn):
            setattr(cls, name, _wrap(fn))
    return cls
