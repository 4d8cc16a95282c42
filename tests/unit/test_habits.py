"""The habits CI checks on every run (issue 10): a linter, a type checker, the import contracts.

- ruff over the whole tree (pyproject.toml `[tool.ruff]`);
- mypy over `pyweave/ store/ dataplane/` (`[tool.mypy]`);
- import-linter (`[tool.importlinter]`): store and dataplane never import each other or the core;
  the planner and the seams' value types import no pyroute2, grpc, etcd client or Docker SDK;
- the CLI's import path: loading `pyweave.cli` (every command registered, as `pyweave --help` does)
  imports neither pyroute2 nor grpc nor the Docker SDK: each command imports them when it runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    r = _run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_finds_nothing():
    r = _run(str(BIN / "mypy"), "--no-incremental")
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_contracts_are_kept():
    r = _run(str(BIN / "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_the_cli_loads_no_kernel_etcd_or_docker_client_nor_the_agent():
    probe = (
        "import sys, pyweave.cli, pyweave.cli.base as b, store.http; "
        "print(' '.join(sorted(m for m in ('pyroute2', 'grpc', 'pyetcd', 'docker', 'requests', 'pyweave.agent.loop') "
        "if m in sys.modules)))"
    )
    r = _run(sys.executable, "-c", probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"pyweave.cli imports {r.stdout.strip()} at load time"


def test_no_python_package_is_named_cmd():
    # cmd/ is installed as `pyweave_cmd`; an __init__.py there would shadow the standard library's
    # cmd module (which pdb imports) for anything run from the checkout.
    assert (REPO / "cmd").is_dir()
    assert not (REPO / "cmd" / "__init__.py").exists()
    r = _run(sys.executable, "-c", "import cmd, pdb; print(cmd.__file__)")
    assert r.returncode == 0 and "site-packages" not in r.stdout and str(REPO / "cmd") not in r.stdout, r.stdout


def test_test_modules_have_distinct_names():
    """pytest imports test modules by their base name (the suite has no packages): two files of one
    name in two tiers stop the collection of the whole suite."""
    seen: dict[str, Path] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name; rename one"
        seen[path.name] = path
