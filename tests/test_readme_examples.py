"""README.md's grpcurl, grpc-health-probe and `jobqueue-grpc` examples, run against a real
server, so that the commands and the outputs the README shows cannot drift from what the tools
really do.

The convention, in README.md: an HTML comment `<!-- readme-test -->` right before a fenced block
marks it as tested (nothing else is run). A ```sh block holds commands (`\\` continues a line, `#`
starts a comment); when the very next fenced block is its output, that output is checked against
the last command's. A block whose lines start with `$ ` holds commands, each followed by its
output. Commands run in README order against one fresh server (gRPC on the README's
localhost:50051, its HTTP port on localhost:8080), in a scratch directory, so each may build on the
one before. `<!-- readme-test: file NAME -->` writes the block into NAME in that directory (a file
a later command reads); `<!-- readme-test: eventually -->` runs the last command again until its
output matches (for what a background loop does, such as a schedule's tick), within a deadline.

Outputs are compared as patterns: JSON keys and values must match, `...` stands for anything
left out (keys, list items, the rest of a string), and ids and times (alone or inside a string)
only need the same shape.
An id or token the README shows (say the enqueued job's, or `"eyJ0IjogIjIw...In0"`, shortened)
is bound to the real one the first time it is printed: shown again, it must be the same one,
and later commands get the real one in its place. `ERROR:` outputs are grpcurl's status: code,
message and details are compared the same way. Tables compare their header and first column.
`HTTP/1.1 ...` outputs (curl -i) compare the status line, the headers shown and the JSON body.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import ServerFactory
from tests.operators import seed_dead_letter
from tests.support import free_port, wait_for_value
from tests.test_clients import unavailable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOOLS_BIN = ROOT / ".tools" / "bin"
CLI = Path(sys.executable).parent / "jobqueue-grpc"
MARKER = "<!-- readme-test -->"
PROGRAMS = ("grpcurl", "grpc-health-probe", "jobqueue-grpc", "curl")
README_ADDRESS = "localhost:50051"
README_HTTP_ADDRESS = "localhost:8080"
ELLIPSIS = "\u2026readme-ellipsis\u2026"
# The dead letter the README's DeadLetterService examples act on; the test seeds a real one.
README_DEAD_LETTER = "3f0c9a52-1d7e-4b55-9f0a-2b8e6f3b7c11"

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
MARKER_RE = re.compile(r"<!-- readme-test(?::\s*(.*?))?\s*-->\Z")


# -- reading the README ---------------------------------------------------------------------------
@dataclass
class Example:
    line: int  # where the commands start in README.md
    commands: list[list[str]]
    output: str | None  # what the README shows for the last command, if anything
    eventually: bool = False  # run the last command again until its output matches
    file: str | None = None  # not commands: a file to write, with `output` its text

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shlex.join(self.commands[-1])[:100]}"


def split_commands(text: str) -> list[list[str]]:
    """Shell lines -> argv lists: `\\`-newline joins lines, quotes may span lines."""
    commands: list[list[str]] = []
    pending = ""
    for line in text.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if argv:
            commands.append(argv)
    assert not pending, f"unterminated command: {pending!r}"
    return commands


def examples(text: str) -> list[Example]:
    found = []
    for m in FENCE_RE.finditer(text):
        marker = MARKER_RE.search(text[: m.start()].rstrip())
        if not marker:
            continue
        option = marker.group(1) or ""
        line = text.count("\n", 0, m.start()) + 2
        body = m.group(2)
        if option.startswith("file "):
            found.append(Example(line, [], body, file=option.removeprefix("file ").strip()))
            continue
        assert option in ("", "eventually"), f"README.md:{line}: unknown {marker.group(0)}"
        if body.startswith("$ "):  # each command, then its output
            for n, ln in enumerate(body.splitlines()):
                if ln.startswith("$ "):
                    found.append(Example(line + n, split_commands(ln[2:]), None))
                else:
                    shown = found[-1].output
                    found[-1].output = ln if shown is None else f"{shown}\n{ln}"
            continue
        rest = text[m.end() :]
        nxt = FENCE_RE.match(rest) if rest.startswith("```") else None
        if nxt and nxt.group(1) not in ("", "json", "text"):
            nxt = None  # more commands, not an output
        output = nxt.group(2) if nxt else None
        found.append(Example(line, split_commands(body), output, option == "eventually"))
    return found


# -- outputs as patterns --------------------------------------------------------------------------
def pattern(text: str) -> Any:
    """README JSON with `...` left-outs -> a JSON value with ELLIPSIS markers."""
    out: list[str] = []
    stack: list[str] = []
    i, in_str = 0, False
    while i < len(text):
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("...", i):
            out.append(json.dumps(ELLIPSIS) + (": null" if stack and stack[-1] == "{" else ""))
            i += 3
            continue
        else:
            if c in "{[":
                stack.append(c)
            elif c in "}]":
                stack.pop()
            out.append(c)
        i += 1
    return json.loads("".join(out))


@dataclass
class Bindings:
    """README ids -> the real ones they stand for."""

    ids: dict[str, str] = field(default_factory=dict)

    def sub(self, text: str) -> str:
        for readme_id, real in self.ids.items():
            text = text.replace(readme_id, real)
        return text

    def apply(self, argv: list[str]) -> list[str]:
        return [self.sub(arg) for arg in argv]


def match(expected: Any, actual: Any, where: str, bind: Bindings, command: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        shown = {k: v for k, v in expected.items() if k != ELLIPSIS}
        missing = sorted(set(shown) - set(actual))
        assert not missing, f"{where}: keys {missing} not in the real output {sorted(actual)}"
        if ELLIPSIS not in expected:
            extra = sorted(set(actual) - set(shown))
            assert not extra, f"{where}: the real output also has {extra}: add them or `...`"
        for k, v in shown.items():
            match(v, actual[k], f"{where}.{k}", bind, command)
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        items = [v for v in expected if v != ELLIPSIS]
        if ELLIPSIS in expected:
            assert len(actual) >= len(items), f"{where}: {len(actual)} items, README shows more"
        else:
            assert len(actual) == len(items), f"{where}: {len(actual)} items, README {len(items)}"
        for n, (e, a) in enumerate(zip(items, actual, strict=False)):
            match(e, a, f"{where}[{n}]", bind, command)
    elif isinstance(expected, str):
        assert isinstance(actual, str), f"{where}: expected a string, got {actual!r}"
        if expected in bind.ids:
            assert actual == bind.ids[expected], f"{where}: {actual!r} is not {expected}'s id"
        elif "..." in expected:  # a shortened id or token: the same one wherever it is shown
            bind.ids[expected] = actual
        elif UUID_RE.fullmatch(expected) and expected not in command:
            assert UUID_RE.fullmatch(actual), f"{where}: {actual!r} is not an id"
            bound = bind.ids.setdefault(expected, actual)
            assert bound == actual, f"{where}: README id {expected} was {bound}, now {actual}"
        elif TIME_RE.fullmatch(expected) and expected not in command:
            assert TIME_RE.fullmatch(actual), f"{where}: {actual!r} is not a time"
        elif (TIME_RE.search(expected) or UUID_RE.search(expected)) and expected not in command:
            shape = shape_pattern(bind.sub(expected))  # e.g. "schedule:heartbeat:<a time>"
            assert shape.fullmatch(actual), f"{where}: README shows {expected!r}, real {actual!r}"
        else:
            expected = bind.sub(expected)
            assert actual == expected, f"{where}: README shows {expected!r}, real {actual!r}"
    else:
        assert actual == expected, f"{where}: README shows {expected!r}, real {actual!r}"


def shape_pattern(text: str) -> re.Pattern[str]:
    """A string with ids and times in it -> a regex where each may be any id or time."""
    out, at = [], 0
    for m in re.finditer(f"{TIME_RE.pattern}|{UUID_RE.pattern}", text):
        out.append(re.escape(text[at : m.start()]))
        out.append(TIME_RE.pattern if TIME_RE.fullmatch(m.group(0)) else UUID_RE.pattern)
        at = m.end()
    out.append(re.escape(text[at:]))
    return re.compile("".join(out))


def grpc_error(text: str) -> dict[str, Any]:
    """grpcurl's `ERROR:` block -> {"code", "message", "details": [...]}."""
    code = re.search(r"^\s*Code: (.*)$", text, re.MULTILINE)
    message = re.search(r"^\s*Message: (.*)$", text, re.MULTILINE)
    assert code and message, f"not a grpcurl error:\n{text}"
    details = re.split(r"^\s*\d+\)\s*", text.split("Details:", 1)[1], flags=re.MULTILINE)[1:]
    return {
        "code": code.group(1).strip(),
        "message": message.group(1).strip(),
        "details": [pattern(d) for d in details],
    }


