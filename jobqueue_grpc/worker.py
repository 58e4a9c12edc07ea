"""The Python worker SDK: handlers by kind, one Lease stream, leases extended for you.

    worker = Worker("localhost:50051", queues=["default"], concurrency=10)

    @worker.handler("send_email")
    async def send_email(ctx: JobContext) -> dict[str, object]:
        await ctx.progress({"step": "rendering"})
        return {"sent": True}

    worker.run_sync()   # SIGTERM/SIGINT: finish what is running, report it, then exit

Async handlers run on the event loop (a cancel notice cancels their task); plain functions run in
a thread pool and can watch `ctx.cancel_requested`. Raise `DoNotRetry` to dead-letter at once, or
`RetryAfter(seconds)` to pick the delay; any other exception retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import random
import signal
import socket
import time
import traceback
import types
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2

from jobqueue_grpc import _trace
from jobqueue_grpc._aio import spawn, wait
from jobqueue_grpc._channel import TLS, aio_channel, metadata
from jobqueue_grpc._durations import duration, seconds
from jobqueue_grpc._struct import to_dict
from jobqueue_grpc.gen.jobqueue.v1 import job_pb2
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2 as w
from jobqueue_grpc.gen.jobqueue.v1 import worker_service_pb2_grpc as wsg

log = logging.getLogger(__name__)

Handler = Callable[["JobContext"], Any]

__all__ = ["DoNotRetry", "JobCancelled", "JobContext", "RetryAfter", "Worker"]


class DoNotRetry(Exception):
    """The job cannot succeed: dead-letter it now, whatever attempts remain."""


class RetryAfter(Exception):
    """Retry after `seconds` (while attempts remain), instead of the backoff's delay."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds}s")
        self.seconds = seconds


class JobCancelled(Exception):
    """Raised by a sync handler (see JobContext.raise_if_cancelled) to stop a cancelled job."""


# The server refused this worker as configured (a bad `open`, a token it does not accept, an
# address that serves no WorkerService): asking again would be refused again, so run() raises.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def _struct(d: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


@dataclass(eq=False, slots=True)
class JobContext:
    """What a handler gets: the job, and ways to report progress and notice cancellation."""

    job: job_pb2.Job
    lease_token: str
    _worker: Worker
    _session: _Session
    _cancel: bool = False  # a plain flag: handler threads read it, the event loop sets it
    _payload: dict[str, Any] | None = None
    expires_at: float = 0.0  # monotonic
    lost: bool = False  # the lease is gone: the outcome would be rejected
    # The job's id, read once from the message (each read of job.id makes a new str), and the
    # task running the handler: set by the worker.
    _id: str = field(default="", repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self._id or self.job.id

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def metadata(self) -> dict[str, str]:
        """The labels the job was enqueued with."""
        return dict(self.job.metadata)

    @property
    def payload(self) -> dict[str, Any]:
        if self._payload is None:
            self._payload = to_dict(self.job.payload)
        return self._payload

    @property
    def cancel_requested(self) -> bool:
        return self._cancel

    def raise_if_cancelled(self) -> None:
        if self._cancel:
            raise JobCancelled(self.job.id)

    async def progress(self, progress: Mapping[str, Any]) -> None:
        """Replaces the job's progress (visible in GetJob)."""
        self._session.send(
            w.LeaseRequest(
                progress=w.LeaseProgress(
                    job_id=self.job.id, lease_token=self.lease_token, progress=_struct(progress)
                )
            )
        )

    def progress_sync(self, progress: Mapping[str, Any]) -> None:
        """progress() for handlers running in threads."""
        loop = self._worker._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._session.send_progress, self, dict(progress))


