"""The rooms' rule: imports point down the floors and no folder's rooms import each other in a
circle (the import-linter contracts in pyproject.toml). Checked on the tree as it is, and on a
copy with an upward import planted, which must fail naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "control", "sinks", "agents")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", run, "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_imports_point_down_and_make_no_circle() -> None:
    found = lint_imports(ROOT)
    assert found.returncode == 0, found.stdout + found.stderr
    assert "2 kept, 0 broken" in found.stdout


@pytest.mark.parametrize(("planted_in", "line", "named"), [
    # The pure fold reaching for the CLI: an arrow that points up.
    ("control/registry/rules.py", "import control.cli", "control.registry.rules -> control.cli"),
    # Storage importing the worker.
    ("sinks/tables.py", "import agents.app", "sinks.tables -> agents.app"),
    # Two rooms of one folder importing each other.
    ("agents/records/avro_input.py", "import agents.records.formats",
     "agents.records"),
])
def test_a_planted_import_is_named(tmp_path: Path, planted_in: str, line: str,
                                   named: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "history"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / planted_in
    target.write_text(target.read_text() + f"\n{line}  # planted by the test\n")
    found = lint_imports(tmp_path)
    assert found.returncode != 0, found.stdout
    assert named in found.stdout, found.stdout
