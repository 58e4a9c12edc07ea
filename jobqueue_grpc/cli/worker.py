"""`jobqueue-grpc worker MODULE:ATTR`: runs a Worker defined in your code.

ATTR names a `Worker`, or a function returning one. `--address` and `--concurrency` override
what the code set; SIGTERM/SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

import grpc

from jobqueue_grpc.cli import connection
from jobqueue_grpc.logs import setup_logging
from jobqueue_grpc.worker import Worker


def load(spec: str) -> Worker:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    obj: Any = getattr(importlib.import_module(module_name), attr)
    if callable(obj) and not isinstance(obj, Worker):
        obj = obj()
    if not isinstance(obj, Worker):
        raise SystemExit(f"{spec} is not a jobqueue_grpc.Worker")
    return obj


def _run(args: argparse.Namespace) -> int:
    setup_logging(
        fmt=os.environ.get("JOBQUEUE_LOG_FORMAT", "text"),
        level=os.environ.get("JOBQUEUE_LOG_LEVEL", "INFO"),
    )
    worker = load(args.spec)
    worker.token = connection.token(args) or worker.token
    worker.tls = connection.tls(args) or worker.tls
    if args.address:
        worker.address = args.address
    if args.concurrency:
        worker.concurrency = args.concurrency
    try:
        worker.run_sync()
    except grpc.aio.AioRpcError as e:  # refused as configured (see worker.PERMANENT)
        print(f"jobqueue-grpc worker: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a Worker from your code: MODULE:ATTR")
    p.add_argument("spec", help="module:attribute naming a Worker (or a function returning one)")
    p.add_argument("--address", default=os.environ.get("JOBQUEUE_ADDRESS"), help="server address")
    p.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
    connection.add_credential_args(p)
    p.set_defaults(func=_run)