def grpcurl_error(text: str) -> dict[str, Any]:
    """The same from real grpcurl output, whose details are indented JSON."""
    out = grpc_error(text)
    out["details"] = [json.loads(json.dumps(d)) for d in out["details"]]
    return out


def compare(ex: Example, expected: str, code: int, actual: str, bind: Bindings) -> None:
    command = shlex.join(ex.commands[-1])
    exp = expected.strip()
    if not exp.startswith(("{", "[", "ERROR:")):
        exp = bind.sub(exp)
    if exp.startswith("HTTP/"):
        assert code == 0, f"{ex}: exit {code}\n{actual}"
        head, _, body = exp.partition("\n\n")
        real_head, _, real_body = actual.replace("\r\n", "\n").partition("\n\n")
        status, *headers = head.splitlines()
        real_status, *real_headers = real_head.splitlines()
        assert real_status.strip() == status.strip(), f"{ex}: status line:\n{actual}"
        seen = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in real_headers}
        for h in headers:
            name, value = (part.strip() for part in h.split(":", 1))
            assert seen.get(name.lower()) == value, f"{ex}: no header {h!r}:\n{actual}"
        try:
            match(pattern(body), json.loads(real_body), "body", bind, command)
        except AssertionError as e:
            raise AssertionError(f"{ex}: {e}\nreal output:\n{actual}") from None
    elif exp.startswith("ERROR:"):
        assert code != 0, f"{ex}: README shows an error, the command succeeded:\n{actual}"
        match(grpc_error(exp), grpcurl_error(actual), "error", bind, command)
    elif exp.startswith(("{", "[")):
        assert code == 0, f"{ex}: exit {code}\n{actual}"
        try:
            match(pattern(exp), json.loads(actual), "output", bind, command)
        except AssertionError as e:
            raise AssertionError(f"{ex}: {e}\nreal output:\n{actual}") from None
    elif exp.startswith("error:"):
        assert code == 1, f"{ex}: README shows an error, exit {code}:\n{actual}"
        assert actual.strip() == exp, f"{ex}: README shows\n{exp}\nreal:\n{actual}"
    elif re.fullmatch(r"[A-Z]+( +[A-Z]+)+", exp.splitlines()[0]):  # a table
        assert code == 0, f"{ex}: exit {code}\n{actual}"
        real = actual.strip().splitlines()
        assert real[0].split() == exp.splitlines()[0].split(), f"{ex}: header:\n{actual}"
        names = {row.split()[0] for row in real[1:]}
        for row in exp.splitlines()[1:]:
            assert row.split()[0] in names, f"{ex}: no row {row.split()[0]!r}:\n{actual}"
    else:
        assert code == 0, f"{ex}: exit {code}\n{actual}"
        assert actual.strip().splitlines() == exp.splitlines(), f"{ex}: real:\n{actual}"


