#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh demo [ehrfm demo options]   set up, then run the end-to-end demo on the embedded defaults
#   ./run.sh test [pytest options]       set up, then lint, type-check and run the test suite
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"          # spark-submit and mlflow need the venv's bin/ on PATH
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
cmd=${1:-}; shift || true
case "$cmd" in
  demo) exec ehrfm demo "$@" ;;
  test)
    ruff check ehrfm etl bench tests
    mypy
    exec python -m pytest "$@" ;;
  *) echo "usage: ./run.sh demo|test [options]" >&2; exit 2 ;;
esac
