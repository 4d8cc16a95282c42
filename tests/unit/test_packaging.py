"""`pip install .` (not only the editable install the tests use) gives every module and command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {"pyweave", "pyweave-agent", "pyweave-demo", "pyweave-lab-host"}


def test_the_wheel_holds_every_module_and_the_console_scripts(tmp_path):
    # Built from a clean copy: setuptools reuses a build/ folder left in the tree, which would hide
    # a module the package list forgets.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("pyweave", "store", "dataplane", "cmd", "deploy/lab"):
        shutil.copytree(REPO / part, src / part, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("pyweave-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        **{f"{p.relative_to(REPO)}": p for folder in ("pyweave", "store", "dataplane") for p in (REPO / folder).rglob("*.py")},
        **{f"pyweave_cmd/{p.name}": p for p in (REPO / "cmd").glob("*.py")},
        **{f"pyweave_lab/{p.name}": p for p in (REPO / "deploy" / "lab").glob("*.py")},
    }
    missing = sorted(k for k in sources if k not in names)
    assert not missing, f"modules left out of the wheel: {missing}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert COMMANDS <= {line.split("=")[0].strip() for line in scripts.splitlines() if "=" in line}