# -- running them ---------------------------------------------------------------------------------
@dataclass
class Target:
    address: str  # the gRPC port's host:port
    http_address: str
    cwd: Path


async def run(argv: list[str], target: Target) -> tuple[int, str]:
    program, *args = argv
    address = target.address
    args = [a.replace(README_ADDRESS, address) for a in args]
    args = [a.replace(README_HTTP_ADDRESS, target.http_address) for a in args]
    if program in PROGRAMS[:2]:
        exe = TOOLS_BIN / program
    elif program == "jobqueue-grpc":
        exe = CLI
    elif program == "curl":
        exe = Path(shutil.which("curl") or "curl")
    else:
        raise AssertionError(f"README example runs {program!r}; only {PROGRAMS}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQUEUE_")}
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        *args,
        cwd=target.cwd,
        env={**env, "JOBQUEUE_ADDRESS": address},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_the_readme_marks_its_examples() -> None:
    found = examples(README.read_text())
    assert len(found) >= 30, [str(e) for e in found]
    shown = [e for e in found if e.output is not None]
    assert len(shown) >= 20, [str(e) for e in shown]
    assert any(e.file for e in found) and any(e.eventually for e in found)
    for ex in found:
        for argv in ex.commands:
            assert argv[0] in PROGRAMS, str(ex)


# README blocks that run grpcurl, curl or the CLI and are not marked, each named by a piece of it,
# and why it is not run. Any other such block must be marked.
UNTESTED = {
    "$ jobqueue-grpc serve\n": "needs an install without the server extra (tests/test_install.py)",
    "jq.internal:50051": "another host",
    "jobqueue-grpc dlq requeue 3f0c9a52": "alternatives, each acting on the one dead letter",
    "jobqueue-grpc dlq delete 3f0c9a52": "alternatives, each acting on the one dead letter",
    "--auth-tokens-file tokens": "starts servers with auth",
    "--tls-ca ca.pem": "auth and TLS against another host",
    "OTEL_EXPORTER_OTLP_ENDPOINT=": "starts a server",
}
COMMAND_RE = re.compile(r"^(\$ )?(\w+=\S+ )*(grpcurl|curl|jobqueue-grpc|grpc-health-probe)\b", re.M)


