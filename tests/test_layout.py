"""The house's shape, checked: imports go one way (api -> engine -> store -> domain), the engine
never sees protobuf, and no engine room grows into a hall again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jobqueue_grpc"
ROOM_MAX_LINES = 350


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


FORBIDDEN = {
    "domain": (
        "jobqueue_grpc.gen",
        "jobqueue_grpc.api",
        "jobqueue_grpc.engine",
        "jobqueue_grpc.store",
        "grpc",
        "asyncpg",
    ),
    "store": ("jobqueue_grpc.gen", "jobqueue_grpc.api", "jobqueue_grpc.engine", "grpc"),
    "engine": ("jobqueue_grpc.gen", "jobqueue_grpc.api", "grpc", "google.protobuf"),
}


@pytest.mark.parametrize("folder", list(FORBIDDEN))
def test_imports_go_one_way(folder: str) -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules(folder)
        for name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])
    ]
    assert bad == []


def test_engine_rooms_stay_small() -> None:
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in modules("engine")}
    assert {p: n for p, n in sizes.items() if n > ROOM_MAX_LINES} == {}
