"""What every background loop of the engine shares: how a failed pass is reported."""

from __future__ import annotations

import logging

from jobqueue_grpc.domain.errors import Unavailable


def report(log: logging.Logger, what: str, exc: BaseException) -> None:
    """One line while the database is away (it says so every pass); a traceback for a bug."""
    if isinstance(exc, Unavailable):
        log.warning("%s: %s", what, exc)
    else:
        log.error("%s", what, exc_info=exc)
