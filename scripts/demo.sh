#!/usr/bin/env bash
# Run the main job: the business-hours morning DAG scales web of my-app/production up, deferred
# to the triggerer, against a local Vapor Cloud emulator. One command on a fresh machine:
#
#   scripts/demo.sh [AIRFLOW DAGS TEST OPTIONS...]    e.g. scripts/demo.sh --conf '{"replicas": 5}'
#
# It creates or refreshes the virtualenv with scripts/bootstrap.sh (VENV_DIR, default .venv;
# AIRFLOW_VERSION, default 3.3.2), uses a private AIRFLOW_HOME (.airflow-demo/, git-ignored,
# recreated on every run), starts the emulator on a free port, migrates the metadata database,
# runs `airflow dags test vapor_business_hours_morning` (which runs the trigger in line), prints
# the deployment's output and the replica's final state, and stops the emulator on exit.
# Airflow's full output goes to .airflow-demo/demo.log. Exits non-zero if the DAG run failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV_DIR="${VENV_DIR:-$ROOT/.venv}"
AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
DAG_ID="vapor_business_hours_morning"
APPLICATION="my-app"
ENVIRONMENT="production"
REPLICA="web"

say() {
  printf '==> %s\n' "$*"
}

say "Preparing the environment in $VENV_DIR (Airflow $AIRFLOW_VERSION)"
bash "$ROOT/scripts/bootstrap.sh" "$VENV_DIR" "$AIRFLOW_VERSION" | sed 's/^/    /'
VPY="$VENV_DIR/bin/python"
AIRFLOW="$VENV_DIR/bin/airflow"

# Only this demo's settings: none of the caller's Airflow configuration leaks in.
while IFS= read -r name; do
  unset "$name"
done < <(compgen -e | grep '^AIRFLOW' || true)
# A fresh home on every run: the run is reproducible and the metadata database matches the
# Airflow version just installed.
export AIRFLOW_HOME="$ROOT/.airflow-demo"
rm -rf "$AIRFLOW_HOME"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/example_dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export NO_COLOR=1
mkdir -p "$AIRFLOW_HOME"
LOG="$AIRFLOW_HOME/demo.log"
EMULATOR_OUT="$AIRFLOW_HOME/emulator.out"
EMULATOR_LOG="$AIRFLOW_HOME/emulator.log"
: >"$LOG"
say "Airflow home: ${AIRFLOW_HOME#"$ROOT"/}; Airflow's full output: ${LOG#"$ROOT"/}"

EMULATOR_PID=""
stop_emulator() {
  if [[ -n "$EMULATOR_PID" ]] && kill -0 "$EMULATOR_PID" 2>/dev/null; then
    kill "$EMULATOR_PID" 2>/dev/null || true
    wait "$EMULATOR_PID" 2>/dev/null || true
  fi
}
trap stop_emulator EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$VPY" -m airflow_provider_vapor.emulator --port 0 --step-seconds 0.5 \
  >"$EMULATOR_OUT" 2>"$EMULATOR_LOG" &
EMULATOR_PID=$!
connection=""
for _ in $(seq 1 150); do
  connection="$(sed -n 's/^export AIRFLOW_CONN_VAPOR_DEFAULT=//p' "$EMULATOR_OUT")"
  [[ -n "$connection" ]] && break
  if ! kill -0 "$EMULATOR_PID" 2>/dev/null; then
    echo "demo: the emulator exited before it was ready:" >&2
    cat "$EMULATOR_LOG" >&2
    exit 1
  fi
  sleep 0.2
done
if [[ -z "$connection" ]]; then
  echo "demo: the emulator printed no connection within 30 s; see $EMULATOR_LOG" >&2
  exit 1
fi
# The line is shell-quoted by the emulator for copying into a shell; undo that quoting.
eval "export AIRFLOW_CONN_VAPOR_DEFAULT=$connection"
say "Vapor Cloud emulator: $(sed -n 's/^Vapor Cloud emulator listening on //p' "$EMULATOR_OUT")" \
  "(pid $EMULATOR_PID, log: ${EMULATOR_LOG#"$ROOT"/})"

say "Migrating the metadata database"
if ! "$AIRFLOW" db migrate >>"$LOG" 2>&1; then
  echo "demo: airflow db migrate failed; last lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2
  exit 1
fi

say "Running $DAG_ID (deferrable): airflow dags test $DAG_ID${*:+ $*}"
start=$SECONDS
status=0
"$AIRFLOW" dags test "$DAG_ID" "$@" >>"$LOG" 2>&1 || status=$?

# The lines that tell what happened to the replica: the provider's own log (the operator and the
# hook in the task, the trigger with the deployment's output) and the deferral.
"$VPY" - "$LOG" <<'PYTHON'
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d[T ](\d\d:\d\d:\d\d)\S* \[\s*\w+\s*\] (.*?)\s*\[([\w.]+)\](?: \w+=.*)?$"
)
with open(sys.argv[1], errors="replace") as log:
    for raw in log:
        match = LINE.match(ANSI.sub("", raw.rstrip("\n")))
        if not match:
            continue
        clock, message, logger = match.groups()
        if "airflow_provider_vapor" in logger and ".emulator" not in logger:
            where = "trigger" if ".triggers." in logger else "task"
        elif message.startswith("Pausing task as DEFERRED"):
            where = "task"
        else:
            continue
        print(f"    {clock}  {where:<8} {message}")
PYTHON

if [[ $status -ne 0 ]]; then
  say "The DAG run FAILED (exit $status after $((SECONDS - start)) s)." \
    "Last lines of ${LOG#"$ROOT"/}:"
  tail -n 30 "$LOG" | sed 's/^/    /'
  exit "$status"
fi
say "The DAG run succeeded in $((SECONDS - start)) s"

say "$REPLICA in $APPLICATION/$ENVIRONMENT now:"
"$VPY" - "$APPLICATION" "$ENVIRONMENT" "$REPLICA" <<'PYTHON'
import sys

from airflow_provider_vapor.hooks.vapor import VaporHook

application, environment, replica = sys.argv[1:]
hook = VaporHook()
view = hook.get_replica(application, environment, replica)
pods = hook.get_pods(application, environment, replica)
plan = (view.get("plan") or {}).get("slug", "?")
print(f"    replicas={view['replicas']} plan={plan} status={view['status']}")
for pod in pods:
    print(f"    pod {pod['token']} {pod['status']} on {pod['node']}")
PYTHON