class _Session:
    """One Lease stream: its outbox, the jobs it runs, and the batching of their outcomes."""

    def __init__(self, worker: Worker, call: Any) -> None:
        self.worker = worker
        self.call = call
        self.outbox: asyncio.Queue[w.LeaseRequest | None] = asyncio.Queue()
        self.running: dict[str, JobContext] = {}  # by job id; each has its _task
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False
        self.drained = asyncio.Event()  # the server has answered after our `drain`
        # Each a CompletedJob, or its fields as a dict when it has no result: a dict is cheaper to
        # build and to copy into LeaseComplete (the stubs do not type that form: Any)
        self._completes: list[Any] = []
        self._fails: list[w.FailedJob] = []
        self._cancelled: list[w.CancelledJob] = []
        self._flush_scheduled = False

    def send(self, req: w.LeaseRequest) -> None:
        self.outbox.put_nowait(req)

    def send_progress(self, ctx: JobContext, progress: dict[str, Any]) -> None:
        self.send(
            w.LeaseRequest(
                progress=w.LeaseProgress(
                    job_id=ctx.job.id, lease_token=ctx.lease_token, progress=_struct(progress)
                )
            )
        )

    # Outcomes produced in one turn of the event loop travel in one message of each kind.
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._completes:
            self.send(w.LeaseRequest(complete=w.LeaseComplete(jobs=self._completes)))
            self._completes = []
        if self._fails:
            self.send(w.LeaseRequest(fail=w.LeaseFail(jobs=self._fails)))
            self._fails = []
        if self._cancelled:
            self.send(w.LeaseRequest(cancelled=w.LeaseCancelled(jobs=self._cancelled)))
            self._cancelled = []

    def complete(self, ctx: JobContext, result: Any) -> None:
        if result is None:
            self._completes.append({"job_id": ctx._id, "lease_token": ctx.lease_token})
        else:
            c = w.CompletedJob(job_id=ctx._id, lease_token=ctx.lease_token)
            c.result.update(result if isinstance(result, Mapping) else {"value": result})
            self._completes.append(c)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def fail(
        self,
        ctx: JobContext,
        exc: BaseException,
        cls: w.FailureClass.ValueType,
        retry_after: float | None = None,
    ) -> None:
        details = {
            "type": type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
        }
        f = w.FailedJob(
            job_id=ctx.id,
            lease_token=ctx.lease_token,
            error=w.JobError(
                message=f"{type(exc).__name__}: {exc}"[:8000], details=_struct(details)
            ),
            failure_class=cls,
        )
        if retry_after is not None:
            f.retry_after.CopyFrom(duration(retry_after))
        self._fails.append(f)
        self._schedule_flush()

    def cancelled(self, ctx: JobContext) -> None:
        self._cancelled.append(w.CancelledJob(job_id=ctx.id, lease_token=ctx.lease_token))
        self._schedule_flush()


