"""Opaque keyset page tokens: the sort key of a page's last row, bound to the filters used."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime

from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument


def _fingerprint(filters: tuple[object, ...]) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:12]


def encode(at: datetime, key: uuid.UUID, filters: tuple[object, ...]) -> str:
    raw = json.dumps({"t": at.isoformat(), "k": str(key), "f": _fingerprint(filters)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, filters: tuple[object, ...]) -> tuple[datetime, uuid.UUID] | None:
    """The cursor in `token`, or None for the first page; INVALID_ARGUMENT when it is forged,
    corrupt, or was issued for other filters."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        at = datetime.fromisoformat(raw["t"])
        key = uuid.UUID(raw["k"])
        fingerprint = raw["f"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "page_token is not a token this server issued",
            [FieldViolation("page_token", "malformed page token")],
            reason="INVALID_PAGE_TOKEN",
        ) from None
    if fingerprint != _fingerprint(filters) or at.tzinfo is None:
        raise InvalidArgument(
            "page_token was issued for other filters",
            [FieldViolation("page_token", "page_token does not match the request's filters")],
            reason="INVALID_PAGE_TOKEN",
        )
    return at, key
