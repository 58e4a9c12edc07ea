"""Bearer-token authentication and roles (`interceptors.py` applies them to every call).

Off unless tokens are configured. Then every call except health and reflection (which probes and
grpcurl need) must carry `authorization: Bearer <token>`; the token's role decides which services
it may call. Tokens are compared in constant time against every known token, so neither timing
nor early exit tells a guesser how close it came.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobqueue_grpc.config import Settings
from jobqueue_grpc.domain import errors as e


class Role(enum.StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"


# Which role may call which service; admin may call everything.
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "jobqueue.v1.JobService": frozenset({Role.PRODUCER, Role.ADMIN}),
    "jobqueue.v1.WorkerService": frozenset({Role.WORKER, Role.ADMIN}),
    "jobqueue.v1.DeadLetterService": frozenset({Role.ADMIN}),
    "jobqueue.v1.QueueService": frozenset({Role.ADMIN}),
}
# Open without a token: Kubernetes probes and grpcurl must work before anyone holds a token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class Credential:
    role: Role
    digest: bytes  # sha256 of the token: equal lengths for compare_digest


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> list[Credential]:
    """`role:token` entries separated by newlines, commas or spaces; `#` starts a comment."""
    out: list[Credential] = []
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0]
        for entry in _SEPARATORS.split(line.strip()):
            if not entry:
                continue
            role, sep, token = entry.partition(":")
            if not sep or not token:
                # Never echo the entry: it may be a token missing its role.
                raise ValueError(f"{source}: an entry is not `role:token`")
            try:
                out.append(Credential(Role(role.lower()), _digest(token)))
            except ValueError:
                raise ValueError(
                    f"{source}: unknown role {role!r} (producer, worker, admin)"
                ) from None
    return out


class AuthConfigError(ValueError, RuntimeError):
    """Authentication was asked for but cannot be had: the server must not start. A
    RuntimeError, so `server.run` reports it as one "cannot start" line."""


def load_credentials(settings: Settings) -> list[Credential]:
    """Every configured token; empty means authentication is off, which only leaving both
    auth_tokens_file and JOBQUEUE_AUTH_TOKENS unset may mean. Either one given and yielding no
    token (blank, only comments, unreadable) is an AuthConfigError: failing open would serve
    everyone with auth silently off."""
    creds: list[Credential] = []
    sources: list[tuple[str, str]] = []
    try:
        if settings.auth_tokens_file is not None:
            path = Path(settings.auth_tokens_file)
            sources.append((str(path), path.read_text()))
        if settings.auth_tokens is not None:
            sources.append(("JOBQUEUE_AUTH_TOKENS", settings.auth_tokens.get_secret_value()))
        for source, text in sources:
            found = parse_tokens(text, source)
            if not found:
                raise AuthConfigError(f"{source}: no tokens (auth would be off)")
            creds += found
    except AuthConfigError:
        raise
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, a bad entry
        raise AuthConfigError(f"auth tokens: {exc}") from None
    return creds


def role_of(presented: str, creds: Iterable[Credential]) -> Role | None:
    """The role of the token, comparing against every credential without an early exit."""
    digest = _digest(presented)
    found: Role | None = None
    for c in creds:
        if hmac.compare_digest(digest, c.digest) and found is None:
            found = c.role
    return found


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def service_of(method: str) -> str:
    """`/jobqueue.v1.JobService/Enqueue` -> `jobqueue.v1.JobService`."""
    return method.lstrip("/").split("/", 1)[0]


def rule(method: str) -> frozenset[Role] | None:
    """The roles that may call `method`; None when it is open to everyone."""
    if method.startswith(OPEN_PREFIXES):
        return None
    return SERVICE_ROLES.get(service_of(method), frozenset({Role.ADMIN}))


def refusal(
    method: str, allowed: frozenset[Role] | None, metadata: Any, creds: list[Credential]
) -> e.JobQueueError | None:
    """The error that refuses this call of `method` (whose `rule` is `allowed`), or None."""
    if allowed is None:
        return None
    token = bearer(metadata)
    if token is None:
        return e.Unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata",
            reason="UNAUTHENTICATED",
        )
    role = role_of(token, creds)
    if role is None:
        return e.Unauthenticated("the token is not valid", reason="UNAUTHENTICATED")
    if role not in allowed:
        return e.PermissionDenied(
            f"role {role.value} may not call {service_of(method)}",
            reason="PERMISSION_DENIED",
        )
    return None


def check(method: str, metadata: Any, creds: list[Credential]) -> e.JobQueueError | None:
    """The error that refuses this call, or None to let it through. (The interceptor works out
    `rule(method)` once per method and calls `refusal`.)"""
    return refusal(method, rule(method), metadata, creds)
