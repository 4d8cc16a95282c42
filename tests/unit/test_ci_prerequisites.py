"""In CI a missing prerequisite fails the run: never a skip, never an xfail.

A lab-marked and a kernel-marked test are written into a temporary directory next to a byte copy
of the real tests/conftest.py, and pytest runs them in a subprocess with a PATH on which `etcd`
cannot be found. As root (how CI runs) the lab test must fail naming etcd; as any other user both
must fail naming root. Outside CI the same run skips the lab test with the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

TESTS = '''
import pytest


@pytest.mark.lab
def test_needs_the_lab():
    pass


@pytest.mark.kernel
def test_needs_the_kernel():
    pass
'''


def path_without_etcd(bindir: Path) -> str:
    """A directory of symlinks to every executable on the current PATH but etcd*."""
    bindir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in sorted(os.listdir(directory)):
            source = os.path.join(directory, entry)
            link = bindir / entry
            if entry.startswith("etcd") or link.exists() or link.is_symlink():
                continue
            if os.path.isfile(source) and os.access(source, os.X_OK):
                link.symlink_to(source)
    return str(bindir)


def run_pytest(tmp_path: Path, *, ci: bool) -> tuple[subprocess.CompletedProcess, dict[str, tuple[str, str]]]:
    suite = tmp_path / ("ci" if ci else "local")
    suite.mkdir()
    shutil.copyfile(CONFTEST, suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\n")  # rootdir here: not the repository's settings
    (suite / "test_needs.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = path_without_etcd(tmp_path / f"bin-{suite.name}")
    if ci:
        env["CI"] = "true"
    report = suite / "report.xml"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", f"--junitxml={report}", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120,
    )
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcomes[case.get("name")] = (kind, (found.get("message") or "") + (found.text or ""))
                break
        else:
            outcomes[case.get("name")] = ("passed", "")
    return r, outcomes


def expected_reason() -> str:
    return "needs root" if os.geteuid() != 0 else "needs the etcd binary"


def test_the_path_used_really_lacks_etcd(tmp_path):
    path = path_without_etcd(tmp_path / "bin")
    assert shutil.which("etcd", path=path) is None
    assert shutil.which("sh", path=path) is not None  # the rest of the PATH is still there


def test_in_ci_a_missing_prerequisite_fails_the_run(tmp_path):
    r, outcomes = run_pytest(tmp_path, ci=True)
    output = r.stdout + r.stderr
    assert r.returncode == 1, output  # 1: tests failed (not 0, and not a usage or collection error)
    kind, message = outcomes["test_needs_the_lab"]
    assert kind == "failure", (outcomes, output)
    assert "CI machine broken" in message and expected_reason() in message, message
    if os.geteuid() == 0:
        assert "apt-get install etcd-server" in message, message
        assert outcomes["test_needs_the_kernel"] == ("passed", ""), outcomes  # root is all it needs
    else:
        assert outcomes["test_needs_the_kernel"][0] == "failure", outcomes
        assert "needs root" in outcomes["test_needs_the_kernel"][1]
    assert "skipped" not in output.splitlines()[-1] and "xfail" not in output and "xpass" not in output, output
    assert "FAILED test_needs.py::test_needs_the_lab" in output, output


def test_outside_ci_the_same_test_is_skipped_with_the_reason(tmp_path):
    r, outcomes = run_pytest(tmp_path, ci=False)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    kind, message = outcomes["test_needs_the_lab"]
    assert kind == "skipped" and expected_reason() in message, (outcomes, output)


@pytest.mark.parametrize("value, ci", [("true", True), ("1", True), ("false", False), ("0", False), ("", False)])
def test_what_counts_as_ci(monkeypatch, value, ci):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest_copy", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("CI", value)
    assert module.in_ci() is ci
