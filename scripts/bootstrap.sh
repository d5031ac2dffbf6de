#!/usr/bin/env bash
# Create (if missing) a virtualenv and install this project with its dev tools, pinned to the
# constraint set of one Airflow version.
#
#   scripts/bootstrap.sh [VENV_DIR] [AIRFLOW_VERSION]     (defaults: .venv in the repo root, 3.3.2)
#
# Installs `apache-airflow==AIRFLOW_VERSION -e ".[dev]"` with -c constraints/airflow-AIRFLOW_VERSION.txt.
# A stamp in the venv records a hash of pyproject.toml, the constraints file, this script and the
# venv's Python; when it matches, nothing is installed. pip's output goes to VENV_DIR/bootstrap.log,
# whose tail is printed if the install fails. PYTHON picks the interpreter (default: python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$ROOT/.venv}"
AIRFLOW_VERSION="${2:-3.3.2}"
PYTHON="${PYTHON:-python3}"

# A relative VENV_DIR is taken relative to the caller's working directory.
case "$VENV_DIR" in
  /*) ;;
  *) VENV_DIR="$PWD/$VENV_DIR" ;;
esac

cd "$ROOT"
CONSTRAINTS="constraints/airflow-${AIRFLOW_VERSION}.txt"
if [[ ! -f "$CONSTRAINTS" ]]; then
  echo "bootstrap: no constraint set for Airflow ${AIRFLOW_VERSION} (${CONSTRAINTS} is missing);" \
    "available: $(cd constraints && ls airflow-*.txt 2>/dev/null | sed 's/^airflow-//; s/\.txt$//' | tr '\n' ' ')" >&2
  exit 2
fi

VPY="$VENV_DIR/bin/python"
if [[ -d "$VENV_DIR" ]] && ! "$VPY" -c '' >/dev/null 2>&1; then
  if [[ -f "$VENV_DIR/pyvenv.cfg" ]]; then
    echo "bootstrap: $VENV_DIR is a broken virtualenv, recreating it"
    rm -rf "$VENV_DIR"
  else
    echo "bootstrap: $VENV_DIR exists but is not a virtualenv; refusing to touch it" >&2
    exit 2
  fi
fi
if [[ ! -d "$VENV_DIR" ]]; then
  echo "bootstrap: creating virtualenv $VENV_DIR ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV_DIR"
fi

STAMP="$VENV_DIR/.airflow-provider-vapor-bootstrap"
LOG="$VENV_DIR/bootstrap.log"
want="$(
  {
    echo "airflow=$AIRFLOW_VERSION root=$ROOT"
    "$VPY" -c 'import sys; print(sys.version)'
    cat pyproject.toml "$CONSTRAINTS" "$ROOT/scripts/bootstrap.sh"
  } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "bootstrap: $VENV_DIR is up to date (Airflow $AIRFLOW_VERSION)"
  exit 0
fi

echo "bootstrap: installing apache-airflow==$AIRFLOW_VERSION and -e .[dev] into $VENV_DIR (log: $LOG)"
rm -f "$STAMP"
start=$SECONDS
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip install --no-input --progress-bar off \
  -c "$CONSTRAINTS" "apache-airflow==$AIRFLOW_VERSION" -e ".[dev]" >"$LOG" 2>&1; then
  echo "bootstrap: pip install FAILED; last lines of $LOG:" >&2
  # (the "Location ... is ignored" warnings come from extra local indexes in some pip configs)
  grep -v "^WARNING: Location '.*' is ignored" "$LOG" | tail -n 60 >&2 || true
  exit 1
fi
echo "$want" >"$STAMP"
echo "bootstrap: done in $((SECONDS - start))s"
