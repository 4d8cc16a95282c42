"""The benchmarks' code paths, run at the smoke size so they cannot rot (issue 6).

`python -m bench --quick` builds its own lab, runs every section with tiny samples and writes the
report; this checks that the report has each section's table, and that nothing is left behind.
Figures are never asserted here: timings live in bench/ and docs/performance.md.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyweave_lab import ensure_test_image, leftovers

REPO = Path(__file__).resolve().parents[2]
TITLES = [
    "1. Throughput",
    "2. Latency",
    "3. Convergence",
    "4. CLI overhead",
    "5. Agent cost",
    "6. Control-plane scale",
    "7. One host at cluster scale",
    "8. Routing",
    "9. Encryption",
    "10. DNS under load",
]


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.splitlines()[0].strip(): p for p in parts[1:]}


def _bench_processes() -> list[str]:
    """Command lines of processes the bench starts and must end: workers, etcd, pingers (also section 8's
    `bench.routing pinger`), iperf3, the ghost writer and the fan-out watchers."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmd for mark in ("bench.scale_worker", "bench.icmp", "pyweave-bench-scale-", "bench.ghost_writer",
                                         "bench.fanout_watcher", "pyweave-bench-ghosts-", "bench.routing",
                                         "bench.dnsload")):
            found.append(cmd.strip())
    return found


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_quick_benchmark_writes_every_section_and_leaves_nothing(tmp_path):
    ensure_test_image()
    out = tmp_path / "perf.md"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    text = out.read_text()
    sections = _sections(text)
    for heading in ("Machine", "Summary", "What limits the missed targets"):
        assert heading in sections, f"report lacks section {heading}"
    for title in TITLES:
        body = sections.get(title)
        assert body is not None, f"report lacks section {title}"
        assert "This section failed" not in body, body[:2000]
        assert "| --- |" in body, f"section {title} has no table"
        assert "| what | figure | target | verdict |" in body, f"section {title} has no checks"
    assert "python -m bench --quick" in text
    prefixes = set(re.findall(r"prefix (pw[0-9a-f]{6})", r.stdout))
    assert prefixes, "the bench did not say which lab it built"
    for prefix in prefixes:
        assert not leftovers(prefix), f"the bench left behind: {leftovers(prefix)}"
    assert not _bench_processes(), f"the bench left processes running: {_bench_processes()}"


def test_report_says_a_missed_target_plainly():
    sys.path.insert(0, str(REPO))
    from bench.report import SectionResult, render

    res = SectionResult("x", "9. Example")
    res.check("thing", "2 s", "<= 1 s", False)
    res.limits.append("profile says why")
    import datetime

    text = render([res], machine=[("CPUs (nproc)", "2")], command=["python", "-m", "bench"], quick=False,
                  started=datetime.datetime.now(datetime.UTC), seconds=1.0, skipped=[])
    assert "| 9. Example | thing | 2 s | <= 1 s | **MISSED** |" in text
    assert "1 of 1 targets **missed**" in text
    assert "### 9. Example\n\nprofile says why" in text


def test_unknown_section_is_refused():
    r = subprocess.run([sys.executable, "-m", "bench", "--only", "nonsense"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown section nonsense" in r.stderr
