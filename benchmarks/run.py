"""Run the benchmarks, print the results as tables, keep them as JSON, and draw them.

``python -m benchmarks`` runs every section; ``--only waits,latency`` runs some of them and keeps
the last results of the others in ``benchmarks/results/latest.json``. The figure goes to
``docs/benchmarks.png``. Each section's measurements run in worker processes with their own
emulator; their logs are under ``benchmarks/results/logs``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from benchmarks import hook, latency, parse, waits
from benchmarks.common import RESULTS, ROOT

SECTIONS = ("waits", "latency", "parse", "hook")
LATEST = RESULTS / "latest.json"
FIGURE = ROOT / "docs" / "benchmarks.png"
PACKAGES = ("apache-airflow", "websockets", "websocket-client", "requests", "httpx", "uvicorn")

MAX_KIB_PER_WAIT = 20.0
MAX_LAG_P99_MS = 20.0
MAX_IDLE_CPU_PERCENT = 5.0
MAX_LATENCY_P99_MS = 10.0
MAX_PARSE_MS = 15.0
MIN_HOOK_RATIO = 0.9
CONCURRENT_WAITS = 10_000


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--sizes", type=_sizes, default=[1000, 5000, 10000])
    parser.add_argument("--thread-sizes", type=_sizes, default=[1000, 5000, 10000])
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=20.0,
        help="idle window per size; 20 s is one keepalive period, so every channel pings once",
    )
    parser.add_argument("--latency-repeats", type=int, default=100)
    parser.add_argument("--latency-waits", type=int, default=1000)
    parser.add_argument("--latency-gap", type=float, default=0.005)
    parser.add_argument("--parse-samples", type=int, default=7)
    parser.add_argument("--hook-calls", type=int, default=1000)
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    return parser


def _machine() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": versions,
    }


def _load_latest() -> dict[str, Any]:
    try:
        return json.loads(LATEST.read_text())
    except (OSError, ValueError):
        return {"sections": {}}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections; returns the exit status (0, whatever the numbers are)."""
    arguments = _parser().parse_args(argv)
    chosen = [name.strip() for name in arguments.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        _parser().error(f"unknown sections: {', '.join(unknown)}")

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "waits": lambda: waits.run(arguments.sizes, arguments.thread_sizes, arguments.hold_seconds),
        "latency": lambda: latency.run(
            arguments.latency_repeats, arguments.latency_waits, arguments.latency_gap
        ),
        "parse": lambda: parse.run(arguments.parse_samples),
        "hook": lambda: hook.run(arguments.hook_calls, rounds=hook.ROUNDS),
    }
    results = _load_latest()
    results["machine"] = _machine()
    started = time.perf_counter()
    for name in chosen:
        section_started = time.perf_counter()
        results["sections"][name] = {
            **runners[name](),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "took_s": round(time.perf_counter() - section_started, 1),
        }
    results["targets"] = evaluate(results["sections"])

    RESULTS.mkdir(parents=True, exist_ok=True)
    LATEST.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report(results["sections"], results["targets"], chosen))
    print(f"\nTook {time.perf_counter() - started:.0f} s. Results: {LATEST.relative_to(ROOT)}")
    if not arguments.no_plot:
        from benchmarks.plot import draw

        print(draw(results, FIGURE))
    return 0


