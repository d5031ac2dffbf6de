#!/usr/bin/env bash
# Run the whole test suite:
#   on the newest supported Airflow (3.3.2, in .venv): ruff check, ruff format --check, mypy, pytest;
#   on the lowest supported Airflow (3.3.0, in .venv-3.3.0): pytest again
#   (skipped when VAPOR_TEST_LOWEST=0).
#
#   scripts/test.sh [PYTEST_ARGS...]      extra arguments go to both pytest runs
#
# Each venv is created/updated by scripts/bootstrap.sh. Each pytest run gets a fresh, empty
# AIRFLOW_HOME in a temp dir, so nothing touches ~/airflow. Every stage runs even if an earlier
# one failed (except the stages of a venv whose bootstrap failed); the exit status is non-zero if
# any stage failed. pytest's exit status 5 (no tests collected) counts as a failure.
# VAPOR_PYTEST_TIMEOUT=SECONDS limits each pytest run (default: 1500 when CI=true, else none).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NEWEST=3.3.2
LOWEST=3.3.0
NEWEST_VENV="$ROOT/.venv"
LOWEST_VENV="$ROOT/.venv-$LOWEST"

export AIRFLOW__CORE__LOAD_EXAMPLES=False
# In CI a hung test must not eat the whole CI time: each pytest run gets a time limit there.
if [[ "${CI:-}" == "true" ]]; then
  : "${VAPOR_PYTEST_TIMEOUT:=1500}"
fi
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/vapor-test.XXXXXX")"
trap 'rm -rf "$RUN_TMP"' EXIT
# Anything that reads AIRFLOW_HOME outside pytest also gets a throwaway one.
export AIRFLOW_HOME="$RUN_TMP/airflow-home"
mkdir -p "$AIRFLOW_HOME"
ORIG_PATH="$PATH"

failed=()
summary=()

heading() {
  printf '\n==== %s ====\n' "$*"
}

# run_stage NAME CMD...: run CMD, record pass/fail and its duration.
run_stage() {
  local name="$1" rc=0 start=$SECONDS
  shift
  heading "$name"
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    summary+=("PASS  $name (${took}s)")
  else
    local why="exit $rc"
    [[ $rc -eq 5 && "$name" == pytest* ]] && why="exit 5: no tests collected"
    summary+=("FAIL  $name (${took}s, $why)")
    failed+=("$name")
  fi
  return "$rc"
}

use_venv() {
  export VIRTUAL_ENV="$1"
  export PATH="$1/bin:$ORIG_PATH"
  hash -r
}

run_pytest() {
  local version="$1"
  shift
  # A fresh AIRFLOW_HOME per pytest run: each Airflow version has its own metadata DB schema.
  local home
  home="$(mktemp -d "$RUN_TMP/airflow-home-$version.XXXXXX")" || return 1
  local timeout_s="${VAPOR_PYTEST_TIMEOUT:-0}"
  if [[ "$timeout_s" != "0" ]]; then
    # Kills the whole process group (pytest and anything it spawned) once the time is up.
    local rc=0
    AIRFLOW_HOME="$home" timeout -k 30 "$timeout_s" python -m pytest -q "$@" || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
      echo "pytest did not finish within ${timeout_s}s (VAPOR_PYTEST_TIMEOUT); killed"
    fi
    return "$rc"
  fi
  AIRFLOW_HOME="$home" python -m pytest -q "$@"
}

if run_stage "bootstrap .venv (Airflow $NEWEST)" bash "$ROOT/scripts/bootstrap.sh" "$NEWEST_VENV" "$NEWEST"; then
  use_venv "$NEWEST_VENV"
  run_stage "ruff check" ruff check . || true
  run_stage "ruff format --check" ruff format --check . || true
  run_stage "mypy" mypy || true
  run_stage "pytest (Airflow $NEWEST)" run_pytest "$NEWEST" "$@" || true
fi

if [[ "${VAPOR_TEST_LOWEST:-1}" == "0" ]]; then
  heading "pytest (Airflow $LOWEST): skipped (VAPOR_TEST_LOWEST=0)"
  summary+=("SKIP  pytest (Airflow $LOWEST) (VAPOR_TEST_LOWEST=0)")
elif run_stage "bootstrap .venv-$LOWEST (Airflow $LOWEST)" bash "$ROOT/scripts/bootstrap.sh" "$LOWEST_VENV" "$LOWEST"; then
  use_venv "$LOWEST_VENV"
  run_stage "pytest (Airflow $LOWEST)" run_pytest "$LOWEST" "$@" || true
fi

heading "summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all stages passed"
