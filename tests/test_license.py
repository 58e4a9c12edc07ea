"""The project says under which licence it is published: a LICENSE file and package metadata."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_apache_license_file_and_metadata() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    meta = importlib.metadata.metadata("jobqueue-grpc")
    assert meta["License-Expression"] == "Apache-2.0"