def test_every_command_example_is_tested_or_says_why_not() -> None:
    text = README.read_text()
    unmarked = []
    for m in FENCE_RE.finditer(text):
        if MARKER_RE.search(text[: m.start()].rstrip()) or not COMMAND_RE.search(m.group(2)):
            continue
        if not any(piece in m.group(2) for piece in UNTESTED):
            unmarked.append(f"README.md:{text.count(chr(10), 0, m.start()) + 2}")
    assert not unmarked, f"mark these `{MARKER}` (or list them in UNTESTED): {unmarked}"
    for piece in UNTESTED:
        assert piece in text, f"UNTESTED names {piece!r}, which README.md no longer has"


async def test_readme_examples_against_a_real_server(
    make_server: ServerFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    for tool in PROGRAMS[:2]:
        if not (TOOLS_BIN / tool).exists():
            unavailable(f"{TOOLS_BIN / tool} missing (make tools): README examples not run")
    if not shutil.which("curl"):
        unavailable("curl missing: README examples not run")
    srv = await make_server(http_port=free_port())
    target = Target(f"127.0.0.1:{srv.port}", f"127.0.0.1:{srv.http_port}", tmp_path)
    bind = Bindings()
    # The waiting ping job the README's CancelJobs examples count and cancel.
    await db.execute("SELECT jobqueue.enqueue('ping')")  # an id of its time, as the server's
    # The dead letter the README's DeadLetterService examples inspect.
    dead = await seed_dead_letter(db, queue="emails", kind="send_email", attempts=5, job_row=False)
    await db.execute(
        "UPDATE jobqueue.dead_letters SET errors = (SELECT jsonb_agg(e || $2::jsonb)"
        " FROM jsonb_array_elements(errors) e) WHERE job_id = $1",
        dead,
        json.dumps({"message": "smtp timeout"}),
    )
    bind.ids[README_DEAD_LETTER] = str(dead)

    for ex in examples(README.read_text()):
        if ex.file is not None:
            (tmp_path / ex.file).write_text(bind.sub(ex.output or ""))
            continue
        for n, argv in enumerate(ex.commands):
            if n < len(ex.commands) - 1 or ex.output is None:
                code, out = await run(bind.apply(argv), target)
                assert code == 0, f"{ex}: {shlex.join(argv)}: exit {code}\n{out}"
            elif ex.eventually:
                await wait_for_value(
                    lambda argv=argv, ex=ex: attempt(ex, argv, target, bind),
                    lambda failure: failure is None,
                    within=20,
                    interval=0.2,
                    what=str(ex),
                )
            else:
                code, out = await run(bind.apply(argv), target)
                compare(ex, ex.output, code, out, bind)


async def attempt(ex: Example, argv: list[str], target: Target, bind: Bindings) -> str | None:
    """Runs the command once: None when its output matches (keeping the ids it bound), else why
    not."""
    assert ex.output is not None
    code, out = await run(bind.apply(argv), target)
    trial = Bindings(dict(bind.ids))
    try:
        compare(ex, ex.output, code, out, trial)
    except AssertionError as e:
        return str(e)
    bind.ids = trial.ids
    return None


def test_quick_start_says_how_to_reach_what_the_readme_runs() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # What later sections run by name, and where the Quick start puts it.
    assert ". .venv/bin/activate" in quick
    assert 'export PATH="$PWD/.tools/bin:$PATH"' in quick
    assert "make tools" in quick and "420 MB" in quick
    assert (Path(sys.executable).parent / "jobqueue-grpc").exists()
    tools = (ROOT / "scripts" / "tools.sh").read_text()
    assert 'GOBIN="$PWD/.tools/bin"' in tools
    for tool in ("cmd/grpcurl@", "grpc-health-probe@"):
        assert tool in tools
    assert "420 MB" in tools  # `make tools` says what it is about to do
    # `make test` builds them in the open, before pytest, instead of inside a fixture.
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/tools.sh" in recipe and "echo" in recipe
    for program in ("jobqueue-grpc", "grpcurl", "grpc-health-probe", "python examples/"):
        assert program in text.split("## Quick start", 1)[1]
