"""What importing the provider costs a DAG file, each time the DAG processor parses it.

Every sample is a fresh interpreter that imports ``airflow.sdk`` and then the provider's
operators and sensor, as the example DAGs do, timing each step with ``time.perf_counter``. The
provider's cost is the second step. Byte code is compiled by a first run that is not counted, so
"cold" means a new process with nothing imported, not an empty disk cache.

Because ``airflow.sdk`` loads its members on first use, the provider's step also pays for the
parts of the SDK it touches that a bare ``import airflow.sdk`` does not load. A second baseline,
``from airflow.sdk import DAG`` (which every DAG file has), shows how much of that a DAG file
pays anyway. One more run with ``-X importtime`` names the modules that take the longest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.common import ROOT, airflow_environment, run_worker, write_result

PROVIDER_IMPORTS = (
    "from airflow_provider_vapor.operators.replica import VaporRebootReplicaOperator, "
    "VaporResizeReplicaOperator, VaporScaleReplicaOperator\n"
    "from airflow_provider_vapor.sensors.deployment import VaporDeploymentSensor\n"
)
BASELINES = {
    "import airflow.sdk": "import airflow.sdk\n",
    "from airflow.sdk import DAG": "from airflow.sdk import DAG\n",
}


def _sample_program(baseline: str) -> str:
    return (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        f"{baseline}"
        "baseline = time.perf_counter()\n"
        f"{PROVIDER_IMPORTS}"
        "done = time.perf_counter()\n"
        "print(json.dumps({'baseline_s': baseline - started, 'provider_s': done - baseline,"
        " 'modules': len(sys.modules)}))\n"
    )


def _python(arguments: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        env=airflow_environment(),
        capture_output=True,
        text=True,
        check=True,
    )


def sample(baseline: str) -> dict[str, float]:
    """Time one fresh interpreter: the baseline import, then the provider's."""
    completed = _python(["-c", _sample_program(baseline)])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def slowest_modules(limit: int = 8) -> list[dict[str, Any]]:
    """The modules the provider's step loads, by their own import time, slowest first, from
    ``-X importtime``."""
    mark = "--provider--"
    program = (
        BASELINES["import airflow.sdk"]
        + f"import sys\nsys.stderr.write('{mark}\\n')\nsys.stderr.flush()\n"
        + PROVIDER_IMPORTS
    )
    completed = _python(["-X", "importtime", "-c", program])
    rows = []
    for line in completed.stderr.split(mark, 1)[1].splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or not fields[0].strip().isdigit():
            continue
        self_us, cumulative_us, name = fields
        rows.append(
            {
                "module": name.strip(),
                "self_ms": int(self_us) / 1000,
                "cumulative_ms": int(cumulative_us) / 1000,
            }
        )
    return sorted(rows, key=lambda row: row["self_ms"], reverse=True)[:limit]


def measure(samples: int) -> dict[str, Any]:
    """Median cost of the provider's imports over ``samples`` fresh processes per baseline."""
    result: dict[str, Any] = {"samples": samples, "baselines": {}}
    for name, baseline in BASELINES.items():
        sample(baseline)
        runs = [sample(baseline) for _ in range(samples)]
        result["baselines"][name] = {
            "baseline_ms": statistics.median(run["baseline_s"] for run in runs) * 1000,
            "provider_ms": statistics.median(run["provider_s"] for run in runs) * 1000,
            "provider_runs_ms": [run["provider_s"] * 1000 for run in runs],
        }
    result["slowest_modules"] = slowest_modules()
    return result


def run(samples: int) -> dict[str, Any]:
    """Measure in a worker process (which starts the fresh interpreters)."""
    print(f"  parse: provider imports in {samples} fresh interpreters per baseline ...", flush=True)
    return run_worker("parse", ["--samples", str(samples)], "parse.log")


def main(argv: Sequence[str] | None = None) -> None:
    """The worker: measure and write the result to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parse")
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args(argv)
    write_result(arguments.out, measure(arguments.samples))


if __name__ == "__main__":
    main()
