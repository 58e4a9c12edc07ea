"""What a job carries besides its work: labels (`metadata`) and the producer's W3C trace context.

The SQL function jobqueue.enqueue (store/migrations/0030_*.sql) checks the same rules, with the
same messages; tests/test_txn_enqueue.py runs both on the same inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from jobqueue_grpc.domain.errors import FieldViolation
from jobqueue_grpc.domain.validation import quote

METADATA_MAX_PAIRS = 32
METADATA_KEY_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
METADATA_VALUE_MAX = 512
# https://www.w3.org/TR/trace-context/#traceparent-header: version-traceid-parentid-flags
TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
TRACESTATE_MAX = 512
_TRACESTATE_RE = re.compile(r"[\x20-\x7e]*")


def metadata_violations(field: str, metadata: Mapping[str, str]) -> list[FieldViolation]:
    """Every problem with a metadata map (`field` names it: "metadata", "jobs[3].metadata")."""
    out: list[FieldViolation] = []
    if len(metadata) > METADATA_MAX_PAIRS:
        out.append(FieldViolation(field, f"metadata holds more than {METADATA_MAX_PAIRS} pairs"))
    for key, value in metadata.items():
        if not METADATA_KEY_RE.fullmatch(key):
            out.append(
                FieldViolation(
                    field, f"metadata key {quote(key)} must match [A-Za-z0-9_.:/-]{{1,64}}"
                )
            )
        elif len(value) > METADATA_VALUE_MAX:
            out.append(
                FieldViolation(
                    field, f"metadata[{key}] is longer than {METADATA_VALUE_MAX} characters"
                )
            )
        elif "\x00" in value:
            out.append(FieldViolation(field, f"metadata[{key}] contains NUL"))
        if len(out) >= 10:
            break
    return out


def traceparent_ok(value: str) -> bool:
    m = TRACEPARENT_RE.fullmatch(value)
    return (
        m is not None
        and not value.startswith("ff")
        and m.group(1) != "0" * 32
        and m.group(2) != "0" * 16
    )


def tracestate_ok(value: str) -> bool:
    return len(value) <= TRACESTATE_MAX and _TRACESTATE_RE.fullmatch(value) is not None


def trace_violations(prefix: str, traceparent: str, tracestate: str) -> list[FieldViolation]:
    """Problems with a trace context set explicitly on a request (one from call metadata that
    is not valid is ignored instead, as W3C says: see `from_headers`)."""
    out: list[FieldViolation] = []
    if traceparent and not traceparent_ok(traceparent):
        out.append(
            FieldViolation(
                prefix + "traceparent",
                "traceparent must be a W3C traceparent like 00-<32 hex>-<16 hex>-<2 hex>",
            )
        )
    if tracestate and not traceparent:
        out.append(FieldViolation(prefix + "tracestate", "tracestate needs a traceparent"))
    elif tracestate and not tracestate_ok(tracestate):
        out.append(
            FieldViolation(
                prefix + "tracestate",
                f"tracestate must be at most {TRACESTATE_MAX} printable ASCII characters",
            )
        )
    return out


TraceContext = tuple[str | None, str | None]  # (traceparent, tracestate)
NO_TRACE: TraceContext = (None, None)


def from_headers(headers: Iterable[Any] | None) -> TraceContext:
    """The W3C trace context in a call's metadata, or NO_TRACE. An invalid traceparent is
    ignored (and its tracestate with it); an invalid tracestate alone is dropped."""
    traceparent = tracestate = None
    for key, value in headers or ():
        if key == "traceparent" and traceparent is None and isinstance(value, str):
            traceparent = value.strip()
        elif key == "tracestate" and tracestate is None and isinstance(value, str):
            tracestate = value.strip()
    if traceparent is None or not traceparent_ok(traceparent):
        return NO_TRACE
    if tracestate is not None and not (tracestate and tracestate_ok(tracestate)):
        tracestate = None
    return traceparent, tracestate