class Worker:
    """Runs handlers for jobs leased over one WorkerService.Lease stream (reconnecting)."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        worker_id: str | None = None,
        kinds: Sequence[str] | None = None,
        token: str | None = None,
        tls: TLS | None = None,
        shutdown_timeout: float = 30.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        tracer_provider: Any | None = None,
    ) -> None:
        self.address = address
        self.queues = list(queues)
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.kinds = list(kinds) if kinds is not None else None
        self.token = token
        self.tls = tls
        self.shutdown_timeout = shutdown_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        # OpenTelemetry: each handler runs in a span, a child of the job's producer, when an SDK
        # is configured (this provider, else the global one); otherwise no span (_trace.py).
        self.tracer_provider = tracer_provider
        self._tracer: Any | None = None
        self.handlers: dict[str, Handler] = {}
        self._async: set[str] = set()  # kinds whose handler is a coroutine function
        # Async kinds whose handler suspended when last started inline (see _start_inline): how
        # many of their jobs still get a task of their own before the next try.
        self._suspends: dict[str, int] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._session: _Session | None = None
        self.connected = asyncio.Event()  # set while a stream is open (tests wait on it)

    # -- registration -----------------------------------------------------------------------------
    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Handler) -> None:
        self.handlers[kind] = fn
        self._async.discard(kind)
        if inspect.iscoroutinefunction(fn):
            self._async.add(kind)

    # -- running ----------------------------------------------------------------------------
    def run_sync(self) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.run()

        asyncio.run(main())

    def stop(self) -> None:
        """Graceful stop: take no new jobs, finish and report the running ones, disconnect."""
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        if not self.handlers:
            raise ValueError("register at least one handler before run()")
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="jobqueue-handler")
        backoff = self.reconnect_min
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self._run_session()
                except grpc.aio.AioRpcError as e:
                    if e.code() in PERMANENT:
                        log.error("refused by the server: %s %s", e.code().name, e.details())
                        raise
                    log.warning("lease stream ended: %s %s", e.code().name, e.details())
                except OSError as e:
                    log.warning("lease stream failed: %s", e)
                if self._stop.is_set():
                    break
                if time.monotonic() - started > 10:
                    backoff = self.reconnect_min
                delay = random.uniform(self.reconnect_min, backoff)
                backoff = min(self.reconnect_max, backoff * 2)
                await wait(self._stop.wait(), delay)
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run_session(self) -> None:
        assert self._stop is not None
        self._tracer = _trace.job_tracer(self.tracer_provider)  # a global SDK set up by now
        async with aio_channel(self.address, self.tls) as channel:
            call = wsg.WorkerServiceStub(channel).Lease(metadata=metadata(self.token))
            s = _Session(self, call)
            self._session = s
            kinds = self.kinds if self.kinds is not None else sorted(self.handlers)
            s.send(
                w.LeaseRequest(
                    open=w.LeaseOpen(
                        worker_id=self.worker_id,
                        queues=self.queues,
                        kinds=kinds,
                        max_in_flight=self.concurrency,
                    )
                )
            )
            writer = asyncio.create_task(self._write(s))
            ticker = asyncio.create_task(self._tick(s))
            stopper = asyncio.create_task(self._on_stop(s))
            self.connected.set()
            try:
                async for msg in call:
                    self._on_message(s, msg)
            finally:
                self.connected.clear()
                for t in (writer, ticker, stopper):
                    t.cancel()
                # The stream is gone, and with it our leases: stop work whose outcome is moot.
                for ctx in list(s.running.values()):
                    ctx.lost = True
                    if ctx._task is not None:
                        ctx._task.cancel()
                self._session = None

    async def _write(self, s: _Session) -> None:
        opened = False
        while True:
            req = await s.outbox.get()
            if req is None:
                await s.call.done_writing()
                return
            await s.call.write(req)
            if not opened:  # the first message is `open`: it reached the server
                opened = True
                kinds = ", ".join(req.open.kinds) or "any"
                log.info(
                    "connected to %s as %s: queues %s, kinds %s, concurrency %d",
                    self.address,
                    self.worker_id,
                    ", ".join(self.queues),
                    kinds,
                    self.concurrency,
                )

    async def _on_stop(self, s: _Session) -> None:
        assert self._stop is not None
        await self._stop.wait()
        await self._drain(s)

    async def _drain(self, s: _Session) -> None:
        """Tell the server to send nothing more, finish what runs, report it, then close."""
        if s.draining:
            return
        s.draining = True
        s.send(w.LeaseRequest(drain=w.LeaseDrain()))
        # The server answers this heartbeat only after it has handled `drain`, and the stream is
        # ordered: once the answer is in, every job meant for us is here (and running).
        s.send(w.LeaseRequest(heartbeat=w.Heartbeat()))
        await wait(s.drained.wait(), 5.0)
        await wait(s.idle.wait(), self.shutdown_timeout)  # their tasks exist once they arrive
        s.flush()
        s.outbox.put_nowait(None)

    async def _tick(self, s: _Session) -> None:
        """Extends leases that are half spent, and keeps the stream alive through proxies."""
        last_sent = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            due = [
                w.ExtendedJob(job_id=ctx.id, lease_token=ctx.lease_token)
                for ctx in s.running.values()
                if not ctx.lost and ctx.expires_at - now < _lease_seconds(ctx) / 2
            ]
            if due:
                s.send(w.LeaseRequest(extend=w.LeaseExtend(jobs=due)))
                last_sent = now
            elif now - last_sent > 15:
                s.send(w.LeaseRequest(heartbeat=w.Heartbeat()))
                last_sent = now

    def _on_message(self, s: _Session, msg: w.LeaseResponse) -> None:
        which = msg.WhichOneof("msg")
        if which == "jobs":
            offset = time.monotonic() - time.time()  # wall clock -> monotonic
            running = s.running
            ctxs = []
            for leased in msg.jobs.jobs:
                ctx = JobContext(leased.job, leased.lease_token, self, s)
                ctx._id = job_id = ctx.job.id
                at = leased.lease_expires_at
                ctx.expires_at = at.seconds + at.nanos * 1e-9 + offset
                running[job_id] = ctx
                ctxs.append(ctx)
            self._start(s, ctxs)
            if running:
                s.idle.clear()
        elif which == "cancel":
            found = s.running.get(msg.cancel.job_id)
            if found is not None and not found.cancel_requested:
                found._cancel = True
                if found.kind in self._async and found._task is not None:
                    found._task.cancel()
        elif which == "extended":
            found = s.running.get(msg.extended.job_id)
            if found is not None:
                wall = msg.extended.lease_expires_at.ToNanoseconds() / 1e9
                found.expires_at = time.monotonic() + (wall - time.time())
        elif which == "rejected":
            r = msg.rejected
            log.warning("server rejected an update for job %s: %s", r.job_id, r.reason)
            found = s.running.get(r.job_id)
            if found is not None and r.code == w.REJECT_REASON_STALE_LEASE:
                found.lost = True  # another worker may have it now; stop extending
        elif which == "draining":
            log.info("server is draining; finishing running jobs, then reconnecting")
            spawn(self._drain(s))
        elif which == "heartbeat" and s.draining:
            s.drained.set()

    async def _call(self, fn: Handler, ctx: JobContext) -> Any:
        if ctx.kind in self._async:
            return await fn(ctx)
        return await self._call_in_thread(fn, ctx)

    async def _call_in_thread(self, fn: Handler, ctx: JobContext) -> Any:
        assert self._threads is not None
        loop = asyncio.get_running_loop()
        if self._tracer is not None:  # the thread runs in this task's context: the job's span
            result = await loop.run_in_executor(
                self._threads, contextvars.copy_context().run, fn, ctx
            )
        else:
            result = await loop.run_in_executor(self._threads, fn, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _start(self, s: _Session, ctxs: Sequence[JobContext]) -> None:
        """Starts jobs: those of async kinds in one task (_start_inline), unless their handler
        lately suspended when started so, the others (and all while tracing) in a task each."""
        loop = asyncio.get_running_loop()
        # loop.create_task without a task factory is Task(coro, loop=loop), less a frame
        task = asyncio.Task if loop.get_task_factory() is None else None
        execute = self._execute
        asyncs = self._async if self._tracer is None else ()
        suspends = self._suspends
        inline: list[JobContext] = []
        for ctx in ctxs:
            kind = ctx.job.kind
            if kind in asyncs:
                if not suspends:
                    inline.append(ctx)
                    continue
                left = suspends.get(kind)
                if left is None:
                    inline.append(ctx)
                    continue
                if left > 1:
                    suspends[kind] = left - 1
                else:
                    del suspends[kind]
            coro = execute(s, ctx)
            ctx._task = task(coro, loop=loop) if task is not None else loop.create_task(coro)
        if inline:
            spawn(self._start_inline(s, inline, 0))

    async def _start_inline(self, s: _Session, ctxs: list[JobContext], i: int) -> None:
        """Starts the jobs ctxs[i:] of async kinds in turn, in this one task rather than a task
        each: a handler that returns without suspending (the common case for quick ones) costs no
        task. Each job runs in a context of its own, as in a task of its own. The first job whose
        handler suspends makes this task its own for the rest of its run (so what it saw as
        asyncio.current_task() stays its task: timeouts, task groups), and the jobs after it
        start in a new task; its kind gets tasks of its own for a while (SUSPENDED_TASKS)."""
        n = len(ctxs)
        current = asyncio.current_task()
        assert current is not None
        while i < n:
            if current.cancelling():
                # A job cancelled its task (this one) and returned: as its own task would, this
                # one ends cancelled, and the jobs after it start in another.
                self._start(s, ctxs[i:])
                return
            ctx = ctxs[i]
            i += 1
            if ctx.lost:  # the stream went before it started: as a task cancelled before it ran
                s.running.pop(ctx._id, None)
                if not s.running:
                    s.idle.set()
                continue
            context = contextvars.copy_context()
            coro = self._execute(s, ctx)
            try:
                yielded = context.run(coro.send, None)
            except StopIteration:
                continue
            except asyncio.CancelledError:  # the handler raised it: as a task ending cancelled
                continue
            except (KeyboardInterrupt, SystemExit):  # they stop the loop, as from a task
                self._start(s, ctxs[i:])
                raise
            except BaseException as e:  # as from a task nobody awaits
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"job {ctx.id} failed", "exception": e}
                )
                continue
            ctx._task = current
            self._suspends[ctx.job.kind] = SUSPENDED_TASKS
            self._start(s, [c for c in ctxs[i:] if not c.lost])
            await _resume(coro, yielded, context)
            return

    async def _execute(self, s: _Session, ctx: JobContext) -> None:
        kind = ctx.job.kind
        fn = self.handlers.get(kind)
        started = time.monotonic()

        try:
            if fn is None:
                raise DoNotRetry(f"this worker has no handler for kind {kind!r}")
            if ctx._cancel and ctx._task is None and kind in self._async:
                # cancelled before _start_inline reached it: as a task cancelled before it ran,
                # but reported (a task of its own would have been cancelled, and its handler
                # never called)
                raise asyncio.CancelledError
            if self._tracer is None:  # (self._call inlined)
                if kind in self._async:
                    result = await fn(ctx)
                else:
                    result = await self._call_in_thread(fn, ctx)
            else:
                with _trace.job_span(self._tracer, ctx.job):
                    result = await self._call(fn, ctx)
        except asyncio.CancelledError:
            if ctx.lost:
                _log_outcome(ctx, "abandoned: its lease is gone", started)
                return
            if ctx.cancel_requested:
                _log_outcome(ctx, "cancelled", started)
                s.cancelled(ctx)
                return
            raise
        except JobCancelled:
            _log_outcome(ctx, "cancelled", started)
            s.cancelled(ctx)
        except DoNotRetry as e:
            _log_outcome(ctx, f"failed, not to be retried: {_brief(e)}", started)
            s.fail(ctx, e, w.FAILURE_CLASS_DO_NOT_RETRY)
        except RetryAfter as e:
            _log_outcome(ctx, f"failed, retry after {e.seconds:g}s: {_brief(e)}", started)
            s.fail(ctx, e, w.FAILURE_CLASS_RETRY_AFTER, e.seconds)
        except Exception as e:
            _log_outcome(ctx, f"failed, to be retried: {type(e).__name__}: {_brief(e)}", started)
            s.fail(ctx, e, w.FAILURE_CLASS_RETRY)
        else:
            if ctx.lost:
                _log_outcome(ctx, "finished after its lease was lost: not reported", started)
            else:
                try:
                    s.complete(ctx, result)
                except (ValueError, TypeError) as e:  # not JSON-shaped: the job cannot succeed
                    _log_outcome(
                        ctx,
                        f"failed, not to be retried: result not JSON-shaped: {_brief(e)}",
                        started,
                    )
                    s.fail(ctx, e, w.FAILURE_CLASS_DO_NOT_RETRY)
                else:
                    if log.isEnabledFor(logging.INFO):
                        _log_outcome(ctx, "succeeded", started)
        finally:
            running = s.running
            running.pop(ctx._id, None)
            if not running:
                s.idle.set()


# After a handler started inline suspends, this many jobs of its kind get a task of their own
# (started at once, as the handler will likely suspend again) before the next one is tried inline.
SUSPENDED_TASKS = 256


@types.coroutine
def _resume(coro: Any, yielded: Any, context: contextvars.Context) -> Generator[Any, Any, None]:
    """`await coro` for a coroutine that has run up to its first suspension, which yielded
    `yielded`: the awaiting task takes over from there, each step run in `context`."""
    send, throw, run = coro.send, coro.throw, context.run
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as e:  # thrown into the task (cancel): on into the coroutine
            try:
                yielded = run(throw, e)
            except StopIteration:
                return
        else:
            try:
                yielded = run(send, value)
            except StopIteration:
                return


def _log_outcome(ctx: JobContext, what: str, started: float) -> None:
    """The one INFO line per job outcome."""
    log.info(
        "job %s (%s, attempt %d) %s in %.3fs",
        ctx.id,
        ctx.kind,
        ctx.attempt,
        what,
        time.monotonic() - started,
    )


def _brief(exc: BaseException, limit: int = 200) -> str:
    """An exception's message for a one-line log: its first line, at most `limit` characters."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[:limit] + "..."


def _lease_seconds(ctx: JobContext) -> float:
    return seconds(ctx.job.lease_duration) or 30.0