def evaluate(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value it is judged on and whether it is met (``None``:
    not measured at that size)."""
    targets: list[dict[str, Any]] = []

    def target(name: str, measured: str, met: bool | None) -> None:
        targets.append({"target": name, "measured": measured, "met": met})

    waits_result = sections.get("waits")
    if waits_result:
        runs = waits_result["async"]
        largest = max(runs, key=lambda run: run["count"], default=None)
        if largest is not None:
            ended = largest.get("statuses", {}).get("success", 0)
            target(
                f"{CONCURRENT_WAITS:,} concurrent waits in one process",
                f"{ended:,} of {largest['count']:,} waits opened and ended in success",
                None
                if largest["count"] < CONCURRENT_WAITS
                else ended == largest["count"] and largest["opened"] == largest["count"],
            )
        for run in measured(runs):
            size = f"at {run['count']:,} waits"
            kib = run["kib_per_wait"]
            target(
                f"at most {MAX_KIB_PER_WAIT:g} KiB per wait {size}",
                f"{kib:.1f} KiB",
                kib <= MAX_KIB_PER_WAIT,
            )
            lag = run["loop_lag"]["p99_ms"]
            target(
                f"loop lag p99 at most {MAX_LAG_P99_MS:g} ms {size}",
                f"{lag:.1f} ms",
                lag <= MAX_LAG_P99_MS,
            )
            cpu = run["idle_cpu_percent"]
            target(
                f"idle CPU at most {MAX_IDLE_CPU_PERCENT:g}% of a core {size}",
                f"{cpu:.1f}%",
                cpu <= MAX_IDLE_CPU_PERCENT,
            )
    latency_result = sections.get("latency")
    if latency_result:
        staggered = latency_result["staggered"]
        target(
            f"completion latency p99 at most {MAX_LATENCY_P99_MS:g} ms at "
            f"{staggered['count']:,} waits",
            f"{staggered['p99_ms']:.1f} ms",
            staggered["p99_ms"] <= MAX_LATENCY_P99_MS,
        )
    parse_result = sections.get("parse")
    if parse_result:
        cost = parse_result["baselines"]["import airflow.sdk"]["provider_ms"]
        target(
            f"DAG-parse cost at most {MAX_PARSE_MS:g} ms beyond import airflow.sdk",
            f"{cost:.1f} ms",
            cost <= MAX_PARSE_MS,
        )
    hook_result = sections.get("hook")
    if hook_result:
        ratio = hook_result["ratio_median_of_rounds"]
        target(
            f"hook throughput at least {MIN_HOOK_RATIO:g} of bare requests (median over rounds)",
            f"{ratio:.2f}",
            ratio >= MIN_HOOK_RATIO,
        )
    return targets


def measured(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of a waits section that got as far as measuring."""
    return [run for run in runs if "kib_per_wait" in run]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join("  " + line for line in lines)


def _statuses(run: dict[str, Any]) -> str:
    if "statuses" not in run:
        return "did not all end in time"
    text = ", ".join(f"{count} {status}" for status, count in sorted(run["statuses"].items()))
    failures = run.get("failures") or {}
    if failures:
        text += "; errors: " + ", ".join(f"{count} {name}" for name, count in failures.items())
    return text


def _waits_report(result: dict[str, Any]) -> str:
    rows = []
    for run in result["async"] + result["threads"]:
        if "kib_per_wait" not in run:
            rows.append([run["mode"], f"{run['count']:,}", *["-"] * 6, run["stopped"]])
            continue
        lag = run.get("loop_lag")
        rows.append(
            [
                run["mode"],
                f"{run['count']:,}",
                f"{run['setup_s']:.1f}",
                f"{run['kib_per_wait']:.1f}",
                f"{run['idle_cpu_percent']:.1f}",
                f"{lag['p50_ms']:.2f} / {lag['p99_ms']:.1f} / {lag['max_ms']:.0f}" if lag else "-",
                f"{run['gc_while_idle']['full_max_ms']:.0f}",
                f"{run['finish_all_s']:.1f}" if "finish_all_s" in run else "-",
                _statuses(run) + (f"; {run['stopped']}" if run.get("stopped") else ""),
            ]
        )
    header = [
        "mode",
        "waits",
        "setup s",
        "KiB/wait",
        "idle CPU %",
        "loop lag p50/p99/max ms",
        "full GC ms",
        "all ended s",
        "outcome",
    ]
    stopped = result.get("threads_stopped")
    note = f"\n  threads stop {stopped}" if stopped else ""
    return (
        f"Concurrent waits: RSS growth per wait, CPU and loop lag over a "
        f"{result['hold_seconds']:g} s idle window\n"
        "(async: VaporDeploymentTrigger.run() in one event loop; threads: websocket-client, "
        "one thread per wait)\n" + _table(header, rows) + note
    )


def _latency_report(result: dict[str, Any]) -> str:
    staggered, burst = result["staggered"], result["burst"]
    rows = [
        ["1", "one at a time", *_ms(result["single"])],
        [f"{staggered['count']:,}", f"{staggered['gap_ms']:g} ms apart", *_ms(staggered)],
        [f"{burst['count']:,}", "all at once", *_ms(burst)],
    ]
    header = ["waits", "deployments finish", "p50 ms", "p99 ms", "max ms", "samples"]
    pokes = result["pokes"]
    polling_rows = [
        [
            f"{row['interval_s']:g} s",
            f"{row['mean_detection_ms'] / 1000:.2f} s",
            f"{row['p99_detection_ms'] / 1000:.2f} s",
            f"{row['requests_per_hour_per_wait']:g}",
            f"{row['requests_per_second_at_concurrency']:.1f}",
        ]
        for row in result["polling"]
    ]
    polling_header = [
        "poke interval",
        "mean detection",
        "p99 detection",
        "requests/h per wait",
        f"requests/s for {staggered['count']:,} waits",
    ]
    return (
        "Completion latency: emulator's terminal status -> trigger's event (measured)\n"
        + _table(header, rows)
        + "\n\nREST polling sensor (computed: interval / 2 + one measured request; p99: 0.99 x "
        "interval + one request)\n"
        + _table(polling_header, polling_rows)
        + f"\n  measured per poke: REST view of the replica {pokes['rest_view_ms']:.2f} ms "
        f"(VaporHook.get_replica), channel poke {pokes['channel_poke_ms']:.2f} ms "
        "(VaporDeploymentSensor.poke)\n"
        f"  a deferred wait instead: one websocket, "
        f"{result['channel_pings_per_hour_per_wait']:g} keepalive pings/h, no requests"
    )


def _ms(summary: dict[str, Any]) -> list[str]:
    return [
        f"{summary['p50_ms']:.2f}",
        f"{summary['p99_ms']:.2f}",
        f"{summary['max_ms']:.2f}",
        str(summary["samples"]),
    ]


def _parse_report(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{numbers['baseline_ms']:.0f}",
            f"{numbers['provider_ms']:.1f}",
            f"{min(numbers['provider_runs_ms']):.1f} - {max(numbers['provider_runs_ms']):.1f}",
        ]
        for name, numbers in result["baselines"].items()
    ]
    header = ["baseline", "baseline ms", "provider ms (median)", "provider range ms"]
    slowest = ", ".join(
        f"{row['module']} {row['self_ms']:.1f}" for row in result["slowest_modules"][:5]
    )
    return (
        f"DAG-parse cost: operators and sensor imported after the baseline, "
        f"{result['samples']} fresh interpreters each\n"
        + _table(header, rows)
        + f"\n  own import time, ms (-X importtime): {slowest}"
    )


