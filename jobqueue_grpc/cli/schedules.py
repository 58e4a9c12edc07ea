"""`jobqueue-grpc schedules ...`: periodic jobs over gRPC (ScheduleService).

`schedules apply FILE.yaml` declares schedules in a file a team keeps in git: it creates what is
missing, updates what differs and, with `--prune`, deletes what the file does not name, printing
a diff (`+` create, `~` update, `-` delete, `=` unchanged); run twice, the second run changes
nothing. The file:

    schedules:
      - id: nightly-report
        cron: "0 3 * * *"          # or every: 15m
        timezone: Europe/Berlin    # default UTC
        missed: run_once           # skip (default), run_once, catch_up (with catch_up_max)
        paused: false
        job: {kind: report, queue: reports, payload: {full: true}, priority: 0,
              max_attempts: 3, unique: {key: nightly-report}}

PyYAML is needed for `apply` only (`pip install pyyaml`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from jobqueue_grpc._durations import duration, seconds
from jobqueue_grpc.cli import output
from jobqueue_grpc.cli.admin import TIMEOUT, Handler, UsageError, _common, _run
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2 as ss
from jobqueue_grpc.gen.jobqueue.v1 import schedule_service_pb2_grpc as ss_grpc

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
POLICIES = {
    "skip": ss.MISSED_TICK_POLICY_SKIP,
    "run_once": ss.MISSED_TICK_POLICY_RUN_ONCE,
    "catch_up": ss.MISSED_TICK_POLICY_CATCH_UP,
}
_WRITABLE = ("cron", "every", "timezone", "job", "paused", "missed_tick_policy", "catch_up_max")


def parse_span(text: str) -> float:
    m = _SPAN.match(str(text).strip())
    if not m:
        raise UsageError(f"{text!r} is not a duration like 30s, 15m, 1h, 1d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def span(d: Any) -> str:
    s = seconds(d)
    for unit in ("w", "d", "h", "m"):
        if s >= _UNIT[unit] and s % _UNIT[unit] == 0:
            return f"{int(s // _UNIT[unit])}{unit}"
    return f"{s:g}s"


def policy_name(p: int) -> str:
    names: dict[int, str] = {v: k for k, v in POLICIES.items()}
    return names.get(p, "skip")


def timing(s: ss.Schedule) -> str:
    when = s.cron if s.cron else f"every {span(s.every)}"
    return f"{when} ({s.timezone})" if s.cron else when


# -- building a Schedule --------------------------------------------------------------------------
def build(spec: dict[str, Any]) -> ss.Schedule:
    """A Schedule from a dict (a YAML entry or the command's flags)."""
    spec = dict(spec)
    s = ss.Schedule(id=str(spec.pop("id", "")))
    if (c := spec.pop("cron", None)) is not None:
        s.cron = str(c)
    if (e := spec.pop("every", None)) is not None:
        s.every.CopyFrom(duration(parse_span(e)))
    s.timezone = str(spec.pop("timezone", "") or "UTC")
    s.paused = bool(spec.pop("paused", False))
    missed = str(spec.pop("missed", "skip")).replace("-", "_")
    if missed not in POLICIES:
        raise UsageError(f"missed must be one of {', '.join(POLICIES)}, not {missed!r}")
    s.missed_tick_policy = POLICIES[missed]
    s.catch_up_max = int(spec.pop("catch_up_max", 0))
    job = dict(spec.pop("job", None) or {})
    if spec:
        raise UsageError(f"schedule {s.id}: unknown keys {', '.join(sorted(spec))}")
    if "lease_duration" in job:
        job["lease_duration"] = f"{parse_span(job['lease_duration']):g}s"
    unique = job.get("unique")
    if isinstance(unique, dict):
        unique = job["unique"] = dict(unique)
        if "period" in unique:
            unique["period"] = f"{parse_span(unique['period']):g}s"
        if "states" in unique:
            unique["states"] = [f"JOB_STATE_{str(x).upper()}" for x in unique["states"]]
    try:
        json_format.ParseDict(job, s.job)
    except json_format.ParseError as e:
        raise UsageError(f"schedule {s.id}: job: {e}") from None
    return s


def _comparable(desired: ss.Schedule, current: ss.Schedule) -> ss.Schedule:
    """`current` with what the server filled in for fields `desired` leaves to it cleared."""
    cur = ss.Schedule()
    cur.CopyFrom(current)
    d, c = desired.job, cur.job
    if not d.queue and c.queue == "default":
        c.queue = ""
    if not d.max_attempts:
        c.max_attempts = 0
    if not d.HasField("lease_duration"):
        c.ClearField("lease_duration")
    if c.HasField("unique"):
        if not d.unique.key and c.unique.key.startswith("derived:"):
            c.unique.key = ""
        if not d.unique.states:
            del c.unique.states[:]
    return cur


def changes(desired: ss.Schedule, current: ss.Schedule) -> list[str]:
    cur = _comparable(desired, current)
    return [f for f in _WRITABLE if getattr(desired, f) != getattr(cur, f)]


# -- commands -------------------------------------------------------------------------------------
def _rows(items: list[ss.Schedule]) -> None:
    output.table(
        ["ID", "TIMING", "QUEUE", "KIND", "PAUSED", "NEXT RUN", "LAST RUN", "MISSED"],
        [
            [
                s.id,
                timing(s),
                s.job.queue,
                s.job.kind,
                "yes" if s.paused else "no",
                output.when(s.next_run_at, s.HasField("next_run_at")),
                output.when(s.last_run_at, s.HasField("last_run_at")),
                policy_name(s.missed_tick_policy),
            ]
            for s in items
        ],
    )


def _detail(s: ss.Schedule) -> None:
    output.fields(
        [
            ("id", s.id),
            ("timing", timing(s)),
            ("paused", "yes" if s.paused else "no"),
            ("missed ticks", policy_name(s.missed_tick_policy)
             + (f" (at most {s.catch_up_max})" if s.catch_up_max else "")),
            ("next run", output.when(s.next_run_at, s.HasField("next_run_at"))),
            ("last run", output.when(s.last_run_at, s.HasField("last_run_at"))),
            ("last job", s.last_job_id or "-"),
            ("job", json.dumps(output.as_dict(s.job), sort_keys=True)),
        ]
    )  # fmt: skip


def _print(args: argparse.Namespace, s: ss.Schedule, said: str = "") -> int:
    if args.json:
        output.print_json(s)
    else:
        if said:
            print(said)
        _detail(s)
    return 0


def _all(stub: ss_grpc.ScheduleServiceStub) -> list[ss.Schedule]:
    out: list[ss.Schedule] = []
    token = ""
    while True:
        resp = stub.ListSchedules(
            ss.ListSchedulesRequest(page_size=1000, page_token=token), timeout=TIMEOUT
        )
        out.extend(resp.schedules)
        token = resp.next_page_token
        if not token:
            return out


def schedules_list(args: argparse.Namespace, ch: grpc.Channel) -> int:
    items = _all(ss_grpc.ScheduleServiceStub(ch))
    if args.json:
        output.print_json(items)
    else:
        _rows(items)
    return 0


def schedules_show(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = ss_grpc.ScheduleServiceStub(ch)
    return _print(
        args, stub.GetSchedule(ss.GetScheduleRequest(id=args.id), timeout=TIMEOUT).schedule
    )


def _flags_spec(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    spec = dict(base)
    spec["id"] = args.id
    if args.cron is not None:
        spec["cron"], spec["every"] = args.cron, None
    if args.every is not None:
        spec["every"], spec["cron"] = args.every, None
    for flag in ("timezone", "missed", "catch_up_max"):
        if getattr(args, flag) is not None:
            spec[flag] = getattr(args, flag)
    if args.paused is not None:
        spec["paused"] = args.paused
    job = dict(spec.get("job") or {})
    for flag in ("kind", "queue", "priority", "max_attempts"):
        if getattr(args, flag) is not None:
            job[flag] = getattr(args, flag)
    if args.payload is not None:
        try:
            job["payload"] = json.loads(args.payload)
        except json.JSONDecodeError as e:
            raise UsageError(f"--payload is not JSON: {e}") from None
    spec["job"] = job
    return {k: v for k, v in spec.items() if v is not None}


def _as_spec(s: ss.Schedule) -> dict[str, Any]:
    """An existing schedule as build() takes it (for `update`: flags change some of it)."""
    spec: dict[str, Any] = {
        "id": s.id,
        "timezone": s.timezone,
        "paused": s.paused,
        "missed": policy_name(s.missed_tick_policy),
        "catch_up_max": s.catch_up_max,
        "job": json_format.MessageToDict(s.job, preserving_proto_field_name=True),
    }
    job = spec["job"]
    if s.cron:
        spec["cron"] = s.cron
    else:
        spec["every"] = f"{seconds(s.every):g}s"
    unique = job.get("unique")
    if isinstance(unique, dict) and "states" in unique:
        unique["states"] = [x.removeprefix("JOB_STATE_").lower() for x in unique["states"]]
    return spec


def schedules_create(args: argparse.Namespace, ch: grpc.Channel) -> int:
    if (args.cron is None) == (args.every is None):
        raise UsageError("give one of --cron and --every")
    if args.kind is None:
        raise UsageError("--kind is required")
    s = build(_flags_spec(args, {}))
    made = ss_grpc.ScheduleServiceStub(ch).CreateSchedule(
        ss.CreateScheduleRequest(schedule=s), timeout=TIMEOUT
    )
    return _print(args, made.schedule, f"created {made.schedule.id}")


def schedules_update(args: argparse.Namespace, ch: grpc.Channel) -> int:
    stub = ss_grpc.ScheduleServiceStub(ch)
    current = stub.GetSchedule(ss.GetScheduleRequest(id=args.id), timeout=TIMEOUT).schedule
    s = build(_flags_spec(args, _as_spec(current)))
    up = stub.UpdateSchedule(ss.UpdateScheduleRequest(schedule=s), timeout=TIMEOUT)
    return _print(args, up.schedule, f"updated {up.schedule.id}")


def schedules_delete(args: argparse.Namespace, ch: grpc.Channel) -> int:
    ss_grpc.ScheduleServiceStub(ch).DeleteSchedule(
        ss.DeleteScheduleRequest(id=args.id), timeout=TIMEOUT
    )
    if args.json:
        output.print_json({"deleted": args.id})
    else:
        print(f"deleted {args.id}")
    return 0


def schedules_pause(args: argparse.Namespace, ch: grpc.Channel) -> int:
    s = ss_grpc.ScheduleServiceStub(ch).PauseSchedule(
        ss.PauseScheduleRequest(id=args.id), timeout=TIMEOUT
    )
    return _print(args, s.schedule, f"paused {args.id}")


def schedules_resume(args: argparse.Namespace, ch: grpc.Channel) -> int:
    s = ss_grpc.ScheduleServiceStub(ch).ResumeSchedule(
        ss.ResumeScheduleRequest(id=args.id), timeout=TIMEOUT
    )
    return _print(args, s.schedule, f"resumed {args.id}")


def schedules_trigger(args: argparse.Namespace, ch: grpc.Channel) -> int:
    out = ss_grpc.ScheduleServiceStub(ch).TriggerSchedule(
        ss.TriggerScheduleRequest(id=args.id), timeout=TIMEOUT
    )
    if args.json:
        output.print_json(out)
    else:
        print(f"{'enqueued' if out.created else 'already enqueued'} {out.job.id}")
    return 0


def load(path: Path) -> list[ss.Schedule]:
    try:
        import yaml
    except ImportError:
        raise UsageError("schedules apply reads YAML: pip install pyyaml") from None
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    entries = (doc or {}).get("schedules") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{path}: expected a top-level 'schedules:' list of mappings")
    out = [build(e) for e in entries]
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{path}: a schedule id appears twice")
    return out


def schedules_apply(args: argparse.Namespace, ch: grpc.Channel) -> int:
    desired = load(Path(args.file))
    stub = ss_grpc.ScheduleServiceStub(ch)
    current = {s.id: s for s in _all(stub)}
    plan: list[tuple[str, str, ss.Schedule | None, list[str]]] = []
    for s in desired:
        if s.id not in current:
            plan.append(("+", s.id, s, []))
        elif diff := changes(s, current[s.id]):
            plan.append(("~", s.id, s, diff))
        else:
            plan.append(("=", s.id, None, []))
    wanted = {s.id for s in desired}
    if args.prune:
        plan += [("-", sid, None, []) for sid in sorted(current) if sid not in wanted]
    for mark, sid, want, _ in plan:
        if args.dry_run:
            pass
        elif mark == "+":
            assert want is not None
            stub.CreateSchedule(ss.CreateScheduleRequest(schedule=want), timeout=TIMEOUT)
        elif mark == "~":
            assert want is not None
            stub.UpdateSchedule(ss.UpdateScheduleRequest(schedule=want), timeout=TIMEOUT)
        elif mark == "-":
            stub.DeleteSchedule(ss.DeleteScheduleRequest(id=sid), timeout=TIMEOUT)
    if args.json:
        output.print_json(
            [{"op": m, "id": sid, "changed": d} for m, sid, _, d in plan] if plan else []
        )
        return 0
    for mark, sid, _, diff in plan:
        print(f"{mark} {sid}" + (f" ({', '.join(diff)})" if diff else ""))
    counts = {m: sum(1 for p in plan if p[0] == m) for m in "+~-="}
    stray = [] if args.prune else [sid for sid in current if sid not in wanted]
    verb = "would apply" if args.dry_run else "applied"
    print(
        f"{verb}: {counts['+']} created, {counts['~']} updated, {counts['-']} deleted, "
        f"{counts['=']} unchanged"
        + (f"; {len(stray)} not in the file (--prune deletes them)" if stray else "")
    )
    return 0


# -- wiring ---------------------------------------------------------------------------------------
def _schedule_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("id")
    p.add_argument("--cron", help="cron expression (5 fields, 6 with seconds, or @daily ...)")
    p.add_argument("--every", help="a fixed interval like 30s, 15m, 1h")
    p.add_argument("--timezone", help="IANA zone the cron is read in (default UTC)")
    p.add_argument("--kind", help="the job's kind")
    p.add_argument("--queue", help="the job's queue")
    p.add_argument("--payload", help="the job's payload, a JSON object")
    p.add_argument("--priority", type=int)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--missed", choices=[*POLICIES, "run-once", "catch-up"])
    p.add_argument("--catch-up-max", type=int, help="with --missed catch_up: at most N ticks")
    p.add_argument("--paused", action="store_true", default=None, help="create it paused")


def register(sub: Any) -> None:
    common = _common()

    def leaf(group: Any, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_)
        p.set_defaults(func=_run(handler))
        return p

    top = sub.add_parser("schedules", help="periodic jobs: cron or every, declared or by hand")
    g = top.add_subparsers(dest="action", required=True)
    leaf(g, "list", schedules_list, "every schedule with its next and last run")
    leaf(g, "show", schedules_show, "one schedule").add_argument("id")
    _schedule_flags(leaf(g, "create", schedules_create, "create a schedule"))
    _schedule_flags(leaf(g, "update", schedules_update, "change the fields given"))
    leaf(g, "delete", schedules_delete, "delete a schedule").add_argument("id")
    leaf(g, "pause", schedules_pause, "stop its ticks").add_argument("id")
    leaf(g, "resume", schedules_resume, "tick again from the next tick after now").add_argument(
        "id"
    )
    leaf(g, "trigger", schedules_trigger, "enqueue its job once, now").add_argument("id")
    p = leaf(g, "apply", schedules_apply, "make the server's schedules what FILE.yaml says")
    p.add_argument("file", help="YAML with a top-level 'schedules:' list")
    p.add_argument("--prune", action="store_true", help="delete schedules the file does not name")
    p.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
