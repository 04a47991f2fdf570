"""What the distribution ships beside the code: version, licence, type information."""

import importlib
import importlib.metadata
from pathlib import Path

import pytest

import era

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

CHECKOUT = Path(__file__).resolve().parent.parent


def test_version_is_the_installed_distributions():
    assert era.__version__ == importlib.metadata.version("era-activation")


def test_version_without_installed_metadata_is_marked_unknown(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    try:
        assert importlib.reload(era).__version__ == "0.0.0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(era)


def test_licence_and_type_marker_are_declared():
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not a table
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (CHECKOUT / "LICENSE").read_text()
    assert (Path(era.__file__).parent / "py.typed").is_file()
