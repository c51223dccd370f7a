#!/usr/bin/env bash
# Install the project with its test and training extras (torch==2.13.0, CPU) into .venv, and
# Debian's chromium (the report test), a C compiler and libjpeg's headers (the C extensions)
# where apt-get can; then run lint and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing Debian's chromium (the HTML report is rendered in it)"
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
# worker._jpegpart (decoding only the face's part of MJPEG frames) compiles against libjpeg,
# model._zscore (NBHRnet's input z-scored) needs only the compiler; the install goes on
# without them where these are missing, but the tests ask for both.
if { [ ! -f /usr/include/jpeglib.h ] || ! command -v gcc >/dev/null 2>&1; } \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing libjpeg's headers and a C compiler for the C extensions"
  apt-get install -y -q gcc libjpeg-dev >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q gcc libjpeg-dev >/dev/null; }
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,train]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two test processes, each taking whole files (--dist loadfile): most tests wait on
# subprocesses, a broker or a database as much as they compute, and tests/test_celery.py
# empties one Redis database before each of its tests, so its tests must not run beside each
# other. On the 2-core CI machine: 11:22 against 15:00 for the suite in one process (Intel
# Xeon, 2026-12-01). NBHR_TEST_PROCESSES=0 runs it in this one process, as before.
# --no-loadscope-reorder: files are handed out in tests/conftest.py's order, longest first.
.venv/bin/python -m pytest -q --durations=15 -n "${NBHR_TEST_PROCESSES:-2}" --dist loadfile \
  --no-loadscope-reorder "$@"
