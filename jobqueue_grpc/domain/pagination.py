"""Opaque keyset page tokens: the sort key of a page's last row, bound to the filters used and
signed, so that only tokens a server of this database issued are accepted.

A token is url-safe base64 (unpadded) of `body + mac`: `body` is compact JSON
`{"k": <uuid>, "f": <filters fingerprint>, "t": <iso time>}` ("t" only where the listing sorts on
a time: ListJobs sorts on the id alone, a UUIDv7 that carries its time), `mac` the first 16 bytes of
its HMAC-SHA256 under `secret`, a key every replica reads from the database (Store.page_token_key).
The MAC is checked before the body is parsed: a made-up token is refused without its JSON ever
being read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from datetime import datetime

from jobqueue_grpc.domain.errors import FieldViolation, InvalidArgument

MAC_BYTES = 16
MAX_TOKEN_CHARS = 512  # a genuine token is ~170 characters
_CONTEXT = b"jobqueue page token\x00"


def _fingerprint(filters: tuple[object, ...]) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:12]


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + body, hashlib.sha256).digest()[:MAC_BYTES]


def encode(at: datetime | None, key: uuid.UUID, filters: tuple[object, ...], secret: bytes) -> str:
    fields = {"k": str(key), "f": _fingerprint(filters)}
    if at is not None:
        fields["t"] = at.isoformat()
    body = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body + _mac(secret, body)).decode().rstrip("=")


def not_issued() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this server issued",
        [FieldViolation("page_token", "malformed page token")],
        reason="INVALID_PAGE_TOKEN",
    )


def decode(
    token: str, filters: tuple[object, ...], secret: bytes
) -> tuple[datetime | None, uuid.UUID] | None:
    """The cursor in `token`, or None for the first page; INVALID_ARGUMENT (INVALID_PAGE_TOKEN)
    when it is forged, corrupt, or was issued for other filters."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise not_issued()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error):
        raise not_issued() from None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if len(raw) <= MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, body)):
        raise not_issued()
    try:
        obj = json.loads(body)
        at = datetime.fromisoformat(obj["t"]) if "t" in obj else None
        key = uuid.UUID(obj["k"])
        fingerprint = obj["f"]
    except Exception:  # signed by us, so never expected; still no INTERNAL
        raise not_issued() from None
    if fingerprint != _fingerprint(filters) or (at is not None and at.tzinfo is None):
        raise InvalidArgument(
            "page_token was issued for other filters",
            [FieldViolation("page_token", "page_token does not match the request's filters")],
            reason="INVALID_PAGE_TOKEN",
        )
    return at, key
