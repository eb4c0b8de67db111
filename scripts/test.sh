#!/usr/bin/env bash
# Install IMAGIO with its test extras into .venv (created if missing), lint, and run the test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# dciodvfy (dicom3tools, from Debian's packages) validates the DICOM SEG/SR that export-dicom writes; the tests
# need it under CI. Installed only when missing and when we may (root with apt-get, as on the CI machines).
if ! command -v dciodvfy >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -q dicom3tools || { apt-get update -q && apt-get install -y -q dicom3tools; }; } >/dev/null 2>&1 \
    || echo "scripts/test.sh: could not install dicom3tools (dciodvfy); the DICOM validation tests need it" >&2
fi
.venv/bin/ruff check .
# Two test processes by default (CI has 2 cores; many tests wait on child processes and files), each taking whole
# test files (--dist loadfile), so a module's fixtures are built once; IMAGIO_TEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -n "${IMAGIO_TEST_WORKERS:-2}" --dist loadfile "$@"
