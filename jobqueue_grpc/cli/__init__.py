"""`jobqueue-grpc`: the server (serve, migrate), a worker runner (worker) and the admin commands
(jobs, dlq, queues), which speak gRPC to a server."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobqueue_grpc.cli import admin, schedules, serve, worker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobqueue-grpc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve.register(sub)
    worker.register(sub)
    admin.register(sub)
    schedules.register(sub)
    return p


def config_error(exc: ValueError) -> str | None:
    """One line for an invalid setting (pydantic's ValidationError), naming each bad field and
    its environment variable; None for any other error. Values are not repeated: a setting
    may hold a token."""
    if str(exc).startswith("Unknown level:"):  # logging's own check of the level's name
        return (
            f"invalid configuration: log_level (JOBQUEUE_LOG_LEVEL): {exc}; "
            "use DEBUG, INFO, WARNING or ERROR"
        )
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ != "ValidationError" or not callable(errors):
        return None
    parts = []
    for err in errors():
        field = ".".join(str(x) for x in err.get("loc", ()))
        where = f"{field} (JOBQUEUE_{field.upper()}): " if field else ""
        parts.append(where + str(err.get("msg", "invalid")))
    return "invalid configuration: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as exc:  # a bad JOBQUEUE_* value or flag: one line, exit 2, no traceback
        line = config_error(exc)
        if line is None:
            raise
        print(f"jobqueue-grpc {args.command}: {line}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
