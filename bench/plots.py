"""PNG plots for the report, where a picture reads better than a table.

matplotlib is an optional dependency (`pip install -e '.[bench]'`); without it every function
here returns None and the report says the plot was skipped, so the smoke test runs without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MISSING = "plot skipped: matplotlib is not installed (`pip install -e '.[bench]'`)"


def _plot(path: Path, draw, *, panels: int = 1, figsize: tuple[float, float] = (8, 4.2)) -> Path | None:
    """A PNG at path of `panels` axes side by side, drawn by draw(*axes); None without matplotlib."""
    if not available():
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=figsize)
    try:
        draw(*(axes if panels > 1 else [axes]))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _axes(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def throughput_bars(path: Path, data: Mapping[str, Mapping[int, Sequence[float]]], *, title: str) -> Path | None:
    """Grouped bars: one group per path, one bar per stream count; the bar is the median, the
    whisker spans min..max of the repeats. data[path][streams] = [Gbit/s, ...]."""
    from bench.stats import median

    paths = list(data)
    streams = sorted({s for per in data.values() for s in per})
    width = 0.8 / max(1, len(streams))

    def draw(ax) -> None:
        for i, s in enumerate(streams):
            xs, ys, lo, hi = [], [], [], []
            for j, p in enumerate(paths):
                vals = data[p].get(s) or []
                if not vals:
                    continue
                m = median(vals)
                xs.append(j + (i - (len(streams) - 1) / 2) * width)
                ys.append(m)
                lo.append(m - min(vals))
                hi.append(max(vals) - m)
            ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=3, label=f"{s} stream{'s' if s > 1 else ''}")
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(range(len(paths)))
        ax.set_xticklabels(paths, fontsize=9)
        ax.set_ylabel("Gbit/s (median, whiskers: min-max)")
        ax.set_title(title)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)

    return _plot(path, draw)


def cdf(
    path: Path,
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    marks: Sequence[tuple[float, str]] = (),
    logx: bool = False,
) -> Path | None:
    """Empirical CDFs, one line per series, with vertical lines at the targets (marks)."""

    def draw(ax) -> None:
        for name, values in series.items():
            vals = sorted(values)
            if not vals:
                continue
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.step(vals, ys, where="post", label=f"{name} (n={len(vals)})")
        for x, label in marks:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.annotate(label, (x, 0.02), rotation=90, fontsize=8, color="grey", xytext=(3, 0), textcoords="offset points")
        if logx:
            ax.set_xscale("log")
        _axes(ax, title=title, xlabel=xlabel, ylabel="fraction of samples ≤ x")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=8)

    return _plot(path, draw)


def scale_lines(
    path: Path,
    hosts: Sequence[int],
    *,
    converge_s: Sequence[float],
    bound_s: Sequence[float],
    bound_target: float,
    per_reconcile_ms: Sequence[float],
    per_event_ms: Sequence[float],
) -> Path | None:
    """Two panels against cluster size: convergence after the burst with the CPU bound (the
    simulation's CPU over the cores) and the target multiple of it; agent CPU per reconcile and per
    watch event."""

    def draw(a, b) -> None:
        a.plot(hosts, converge_s, marker="o", label="all agents converged (wall)")
        a.plot(hosts, bound_s, marker="s", color="grey", label="CPU bound (CPU spent / cores)")
        a.plot(hosts, [bound_target * v for v in bound_s], color="grey", linestyle="--", linewidth=1,
               label=f"target: {bound_target:g} x CPU bound")
        _axes(a, title="Convergence after a burst of endpoints", xlabel="simulated hosts",
              ylabel="seconds after the burst started")
        b.plot(hosts, per_reconcile_ms, marker="o", label="CPU per reconcile")
        b.plot(hosts, per_event_ms, marker="s", label="CPU per watch event")
        _axes(b, title="Agent work against cluster size", xlabel="simulated hosts",
              ylabel="ms of agent CPU (median over agents)")
        for ax in (a, b):
            ax.legend(fontsize=8)

    return _plot(path, draw, panels=2, figsize=(10, 4))


def ghost_lines(
    path: Path,
    hosts: Sequence[int],
    *,
    cpu_ms: Mapping[str, Sequence[Sequence[float]]],
    program_s: Sequence[Sequence[float]],
    cpu_target_ms: float,
) -> Path | None:
    """Two panels against the number of (ghost) hosts: one agent's CPU per endpoint event (one
    line per series, e.g. as measured and less the idle rate), and the time until a burst is in
    its kernel. Each burst is a dot, the line joins the medians; a size with no value is left out."""
    from bench.stats import median

    def bursts(ax, values: Sequence[Sequence[float]], label: str) -> None:
        xs = [x for x, v in zip(hosts, values, strict=True) if v]
        line = ax.plot(xs, [median(v) for v in values if v], marker="o", label=f"{label} (median)")[0]
        dots = [(x, y) for x, v in zip(hosts, values, strict=True) for y in v]
        ax.scatter([x for x, _ in dots], [y for _, y in dots], s=12, alpha=0.4, color=line.get_color())

    def draw(a, b) -> None:
        for name, values in cpu_ms.items():
            bursts(a, values, name)
        a.axhline(cpu_target_ms, color="grey", linestyle="--", linewidth=1, label=f"target {cpu_target_ms:g} ms")
        _axes(a, title="One agent's CPU per event (dots: bursts)", xlabel="hosts in the cluster",
              ylabel="ms of agent CPU per endpoint event")
        bursts(b, program_s, "all changes in the kernel")
        _axes(b, title="Until every change of a burst is in the kernel", xlabel="hosts in the cluster",
              ylabel="seconds after the burst's first write")
        for ax in (a, b):
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(list(hosts), [str(h) for h in hosts])
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)

    return _plot(path, draw, panels=2, figsize=(10, 4))
