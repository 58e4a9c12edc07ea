"""Structured logs: one JSON object per line, or readable text, on stderr.

Context travels as `extra=` fields, and only the fields named in FIELDS are ever written, so a
payload or a token passed by mistake never reaches the log. Call sites use `fields(...)`:

    log.info("job leased", extra=fields(job_id=job_id, queue=queue, kind=kind, worker_id=w))

or `job_logger(log, ...)` for a LoggerAdapter that adds the same fields to every line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the worker CLI logs too, and Settings (pydantic) is the server's
    from jobqueue_grpc.config import Settings

# The only extra fields a log line may carry. Never add payload, result or token here.
FIELDS = (
    "job_id",
    "queue",
    "kind",
    "worker_id",
    "stream_id",
    "attempt",
    "state",
    "method",
    "code",
    "duration_ms",
    "peer",
    "role",
    "count",
)


def fields(**kw: Any) -> dict[str, Any]:
    """`extra=` for a log call: drops None values and refuses fields outside FIELDS."""
    unknown = set(kw) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a log field: {sorted(unknown)}")
    return {
        k: (str(v) if not isinstance(v, int | float | bool) else v)
        for k, v in kw.items()
        if v is not None
    }


class _Adapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def job_logger(logger: logging.Logger, **kw: Any) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger whose every line carries these fields (job_id, queue, kind, worker_id, ...)."""
    return _Adapter(logger, fields(**kw))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: record.__dict__[k] for k in FIELDS if record.__dict__.get(k) is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # keep key=value on the message line
        kv = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} {kv}{sep}{tail}"


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(
    settings: Settings | None = None, *, fmt: str | None = None, level: str | None = None
) -> None:
    """Sends every logger's records to stderr in the configured format (replaces handlers)."""
    fmt = fmt or (settings.log_format if settings else "text")
    level = (level or (settings.log_level if settings else "INFO")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # asyncio's debug chatter and grpc's own Python logger stay at WARNING unless asked for.
    for name in ("asyncio", "grpc._cython.cygrpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
