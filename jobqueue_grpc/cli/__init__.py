"""`jobqueue-grpc`: serve, migrate (and the admin commands as they land)."""

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