def _hook_report(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{result[key]['calls_per_s']:.0f}",
            f"{result[key]['client_cpu_us_per_call']:.0f}",
            f"{result[key]['emulator_cpu_us_per_call']:.0f}",
        ]
        for name, key in (("VaporHook.scale_replica", "hook"), ("requests.Session.patch", "bare"))
    ]
    header = ["client", "calls/s", "client CPU us/call", "emulator CPU us/call"]
    return (
        f"Hook throughput: {result['calls']:,} scale calls each, {result['rounds']} alternating "
        "rounds against one emulator\n"
        + _table(header, rows)
        + f"\n  ratio (hook calls/s / bare calls/s): {result['ratio']:.3f}; median over rounds "
        f"{result['ratio_median_of_rounds']:.3f}"
    )


def report(
    sections: dict[str, Any], targets: list[dict[str, Any]], fresh: Sequence[str] = SECTIONS
) -> str:
    """The results as plain-text tables, one per section, then the targets.

    :param fresh: the sections measured by this run; the others say when they were measured.
    """
    parts = []
    writers = {
        "waits": _waits_report,
        "latency": _latency_report,
        "parse": _parse_report,
        "hook": _hook_report,
    }
    for name in SECTIONS:
        if name in sections:
            text = writers[name](sections[name])
            if name not in fresh:
                first, _, rest = text.partition("\n")
                measured_at = sections[name].get("measured_at", "an earlier run")
                text = f"{first} [kept from {measured_at}]\n{rest}"
            parts.append(text)
    verdicts = {True: "met   ", False: "MISSED", None: "n/a   "}
    lines = [f"  {verdicts[row['met']]}  {row['target']}: {row['measured']}" for row in targets]
    parts.append("Targets\n" + "\n".join(lines))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
