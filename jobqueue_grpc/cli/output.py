"""What the admin CLI prints: aligned tables for people, JSON for scripts, one-line errors,
a confirmation prompt and a progress bar (both on stderr, so stdout stays clean for pipes)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def as_dict(msg: Message) -> dict[str, Any]:
    """Every field, even at its default (scripts can rely on the keys); int64 as numbers."""
    out: dict[str, Any] = json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return out


def print_json(value: Any, out: TextIO | None = None) -> None:
    if isinstance(value, Message):
        value = as_dict(value)
    elif isinstance(value, list):
        value = [as_dict(v) if isinstance(v, Message) else v for v in value]
    print(json.dumps(value, indent=2, sort_keys=False), file=out or sys.stdout)


def when(ts: timestamp_pb2.Timestamp, present: bool = True) -> str:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    out = out or sys.stdout
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=out)
    for r in cells:
        print(line(r), file=out)


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    """One `name: value` per line, names aligned."""
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"{k + ':':<{width + 1}} {v}", file=out or sys.stdout)


def describe_error(err: grpc.RpcError) -> str:
    """One line: the gRPC code, the message, the ErrorInfo reason and any field violations."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, violations = "", []
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    for d in status.details if status is not None else []:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if d.Unpack(info):
            reason = info.reason
        elif d.Unpack(bad):
            violations = [f"{v.field}: {v.description}" for v in bad.field_violations]
    text = f"error: {code.name}: {message}"
    if reason:
        text += f" [{reason}]"
    if violations and len(violations) > 1:
        text += " (" + "; ".join(violations) + ")"
    return text


def confirm(question: str, assume_yes: bool) -> bool:
    """Asks on stderr and reads one answer from stdin; only "y" or "yes" goes ahead."""
    if assume_yes:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not sys.stdin.isatty():
        print(file=sys.stderr)  # a terminal echoes the user's newline; piped input does not
    return answer in ("y", "yes")


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.started = datetime.now(UTC)

    def advance(self, n: int) -> None:
        self.done += n
        width = 30
        filled = width * self.done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total}"
        if self.tty:
            print("\r" + text, end="", file=self.out, flush=True)
        else:
            print(text, file=self.out, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=self.out, flush=True)
