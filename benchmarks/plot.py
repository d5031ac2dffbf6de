"""Draws the benchmark results as one figure, with each target as a dashed line.

Needs matplotlib, which is in the ``dev`` extra; without it :func:`draw` says so and draws
nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import run

TARGET_STYLE = {"color": "tab:red", "linestyle": "--", "linewidth": 1}
MODE_LABELS = {"async": "VaporDeploymentTrigger, one event loop", "threads": "websocket-client"}


def draw(results: dict[str, Any], path: Path) -> str:
    """Draw ``results`` to ``path``; return a line saying what was done."""
    try:
        import matplotlib
    except ImportError:
        return "No figure: matplotlib is not installed (pip install -e '.[dev]')."
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = results["sections"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    waits = sections.get("waits")
    if waits:
        _per_size(axes[0][0], waits, "kib_per_wait", "RSS per wait (KiB)", run.MAX_KIB_PER_WAIT)
        _per_size(
            axes[0][1],
            waits,
            "idle_cpu_percent",
            "idle CPU (% of a core)",
            run.MAX_IDLE_CPU_PERCENT,
        )
        _lag(axes[1][0], waits, run.MAX_LAG_P99_MS)
        stopped = waits.get("threads_stopped")
        if stopped:
            axes[0][0].set_title(f"websocket-client threads stop {stopped}", fontsize=7, wrap=True)
    if "latency" in sections:
        _latency(axes[1][1], sections["latency"], run.MAX_LATENCY_P99_MS)
    notes = []
    if "parse" in sections:
        cost = sections["parse"]["baselines"]["import airflow.sdk"]["provider_ms"]
        notes.append(f"DAG-parse cost {cost:.1f} ms (target {run.MAX_PARSE_MS:g} ms)")
    if "hook" in sections:
        ratio = sections["hook"]["ratio_median_of_rounds"]
        notes.append(f"hook / bare requests throughput {ratio:.2f} (target {run.MIN_HOOK_RATIO:g})")
    machine = results.get("machine", {})
    notes.append(f"Python {machine.get('python')}, {machine.get('cpus')} CPUs")
    figure.suptitle("airflow-provider-vapor benchmarks against the emulator on loopback")
    figure.text(0.5, 0.01, "   |   ".join(notes), ha="center", fontsize=9)
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"Figure: {path}"


def _per_size(axis: Any, waits: dict[str, Any], key: str, label: str, target: float) -> None:
    for mode in ("async", "threads"):
        runs = run.measured(waits[mode])
        if runs:
            counts = [point["count"] for point in runs]
            axis.plot(counts, [point[key] for point in runs], marker="o", label=MODE_LABELS[mode])
    axis.axhline(target, label="target", **TARGET_STYLE)
    axis.set_xlabel("concurrent waits")
    axis.set_ylabel(label)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _lag(axis: Any, waits: dict[str, Any], target: float) -> None:
    runs = run.measured(waits["async"])
    counts = [point["count"] for point in runs]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        values = [max(point["loop_lag"][key], 0.01) for point in runs]
        axis.plot(counts, values, marker="o", label=f"loop lag {label}")
    axis.axhline(target, label="target (p99)", **TARGET_STYLE)
    axis.set_yscale("log")
    axis.set_xlabel("concurrent waits (one event loop)")
    axis.set_ylabel("event-loop lag while idle (ms)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")


def _latency(axis: Any, latency: dict[str, Any], target: float) -> None:
    staggered, burst = latency["staggered"], latency["burst"]
    rows = [
        ("channel, 1 wait", latency["single"]["p50_ms"], latency["single"]["p99_ms"]),
        (f"channel, {staggered['count']:,} waits", staggered["p50_ms"], staggered["p99_ms"]),
        (f"channel, {burst['count']:,} ending at once", burst["p50_ms"], burst["p99_ms"]),
    ]
    rows += [
        (
            f"REST poll every {row['interval_s']:g} s (computed)",
            row["mean_detection_ms"],
            row["p99_detection_ms"],
        )
        for row in latency["polling"]
    ]
    positions = range(len(rows))
    axis.barh(
        [p + 0.2 for p in positions], [row[1] for row in rows], height=0.4, label="p50 / mean"
    )
    axis.barh([p - 0.2 for p in positions], [row[2] for row in rows], height=0.4, label="p99")
    axis.axvline(target, label="target (p99 at 1,000 waits)", **TARGET_STYLE)
    axis.set_yticks(list(positions), [row[0] for row in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("completion detected after (ms)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both", axis="x")
