#!/usr/bin/env bash
# One-time (idempotent) set-up: checks Java and Python, creates .venv, installs ehrfm with the CPU torch.
# Called by ./run.sh; safe to run again (re-installs only when pyproject.toml or constraints.txt changed).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then echo "ehrfm setup: python3 not found (need Python 3.10+)" >&2; exit 1; fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
  echo "ehrfm setup: Python 3.10+ required, found $("$PY" --version 2>&1)" >&2; exit 1; }

# Spark needs Java 17+ (pyspark 4 refuses older runtimes).
if ! command -v java >/dev/null; then
  echo "ehrfm setup: Java 17+ is required for the Spark ETL but 'java' is not on PATH." >&2
  echo "  Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless   (or set JAVA_HOME and add \$JAVA_HOME/bin to PATH)" >&2
  exit 1
fi
jv=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
jmajor=${jv%%.*}; [ "$jmajor" = "1" ] && jmajor=$(echo "$jv" | cut -d. -f2)
if [ "${jmajor:-0}" -lt 17 ]; then
  echo "ehrfm setup: Java 17+ required for Spark, found Java $jv." >&2
  echo "  Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless, then point JAVA_HOME at it." >&2
  exit 1
fi

stamp=.venv/.ehrfm-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "ehrfm setup: creating .venv and installing (CPU torch from constraints.txt; ~3 min the first time)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Every pip command takes constraints.txt so no dependency can pull a CUDA torch build.
export PIP_CONSTRAINT="$PWD/constraints.txt"
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -c constraints.txt -e '.[etl,dev]'
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
echo "$want" > "$stamp"
echo "ehrfm setup: done"
